//! WebSocket frames (RFC 6455 section 5), the wire format both ways: opcodes and close
//! codes, a frame's header parsed, control frames' payloads checked, unmasking, and the
//! writer of (unmasked) frames. [`Reader`](super::reader::Reader) turns frames into
//! messages.

/// Opcodes.
pub mod opcode {
    /// A continuation fragment.
    pub const CONTINUATION: u8 = 0x0;
    /// A text message (UTF-8).
    pub const TEXT: u8 = 0x1;
    /// A binary message.
    pub const BINARY: u8 = 0x2;
    /// The closing handshake.
    pub const CLOSE: u8 = 0x8;
    /// A ping.
    pub const PING: u8 = 0x9;
    /// A pong.
    pub const PONG: u8 = 0xA;
}

/// Close codes the server sends.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message (or close reason) was not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The server is going away (it stops).
    pub const GOING_AWAY: u16 = 1001;
    /// The server met a condition it cannot go on with (a keepalive ping went unanswered).
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// What the reader hands over, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A whole text message, valid UTF-8.
    Text(Vec<u8>),
    /// A whole binary message.
    Binary(Vec<u8>),
    /// A ping with its payload (to answer with a pong).
    Ping(Vec<u8>),
    /// A pong with its payload.
    Pong(Vec<u8>),
    /// The peer's close frame: its code and reason, if it sent one.
    Close(Option<(u16, String)>),
}

/// A broken rule: the connection is failed with this close code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// 1002 (protocol error), 1007 (bad UTF-8) or 1009 (too big).
    pub code: u16,
    /// One line, for the close frame's reason and the log.
    pub reason: String,
}

pub(super) fn violation(code: u16, reason: impl Into<String>) -> Violation {
    Violation {
        code,
        reason: reason.into(),
    }
}

/// Appends `masked` XOR the repeated 4-byte `mask` (a frame's payload starts at the mask's
/// first byte) to `out`.
pub fn unmask_into(out: &mut Vec<u8>, masked: &[u8], mask: [u8; 4]) {
    let start = out.len();
    out.extend_from_slice(masked);
    // NOTE: a copy, then XOR in place over fixed 32-byte chunks, which the compiler turns
    // into vector instructions (an 8-byte-at-a-time extend loop took a quarter of the
    // server's CPU on 16 KiB messages).
    let mut wide = [0u8; 32];
    for (i, byte) in wide.iter_mut().enumerate() {
        *byte = mask[i % 4];
    }
    let mut chunks = out[start..].chunks_exact_mut(32);
    for chunk in &mut chunks {
        for (byte, m) in chunk.iter_mut().zip(wide.iter()) {
            *byte ^= m;
        }
    }
    // Whole 32-byte chunks keep the mask's phase: the rest starts at mask[0] again.
    for (byte, m) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
}

/// A control frame's message (its payload unmasked).
pub(super) fn control(kind: u8, payload: Vec<u8>) -> Result<Message, Violation> {
    Ok(match kind {
        opcode::PING => Message::Ping(payload),
        opcode::PONG => Message::Pong(payload),
        _ => Message::Close(parse_close(&payload)?),
    })
}

/// A close frame's code and reason, checked (RFC 6455 section 7.4).
fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, Violation> {
    match payload.len() {
        0 => return Ok(None),
        1 => {
            return Err(violation(
                close_code::PROTOCOL_ERROR,
                "close payload of 1 byte",
            ))
        }
        _ => {}
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    if !valid_close_code(code) {
        return Err(violation(
            close_code::PROTOCOL_ERROR,
            format!("invalid close code {code}"),
        ));
    }
    let reason = std::str::from_utf8(&payload[2..])
        .map_err(|_| violation(close_code::PROTOCOL_ERROR, "close reason is not UTF-8"))?;
    Ok(Some((code, reason.to_string())))
}

/// Whether a peer may send `code` in a close frame.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    pub(super) fin: bool,
    pub(super) rsv1: bool,
    pub(super) rsv23: bool,
    pub(super) opcode: u8,
    pub(super) masked: bool,
    pub(super) mask: [u8; 4],
    pub(super) len: u64,
    /// Bytes of the header itself.
    pub(super) size: usize,
}

impl Header {
    /// The header at the start of `input`, or `None` if it is not all there.
    pub(super) fn parse(input: &[u8]) -> Result<Option<Header>, Violation> {
        if input.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (input[0], input[1]);
        let masked = b1 & 0x80 != 0;
        let (len, mut size) = match b1 & 0x7f {
            126 => {
                if input.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([input[2], input[3]])), 4)
            }
            127 => {
                if input.len() < 10 {
                    return Ok(None);
                }
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&input[2..10]);
                let len = u64::from_be_bytes(bytes);
                if len >> 63 != 0 {
                    return Err(violation(
                        close_code::PROTOCOL_ERROR,
                        "64-bit payload length with its top bit set",
                    ));
                }
                (len, 10)
            }
            short => (u64::from(short), 2),
        };
        let mut mask = [0u8; 4];
        if masked {
            if input.len() < size + 4 {
                return Ok(None);
            }
            mask.copy_from_slice(&input[size..size + 4]);
            size += 4;
        }
        Ok(Some(Header {
            fin: b0 & 0x80 != 0,
            rsv1: b0 & 0x40 != 0,
            rsv23: b0 & 0x30 != 0,
            opcode: b0 & 0x0f,
            masked,
            mask,
            len,
            size,
        }))
    }
}

/// Appends one unmasked server frame to `out`.
pub fn write_frame(out: &mut Vec<u8>, kind: u8, fin: bool, rsv1: bool, payload: &[u8]) {
    out.reserve(payload.len() + 10);
    write_header(out, kind, fin, rsv1, payload.len(), false);
    out.extend_from_slice(payload);
}

/// Appends a frame's header for a payload of `len` bytes: the first byte, then the length
/// in its shortest form, with the mask bit when `masked` (the key follows, the caller's).
#[inline]
pub fn write_header(out: &mut Vec<u8>, kind: u8, fin: bool, rsv1: bool, len: usize, masked: bool) {
    let mask_bit = if masked { 0x80 } else { 0 };
    out.push(u8::from(fin) << 7 | u8::from(rsv1) << 6 | kind);
    match len {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
}

/// A close frame's payload: `code`, then `reason` cut to fit 125 bytes, on a character
/// boundary.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// Appends a close frame with `code` and `reason` (see [`close_payload`]).
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    write_frame(
        out,
        opcode::CLOSE,
        true,
        false,
        &close_payload(code, reason),
    );
}

/// Whether a server may send `code` in a close frame: the codes a peer may send, and the
/// registered 1012-1014 (restart, try again later, bad gateway).
pub fn sendable_close_code(code: u16) -> bool {
    valid_close_code(code) || (1012..=1014).contains(&code)
}

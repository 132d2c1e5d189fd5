//! WebSocket frames (RFC 6455 section 5): the server side's incremental reader, which
//! checks every rule a client must follow and reassembles fragmented messages, and the
//! writer of (unmasked) server frames.

use super::deflate::Progress;

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

fn violation(code: u16, reason: impl Into<String>) -> Violation {
    Violation {
        code,
        reason: reason.into(),
    }
}

/// Decompresses one message: `(is_text, compressed) -> data` (see [`Reader::read_with`]).
/// Inflates a compressed message in steps: called with the whole compressed message and
/// the progress so far, returns true once `progress.out` holds all of it (see
/// [`Codec::inflate_step`](super::deflate::Codec::inflate_step)).
pub type Inflate<'a> = dyn FnMut(&[u8], &mut Progress) -> Result<bool, Violation> + 'a;

/// Reassembly buffers above this size are freed once their message is delivered.
const KEEP_BUFFER: usize = 64 << 10;

/// Where a [`Reader`] delivers what it reads, in order.
pub trait Deliver {
    /// A whole text (`text`) or binary message.
    fn data(&mut self, text: bool, payload: &[u8]);
    /// A whole binary message that came in one uncompressed frame, still masked with
    /// `mask`: the destination unmasks it as it copies it (see [`unmask_into`]).
    fn masked(&mut self, payload: &[u8], mask: [u8; 4]) {
        let mut data = Vec::with_capacity(payload.len());
        unmask_into(&mut data, payload, mask);
        self.data(false, &data);
    }
    /// A ping, pong or close frame.
    fn control(&mut self, message: Message);
}

/// Collects everything as [`Message`]s (tests and tools).
impl Deliver for Vec<Message> {
    fn data(&mut self, text: bool, payload: &[u8]) {
        self.push(if text {
            Message::Text(payload.to_vec())
        } else {
            Message::Binary(payload.to_vec())
        });
    }

    fn control(&mut self, message: Message) {
        self.push(message);
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

/// A connection's reader: call [`Reader::read`] with the unconsumed input each time bytes
/// arrive.
#[derive(Debug)]
pub struct Reader {
    max_message_size: usize,
    /// Whether RSV1 may be set on the first frame of a message (permessage-deflate).
    rsv1_allowed: bool,
    /// The message being reassembled: its opcode, whether RSV1 marked it, its bytes.
    partial: Option<(u8, bool)>,
    buffer: Vec<u8>,
    /// For text: how much of `buffer` is known to be valid UTF-8.
    utf8_valid: usize,
    /// The peer's close frame was read: nothing after it counts.
    closed: bool,
    /// Of a text frame not all here yet: how much of its payload is known valid UTF-8.
    arriving_valid: usize,
    /// A whole compressed message (in `buffer`) being inflated in steps: whether it is
    /// text, and how far it got.
    inflating: Option<(bool, Progress)>,
    /// The peer is a client, whose frames must be masked; else a server, whose frames must
    /// not be (RFC 6455 section 5.1).
    peer_is_client: bool,
}

impl Reader {
    /// A reader refusing messages over `max_message_size` bytes; `rsv1_allowed` when
    /// permessage-deflate was negotiated.
    pub fn new(max_message_size: usize, rsv1_allowed: bool) -> Self {
        Reader {
            max_message_size,
            rsv1_allowed,
            partial: None,
            buffer: Vec::new(),
            utf8_valid: 0,
            closed: false,
            arriving_valid: 0,
            inflating: None,
            peer_is_client: true,
        }
    }

    /// The same for a client's connection: the server's frames must come unmasked.
    pub fn for_client(max_message_size: usize, rsv1_allowed: bool) -> Self {
        Reader {
            peer_is_client: false,
            ..Reader::new(max_message_size, rsv1_allowed)
        }
    }

    /// Whether a compressed message is being inflated: call [`Reader::read_with`] again
    /// (with any input, even none) to go on.
    pub fn is_inflating(&self) -> bool {
        self.inflating.is_some()
    }

    /// Whether the reader keeps a reassembly buffer between messages (see
    /// [`Reader::release_buffer`]).
    pub fn holds_buffer(&self) -> bool {
        self.buffer.capacity() > 0 && self.partial.is_none() && self.inflating.is_none()
    }

    /// Frees the reassembly buffer kept between messages (the connection went quiet).
    pub fn release_buffer(&mut self) {
        if self.buffer.is_empty() {
            self.buffer = Vec::new();
        }
    }

    /// Whether the reader behaves as a server's new one without permessage-deflate:
    /// between messages, before any close, holding no buffer and no part of a frame.
    pub(crate) fn is_fresh(&self) -> bool {
        self.partial.is_none()
            && self.inflating.is_none()
            && self.buffer.capacity() == 0
            && self.arriving_valid == 0
            && !self.closed
            && !self.rsv1_allowed
            && self.peer_is_client
    }

    /// Whether a fragmented message has started and not ended yet.
    pub fn in_message(&self) -> bool {
        self.partial.is_some() || self.inflating.is_some()
    }

    /// Reads every whole frame at the start of `input`, pushing whole messages and control
    /// frames into `out`, and returns how many bytes it used. A partial frame is left for
    /// the next call. After the peer's close frame, nothing more is read (the rest of the
    /// input is the caller's to discard). For a connection without permessage-deflate: a
    /// compressed message is a protocol error here; see [`Reader::read_with`].
    pub fn read(&mut self, input: &[u8], out: &mut dyn Deliver) -> Result<usize, Violation> {
        self.read_with(input, out, &mut |_, _| {
            Err(violation(
                close_code::PROTOCOL_ERROR,
                "a compressed message without permessage-deflate",
            ))
        })
    }

    /// Like [`Reader::read`], with `inflate` applied to every message that was marked
    /// compressed (RSV1); a compressed text message is checked for UTF-8 after it is
    /// inflated. When `inflate` stops before the end of a message, reading stops there too
    /// ([`Reader::is_inflating`]): the next call goes on with it before any later frame.
    pub fn read_with(
        &mut self,
        input: &[u8],
        out: &mut dyn Deliver,
        inflate: &mut Inflate<'_>,
    ) -> Result<usize, Violation> {
        if let Some((text, mut progress)) = self.inflating.take() {
            if !inflate(&self.buffer, &mut progress)? {
                self.inflating = Some((text, progress));
                return Ok(0);
            }
            self.deliver_inflated(text, progress.out, out)?;
        }
        let mut used = 0;
        while !self.closed {
            let Some(header) = Header::parse(&input[used..])? else {
                break;
            };
            self.check(&header)?;
            let start = used + header.size;
            if ((input.len() - start) as u64) < header.len {
                // The payload is not all here yet; text is still checked as it arrives.
                if self.is_plain_text(&header) {
                    self.check_arriving_text(&header, &input[start..])?;
                }
                break;
            }
            let end = start + header.len as usize;
            let payload = &input[start..end];
            used = end;
            self.arriving_valid = 0;
            if header.opcode >= opcode::CLOSE {
                let mut unmasked = Vec::with_capacity(payload.len());
                unmask_into(&mut unmasked, payload, header.mask);
                let message = control(header.opcode, unmasked)?;
                self.closed = matches!(message, Message::Close(_));
                out.control(message);
                continue;
            }
            if header.fin && header.opcode == opcode::BINARY && !header.rsv1 {
                // NOTE: a whole uncompressed binary message in one frame (the common case)
                // is unmasked straight into its destination: one copy, not three.
                match header.masked {
                    true => out.masked(payload, header.mask),
                    false => out.data(false, payload), // a server's frame, to a client
                }
                continue;
            }
            if header.opcode != opcode::CONTINUATION {
                self.partial = Some((header.opcode, header.rsv1));
                self.buffer.clear();
                self.utf8_valid = 0;
            }
            unmask_into(&mut self.buffer, payload, header.mask);
            let Some((kind, compressed)) = self.partial else {
                unreachable!("check() refused a continuation without a message");
            };
            let text = kind == opcode::TEXT;
            if text && !compressed {
                self.check_utf8(header.fin)?;
            }
            if header.fin {
                self.partial = None;
                if compressed {
                    let mut progress = Progress::default();
                    if !inflate(&self.buffer, &mut progress)? {
                        self.inflating = Some((text, progress));
                        return Ok(used);
                    }
                    self.deliver_inflated(text, progress.out, out)?;
                } else {
                    out.data(text, &self.buffer);
                    self.done_with_buffer();
                }
            }
        }
        Ok(used)
    }

    /// Delivers a whole inflated message (text checked for UTF-8 first).
    fn deliver_inflated(
        &mut self,
        text: bool,
        data: Vec<u8>,
        out: &mut dyn Deliver,
    ) -> Result<(), Violation> {
        self.done_with_buffer();
        if text && simdutf8::basic::from_utf8(&data).is_err() {
            return Err(violation(close_code::INVALID_DATA, "text is not UTF-8"));
        }
        out.data(text, &data);
        Ok(())
    }

    fn done_with_buffer(&mut self) {
        self.buffer.clear();
        if self.buffer.capacity() > KEEP_BUFFER {
            self.buffer = Vec::new(); // an idle connection holds no large buffer
        }
    }

    fn check(&self, header: &Header) -> Result<(), Violation> {
        let protocol = |reason: &str| Err(violation(close_code::PROTOCOL_ERROR, reason));
        if header.rsv23 {
            return protocol("reserved bits RSV2/RSV3 set");
        }
        if header.masked != self.peer_is_client {
            return protocol(match self.peer_is_client {
                true => "client frames must be masked",
                false => "server frames must not be masked",
            });
        }
        match header.opcode {
            opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {}
            opcode::CLOSE | opcode::PING | opcode::PONG => {
                if !header.fin {
                    return protocol("control frames must not be fragmented");
                }
                if header.len > 125 {
                    return protocol("control frame payload over 125 bytes");
                }
                if header.rsv1 {
                    return protocol("RSV1 set on a control frame");
                }
                return Ok(());
            }
            _ => return protocol("reserved opcode"),
        }
        let continuing = self.partial.is_some();
        if header.opcode == opcode::CONTINUATION {
            if !continuing {
                return protocol("continuation frame without a message to continue");
            }
            if header.rsv1 {
                return protocol("RSV1 set on a continuation frame");
            }
        } else {
            if continuing {
                return protocol("new data frame before the fragmented message ended");
            }
            if header.rsv1 && !self.rsv1_allowed {
                return protocol("RSV1 set without a negotiated extension");
            }
        }
        let size = if header.opcode == opcode::CONTINUATION {
            self.buffer.len() as u64
        } else {
            0
        };
        if size + header.len > self.max_message_size as u64 {
            return Err(violation(
                close_code::TOO_BIG,
                format!(
                    "message of at least {} bytes, over max_message_size {}",
                    size + header.len,
                    self.max_message_size
                ),
            ));
        }
        Ok(())
    }

    /// Whether `header` starts or continues an uncompressed text message.
    fn is_plain_text(&self, header: &Header) -> bool {
        match header.opcode {
            opcode::TEXT => !header.rsv1,
            opcode::CONTINUATION => self.partial == Some((opcode::TEXT, false)),
            _ => false,
        }
    }

    /// Checks the part of a text frame that arrived so far (`arrived`, still masked), so
    /// that bad UTF-8 fails the connection before the rest of a large frame comes. Only the
    /// bytes not yet checked are looked at.
    fn check_arriving_text(&mut self, header: &Header, arrived: &[u8]) -> Result<(), Violation> {
        let from = self.arriving_valid;
        let mut text = Vec::new();
        if from == 0 && header.opcode == opcode::CONTINUATION {
            // A character may have begun in the previous fragment.
            text.extend_from_slice(&self.buffer[self.utf8_valid..]);
        }
        let carried = text.len();
        let phase = from % 4;
        let mask = [0, 1, 2, 3].map(|i| header.mask[(phase + i) % 4]);
        unmask_into(&mut text, &arrived[from..], mask);
        match simdutf8::compat::from_utf8(&text) {
            Ok(_) => self.arriving_valid = arrived.len(),
            Err(err) if err.error_len().is_none() => {
                self.arriving_valid = from + err.valid_up_to().saturating_sub(carried);
            }
            Err(_) => return Err(violation(close_code::INVALID_DATA, "text is not UTF-8")),
        }
        Ok(())
    }

    /// Checks the text received so far, failing fast: only an incomplete character at the
    /// very end may wait for the next fragment.
    fn check_utf8(&mut self, fin: bool) -> Result<(), Violation> {
        let rest = &self.buffer[self.utf8_valid..];
        match simdutf8::compat::from_utf8(rest) {
            Ok(_) => self.utf8_valid = self.buffer.len(),
            Err(err) if err.error_len().is_none() && !fin => {
                self.utf8_valid += err.valid_up_to(); // an incomplete character at the end
            }
            Err(_) => return Err(violation(close_code::INVALID_DATA, "text is not UTF-8")),
        }
        Ok(())
    }
}

fn control(kind: u8, payload: Vec<u8>) -> Result<Message, Violation> {
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
struct Header {
    fin: bool,
    rsv1: bool,
    rsv23: bool,
    opcode: u8,
    masked: bool,
    mask: [u8; 4],
    len: u64,
    /// Bytes of the header itself.
    size: usize,
}

impl Header {
    /// The header at the start of `input`, or `None` if it is not all there.
    fn parse(input: &[u8]) -> Result<Option<Header>, Violation> {
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

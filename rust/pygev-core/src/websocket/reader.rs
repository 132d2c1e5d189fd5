//! A connection's frame reader: frames in, whole messages out. It checks every rule a peer
//! must follow as the bytes arrive (text checked for UTF-8 even before its frame is whole),
//! reassembles fragmented messages, and inflates compressed ones in bounded steps.

use super::deflate::Progress;
use super::frames::{
    close_code, control, opcode, unmask_into, violation, Header, Message, Violation,
};

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

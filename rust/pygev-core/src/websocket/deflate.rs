//! permessage-deflate (RFC 7692): negotiation, and the per-connection compressor and
//! decompressor. Decompressed size is bounded (no zip bombs).

use super::frames::{close_code, Violation};
use super::zlib::{Deflater, Failure, Inflater};

/// The server's permessage-deflate settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Whether to accept the extension at all.
    pub enabled: bool,
    /// Ask the server side to reset its compression context after each message.
    pub server_no_context_takeover: bool,
    /// Ask the client to reset its context after each message.
    pub client_no_context_takeover: bool,
    /// The largest window the server compresses with (9 to 15).
    pub server_max_window_bits: u8,
    /// The largest window the client may compress with (8 to 15), when the client allows a
    /// limit. Below 15, a client that allows no limit is asked for client_no_context_takeover
    /// instead: either way an idle connection keeps at most this window of the client's
    /// context.
    pub client_max_window_bits: u8,
    /// Messages shorter than this go out uncompressed.
    pub threshold: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: true,
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            // NOTE: as in `websockets`: a 4 KiB window costs little ratio on the short,
            // repetitive messages WebSocket carries, and bounds what an idle connection holds.
            client_max_window_bits: 12,
            threshold: 64,
        }
    }
}

/// What was agreed with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The server resets its compressor after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after each message (so may the decompressor).
    pub client_no_context_takeover: bool,
    /// The server's compression window.
    pub server_max_window_bits: u8,
    /// The client's compression window (the decompressor's).
    pub client_max_window_bits: u8,
}

/// Picks the first acceptable permessage-deflate offer among `offers` (the
/// `Sec-WebSocket-Extensions` entries, in order) and returns what was agreed and the
/// response's extension string, or `None` to run without compression.
///
/// # Examples
///
/// ```
/// use pygev_core::websocket::deflate::{negotiate, Settings};
///
/// let offers = vec!["permessage-deflate; client_max_window_bits".to_string()];
/// let (agreed, response) = negotiate(&offers, &Settings::default()).unwrap();
/// assert_eq!(response, "permessage-deflate; client_max_window_bits=12");
/// assert_eq!(agreed.client_max_window_bits, 12);
/// ```
pub fn negotiate(offers: &[String], settings: &Settings) -> Option<(Agreed, String)> {
    if !settings.enabled {
        return None;
    }
    offers.iter().find_map(|offer| accept(offer, settings))
}

fn accept(offer: &str, settings: &Settings) -> Option<(Agreed, String)> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut agreed = Agreed {
        server_no_context_takeover: settings.server_no_context_takeover,
        client_no_context_takeover: settings.client_no_context_takeover,
        server_max_window_bits: settings.server_max_window_bits,
        client_max_window_bits: 15,
    };
    let mut seen = Vec::new();
    let mut server_bits_asked = false;
    let mut client_bits_allowed = false;
    for part in parts.filter(|p| !p.is_empty()) {
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (part, None),
        };
        if seen.contains(&name) {
            return None; // a parameter twice: decline this offer
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover", None) => agreed.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => agreed.client_no_context_takeover = true,
            ("server_max_window_bits", Some(v)) => {
                let bits = window_bits(v)?;
                if bits < 9 {
                    return None; // zlib cannot compress with a 256-byte window
                }
                agreed.server_max_window_bits = agreed.server_max_window_bits.min(bits);
                server_bits_asked = true;
            }
            ("client_max_window_bits", None) => client_bits_allowed = true,
            ("client_max_window_bits", Some(v)) => {
                agreed.client_max_window_bits = window_bits(v)?;
                client_bits_allowed = true;
            }
            _ => return None, // unknown parameter or bad form
        }
    }
    if client_bits_allowed {
        // Never more than the client offered (RFC 7692 section 7.1.2.2); the decompressor
        // takes any window up to 15, so even 8 is fine here.
        agreed.client_max_window_bits = agreed
            .client_max_window_bits
            .min(settings.client_max_window_bits);
    } else if settings.client_max_window_bits < 15 {
        // The client keeps a 32 KiB window we could not limit: ask it not to refer to earlier
        // messages at all (a server may, RFC 7692 section 7.1.1.2).
        agreed.client_no_context_takeover = true;
    }
    let mut response = String::from("permessage-deflate");
    if agreed.server_no_context_takeover {
        response.push_str("; server_no_context_takeover");
    }
    if agreed.client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    if server_bits_asked || agreed.server_max_window_bits < 15 {
        response.push_str(&format!(
            "; server_max_window_bits={}",
            agreed.server_max_window_bits
        ));
    }
    if client_bits_allowed {
        response.push_str(&format!(
            "; client_max_window_bits={}",
            agreed.client_max_window_bits
        ));
    }
    Some((agreed, response))
}

fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.starts_with('0') {
        return None;
    }
    match value.parse::<u8>() {
        Ok(bits @ 8..=15) => Some(bits),
        _ => None,
    }
}

/// The tail every compressed message drops (RFC 7692 section 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// One connection's compressor and decompressor.
///
/// Both are made when first needed and dropped again by [`Codec::park`] when the
/// connection idles: a compressor may forget its context at any time (the peer's
/// decompressor copes with messages that refer to nothing), and a decompressor with the
/// client's context kept is rebuilt from the last window of bytes it produced. An idle
/// connection so holds at most that window (4 KiB with the default 12 window bits), not
/// the hundreds of KiB of zlib state.
pub struct Codec {
    agreed: Agreed,
    threshold: usize,
    deflate: Option<Deflater>,
    inflate: Option<Inflater>,
    /// While parked with client context takeover: the last bytes inflated, up to the
    /// client's window.
    window: Vec<u8>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("agreed", &self.agreed)
            .field("parked", &self.is_parked())
            .finish()
    }
}

/// The compression level (zlib's default: a good ratio at moderate cost).
const LEVEL: u8 = 6;

impl Codec {
    /// A codec for what was agreed; messages under `threshold` bytes go out uncompressed.
    pub fn new(agreed: Agreed, threshold: usize) -> Self {
        Codec {
            agreed,
            threshold,
            deflate: None,
            inflate: None,
            window: Vec::new(),
        }
    }

    /// Drops the compressor and decompressor (they are rebuilt on the next message); only
    /// the client's window stays, when its context is kept.
    pub fn park(&mut self) {
        self.deflate = None;
        if let Some(inflate) = self.inflate.take() {
            if !self.agreed.client_no_context_takeover {
                // (zlib compresses with 9 bits where 8 were agreed: keep 9 bits' worth.)
                let bits = self.agreed.client_max_window_bits.max(9);
                self.window = inflate.history(1 << bits);
            }
        }
    }

    /// Whether neither zlib state is held.
    pub fn is_parked(&self) -> bool {
        self.deflate.is_none() && self.inflate.is_none()
    }

    /// The memory a parked codec holds besides itself (the kept window).
    pub fn parked_bytes(&self) -> usize {
        self.window.capacity()
    }

    /// Whether a message of `len` bytes is worth compressing. Never with an agreed window
    /// of 8 bits: zlib cannot compress within it (it would use 9), and compressing is
    /// optional per message.
    pub fn should_compress(&self, len: usize) -> bool {
        len >= self.threshold && self.agreed.server_max_window_bits >= 9
    }

    /// Decompresses one message, refusing (1009) as soon as it passes `max` bytes.
    pub fn inflate(&mut self, compressed: &[u8], max: usize) -> Result<Vec<u8>, Violation> {
        let mut progress = Progress::default();
        while !self.inflate_step(compressed, &mut progress, max, usize::MAX)? {}
        Ok(progress.out)
    }

    /// Decompresses some more of one message: at most about `budget` bytes of output per
    /// call (so that one large message does not hold a loop for long). Returns true once
    /// `progress.out` holds the whole message; call again with the same `compressed` and
    /// `progress` until then.
    pub fn inflate_step(
        &mut self,
        compressed: &[u8],
        progress: &mut Progress,
        max: usize,
        budget: usize,
    ) -> Result<bool, Violation> {
        if compressed.is_empty() {
            // No deflate block at all (a sender whose compressor had nothing to flush): an
            // empty message. The tail must not go in alone: it would start a stored block
            // whose length is read from the next message.
            return Ok(true);
        }
        let limit = max.saturating_add(1); // one byte past max shows it was passed
        let out = &mut progress.out;
        if out.capacity() == 0 {
            // Not clamp(): a max_message_size under 64 makes the bounds cross.
            out.reserve_exact(compressed.len().saturating_mul(3).max(64).min(limit));
        }
        let stop_at = out.len().saturating_add(budget);
        while progress.input < 2 && !progress.ended {
            let input = if progress.input == 0 {
                compressed
            } else {
                &TAIL[..]
            };
            loop {
                if out.len() >= stop_at {
                    return Ok(false); // the rest in the next step
                }
                if out.len() == out.capacity() {
                    if out.len() >= limit {
                        return Err(too_big(max));
                    }
                    // Grow by at most what the limit leaves: never past max + 1.
                    out.reserve_exact(out.capacity().min(limit - out.len()).max(1));
                }
                let offset = progress.offset;
                let before_out = out.len();
                // Stop at the step's budget: the output buffer may hold more room than that.
                let room = (stop_at - out.len()).min(out.capacity() - out.len());
                let step = self
                    .inflater()?
                    .inflate(&input[offset..], out, room)
                    .map_err(inflate_failed)?;
                let used_in = step.consumed;
                progress.offset += used_in;
                if out.len() > max {
                    return Err(too_big(max));
                }
                if step.ended {
                    // A final block (BFINAL) ends the deflate stream: nothing may follow it
                    // but the tail we appended, and the next message starts a new stream.
                    progress.ended = true;
                    if input.len() > progress.offset && progress.input == 0 {
                        return Err(invalid("data after the final deflate block"));
                    }
                    break;
                }
                let done = progress.offset == input.len() && out.len() < out.capacity();
                let stuck = used_in == 0 && out.len() == before_out;
                if done || stuck {
                    break;
                }
            }
            progress.input += 1;
            progress.offset = 0;
        }
        if progress.ended || self.agreed.client_no_context_takeover {
            // A final block ends the client's deflate stream, not its context: the next
            // message may still refer to this one unless the client agreed it would not
            // (RFC 7692 section 7.2.2).
            let keep_window = !self.agreed.client_no_context_takeover;
            if let Some(inflate) = self.inflate.as_mut() {
                inflate.reset(keep_window);
            }
        }
        Ok(true)
    }

    /// The decompressor, rebuilt from the kept window when parked.
    fn inflater(&mut self) -> Result<&mut Inflater, Violation> {
        if self.inflate.is_none() {
            // Inflating with the largest window accepts any smaller one.
            let inflate = Inflater::new(15, &self.window).ok_or_else(out_of_memory)?;
            self.window = Vec::new(); // the decompressor holds the context now
            self.inflate = Some(inflate);
        }
        Ok(self.inflate.as_mut().expect("made above"))
    }

    /// Compresses one message (the frame gets RSV1); `None` when no compressor can be
    /// made (out of memory) or it failed: the message then goes out uncompressed (and a
    /// failed compressor is dropped: the peer copes with a next message that refers to
    /// nothing).
    pub fn deflate(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        if self.deflate.is_none() {
            let bits = self.agreed.server_max_window_bits.max(9);
            self.deflate = Some(Deflater::new(LEVEL, bits)?);
        }
        let deflate = self.deflate.as_mut().expect("made above");
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        let mut offset = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = out.len();
            let Ok(step) = deflate.deflate(&payload[offset..], &mut out) else {
                self.deflate = None;
                return None;
            };
            offset += step.consumed;
            if offset == payload.len() && out.len() < out.capacity() {
                break;
            }
            if step.consumed == 0 && out.len() == before && out.len() < out.capacity() {
                // No progress with room left and input to take: never spin on it.
                self.deflate = None;
                return None;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.is_empty() {
            // Nothing flushed for an empty message: send the one-byte empty block of
            // RFC 7692 section 7.2.3.6, which any receiver inflates to nothing.
            out.push(0x00);
        }
        if self.agreed.server_no_context_takeover {
            deflate.reset();
        }
        Some(out)
    }
}

/// How far the inflation of one message got (see [`Codec::inflate_step`]).
#[derive(Debug, Default)]
pub struct Progress {
    /// The message inflated so far.
    pub out: Vec<u8>,
    /// Which input is being fed: 0 the message, 1 the tail, 2 done.
    input: u8,
    /// How much of that input was fed.
    offset: usize,
    /// The sender ended its deflate stream (BFINAL).
    ended: bool,
}

fn inflate_failed(failure: Failure) -> Violation {
    match failure {
        Failure::Invalid(message) => invalid(format!("invalid compressed data: {message}")),
        Failure::Broken(code) => Violation {
            code: close_code::INTERNAL_ERROR,
            reason: format!("the decompressor failed (zlib code {code})"),
        },
    }
}

fn out_of_memory() -> Violation {
    Violation {
        code: close_code::INTERNAL_ERROR,
        reason: "no memory for a decompressor".into(),
    }
}

fn invalid(reason: impl Into<String>) -> Violation {
    Violation {
        code: close_code::INVALID_DATA,
        reason: reason.into(),
    }
}

fn too_big(max: usize) -> Violation {
    Violation {
        code: close_code::TOO_BIG,
        reason: format!("message inflates past max_message_size {max}"),
    }
}

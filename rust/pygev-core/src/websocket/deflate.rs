//! permessage-deflate (RFC 7692): negotiation, and the per-connection compressor and
//! decompressor. Decompressed size is bounded (no zip bombs).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frames::{close_code, Violation};

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
    /// The largest window the client may compress with (9 to 15), when the client allows a
    /// limit.
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
            client_max_window_bits: 15,
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
/// assert_eq!(response, "permessage-deflate; client_max_window_bits=15");
/// assert_eq!(agreed.client_max_window_bits, 15);
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
pub struct Codec {
    agreed: Agreed,
    threshold: usize,
    deflate: Compress,
    inflate: Decompress,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("agreed", &self.agreed)
            .finish()
    }
}

impl Codec {
    /// A codec for what was agreed; messages under `threshold` bytes go out uncompressed.
    pub fn new(agreed: Agreed, threshold: usize) -> Self {
        Codec {
            agreed,
            threshold,
            deflate: Compress::new_with_window_bits(
                Compression::default(),
                false,
                agreed.server_max_window_bits.max(9),
            ),
            // Inflating with the largest window accepts any smaller one.
            inflate: Decompress::new_with_window_bits(false, 15),
        }
    }

    /// Whether a message of `len` bytes is worth compressing.
    pub fn should_compress(&self, len: usize) -> bool {
        len >= self.threshold
    }

    /// Decompresses one message, refusing (1009) as soon as it passes `max` bytes.
    pub fn inflate(&mut self, compressed: &[u8], max: usize) -> Result<Vec<u8>, Violation> {
        if compressed.is_empty() {
            // No deflate block at all (a sender whose compressor had nothing to flush): an
            // empty message. The tail must not go in alone: it would start a stored block
            // whose length is read from the next message.
            return Ok(Vec::new());
        }
        let limit = max.saturating_add(1); // one byte past max shows it was passed
        let mut out = Vec::with_capacity(compressed.len().saturating_mul(3).max(64).min(limit));
        let mut ended = false;
        for input in [compressed, &TAIL[..]] {
            let mut offset = 0;
            while !ended {
                if out.len() == out.capacity() {
                    if out.len() >= limit {
                        return Err(too_big(max));
                    }
                    // Grow by at most what the limit leaves: never past max + 1.
                    out.reserve_exact(out.capacity().min(limit - out.len()).max(1));
                }
                let (before_in, before_out) = (self.inflate.total_in(), out.len());
                let status = self
                    .inflate
                    .decompress_vec(&input[offset..], &mut out, FlushDecompress::Sync)
                    .map_err(|e| invalid(format!("invalid compressed data: {e}")))?;
                offset += (self.inflate.total_in() - before_in) as usize;
                if out.len() > max {
                    return Err(too_big(max));
                }
                if status == Status::StreamEnd {
                    // A final block (BFINAL) ends the deflate stream: nothing may follow it
                    // but the tail we appended, and the next message starts a new stream.
                    ended = true;
                    if input.len() > offset && input != &TAIL[..] {
                        return Err(invalid("data after the final deflate block"));
                    }
                    break;
                }
                let done = offset == input.len() && out.len() < out.capacity();
                let stuck = self.inflate.total_in() == before_in && out.len() == before_out;
                if done || stuck {
                    break;
                }
            }
        }
        if ended || self.agreed.client_no_context_takeover {
            self.inflate.reset(false);
        }
        Ok(out)
    }

    /// Compresses one message (the frame gets RSV1).
    pub fn deflate(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        let mut offset = 0;
        loop {
            let before_in = self.deflate.total_in();
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            self.deflate
                .compress_vec(&payload[offset..], &mut out, FlushCompress::Sync)
                .expect("deflate into a growing buffer cannot fail");
            offset += (self.deflate.total_in() - before_in) as usize;
            if offset == payload.len() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.is_empty() {
            // zlib-rs flushes nothing for an empty message; send the one-byte empty block
            // of RFC 7692 section 7.2.3.6, which any receiver inflates to nothing.
            out.push(0x00);
        }
        if self.agreed.server_no_context_takeover {
            self.deflate.reset();
        }
        out
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

//! The client's side of the opening handshake (RFC 6455 section 4.1, RFC 7692 section 7):
//! the upgrade request a client sends, and the server's response, parsed as its bytes
//! arrive and checked: a `101` with the right accept key, `Upgrade` and `Connection`, a
//! subprotocol among those offered and extensions among those offered, or a refusal (any
//! other status) reported with its status, reason and redirect target.
//!
//! The key is the caller's (the client framing draws 16 random bytes from the system's
//! entropy, `masking::fill_random`): this module draws no randomness itself.

use super::deflate::Agreed;
use super::handshake::{accept_key, header_safe, is_token};

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The `Host` header: `host` or `host:port`.
    pub host: String,
    /// The request target: the path and query, e.g. `/chat?room=1`.
    pub target: String,
    /// `Sec-WebSocket-Key`: 16 random bytes, base64 (a fresh key per connection).
    pub key: String,
    /// `Origin`, if any.
    pub origin: Option<String>,
    /// Subprotocols offered, in order of preference.
    pub protocols: Vec<String>,
    /// More header fields.
    pub headers: Vec<(String, String)>,
    /// permessage-deflate, if offered.
    pub deflate: Option<DeflateOffer>,
}

/// A client's permessage-deflate offer (RFC 7692 section 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateOffer {
    /// Ask the server to reset its compressor after each message.
    pub server_no_context_takeover: bool,
    /// Tell the server we reset ours after each message.
    pub client_no_context_takeover: bool,
    /// The largest window the server may compress with (8 to 15; 15: not asked).
    pub server_max_window_bits: u8,
    /// Offer `client_max_window_bits`: the server may limit our window (8 to 15).
    pub client_max_window_bits: bool,
}

/// The server accepted the upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The subprotocol it chose, among those offered.
    pub protocol: Option<String>,
    /// What permessage-deflate it agreed to, if it did.
    pub deflate: Option<Agreed>,
    /// Every header field of the response, names lower-cased.
    pub headers: Vec<(String, String)>,
}

/// The server answered with another status than 101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The status code (a redirect is reported, never followed).
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    /// `Location`, on a redirect.
    pub location: Option<String>,
    /// Every header field of the response, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Accepted {
    /// About the memory it holds, for dispatch backpressure.
    pub fn held_bytes(&self) -> usize {
        let fields = self.headers.iter().map(|(n, v)| n.len() + v.len() + 48);
        std::mem::size_of::<Accepted>() + fields.sum::<usize>()
    }
}

impl Refused {
    /// The body to keep from what follows the head: its `Content-Length` bytes (at most
    /// [`MAX_BODY`]), or `None` while they have not all come; without a length (or
    /// chunked), what came with the head, up to [`MAX_BODY`].
    pub fn body<'a>(&self, after_head: &'a [u8]) -> Option<&'a [u8]> {
        let length = (self.headers.iter())
            .find(|(name, _)| name == "content-length")
            .and_then(|(_, value)| value.parse::<usize>().ok());
        let wanted = length.unwrap_or(after_head.len()).min(MAX_BODY);
        after_head.get(..wanted)
    }
}

/// Why a client's handshake failed, for whoever dialed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Any status but 101, with the start of its body (at most [`MAX_BODY`] bytes).
    Refused {
        /// The status, reason and headers.
        refused: Refused,
        /// The body, as far as it came (or its `Content-Length` said).
        body: Vec<u8>,
    },
    /// A response that is not a valid answer to the request: why.
    Invalid(String),
    /// No complete response within the handshake timeout.
    TimedOut(std::time::Duration),
}

impl HandshakeFailure {
    /// About the memory it holds, for dispatch backpressure.
    pub fn held_bytes(&self) -> usize {
        match self {
            HandshakeFailure::Refused { refused, body } => {
                let fields = refused.headers.iter().map(|(n, v)| n.len() + v.len() + 48);
                body.len() + refused.reason.len() + fields.sum::<usize>()
            }
            HandshakeFailure::Invalid(reason) => reason.len(),
            HandshakeFailure::TimedOut(_) => 0,
        }
    }
}

/// What the response came to (with the bytes of it used: what follows is frames, or a
/// refusal's body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Upgraded.
    Accepted(Accepted, usize),
    /// Not upgraded.
    Refused(Refused, usize),
}

/// The longest response head accepted, and its header count.
pub const MAX_HEAD: usize = 16 << 10;
/// The most of a refusal's body kept.
pub const MAX_BODY: usize = 8 << 10;
const MAX_HEADERS: usize = 64;

/// The upgrade request for `offer`; `Err` names a field that cannot go into a header.
pub fn request(offer: &Offer) -> Result<Vec<u8>, String> {
    let host_ok = !offer.host.is_empty() && header_safe(&offer.host) && !offer.host.contains(' ');
    let target_ok =
        offer.target.starts_with('/') && header_safe(&offer.target) && !offer.target.contains(' ');
    if !host_ok || !target_ok {
        return Err(format!(
            "pygev: not a valid WebSocket host and path: {:?} {:?}",
            offer.host, offer.target
        ));
    }
    let mut out = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n",
        offer.target, offer.host, offer.key
    );
    if let Some(origin) = &offer.origin {
        out.push_str(&format!("Origin: {}\r\n", checked("Origin", origin)?));
    }
    if !offer.protocols.is_empty() {
        let bad = offer.protocols.iter().find(|p| !is_token(p));
        if let Some(bad) = bad {
            return Err(format!("pygev: subprotocol {bad:?} is not a valid token"));
        }
        out.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            offer.protocols.join(", ")
        ));
    }
    if let Some(deflate) = &offer.deflate {
        out.push_str(&format!(
            "Sec-WebSocket-Extensions: {}\r\n",
            deflate_offer(deflate)
        ));
    }
    for (name, value) in &offer.headers {
        let lower = name.to_ascii_lowercase();
        let ours = lower.starts_with("sec-websocket-")
            || matches!(
                lower.as_str(),
                "host"
                    | "upgrade"
                    | "connection"
                    | "origin"
                    | "content-length"
                    | "transfer-encoding"
            );
        if !is_token(name) || ours {
            return Err(format!("pygev: header {name:?} cannot be set here"));
        }
        out.push_str(&format!("{name}: {}\r\n", checked(name, value)?));
    }
    out.push_str("\r\n");
    Ok(out.into_bytes())
}

fn checked<'a>(name: &str, value: &'a str) -> Result<&'a str, String> {
    match header_safe(value) {
        true => Ok(value),
        false => Err(format!(
            "pygev: the value of header {name} has control characters"
        )),
    }
}

/// The extension offer's text.
fn deflate_offer(offer: &DeflateOffer) -> String {
    let mut text = String::from("permessage-deflate");
    if offer.server_no_context_takeover {
        text.push_str("; server_no_context_takeover");
    }
    if offer.client_no_context_takeover {
        text.push_str("; client_no_context_takeover");
    }
    if offer.server_max_window_bits < 15 {
        text.push_str(&format!(
            "; server_max_window_bits={}",
            offer.server_max_window_bits
        ));
    }
    if offer.client_max_window_bits {
        text.push_str("; client_max_window_bits");
    }
    text
}

/// Parses the server's response to `offer` as far as it has come: `Ok(None)` until the
/// head is complete; `Err` when it is not a valid answer (the connection must be
/// failed, with the reason).
pub fn parse_response(input: &[u8], offer: &Offer) -> Result<Option<Answer>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let used = match response.parse(input) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => {
            return Err(format!(
                "pygev: the handshake response is longer than {MAX_HEAD} bytes"
            ))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(format!("pygev: malformed handshake response: {err}")),
    };
    let status = response.code.unwrap_or(0);
    let reason = response.reason.unwrap_or("").to_string();
    let fields: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).trim().to_string();
            (h.name.to_ascii_lowercase(), value)
        })
        .collect();
    let all = |name: &str| -> Vec<&str> {
        (fields.iter())
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    if status != 101 {
        let location = all("location").first().map(|l| l.to_string());
        let refused = Refused {
            status,
            reason,
            location,
            headers: fields.clone(),
        };
        return Ok(Some(Answer::Refused(refused, used)));
    }
    let has_token = |name: &str, token: &str| {
        all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token("upgrade", "websocket") {
        return Err("pygev: the 101 response has no Upgrade: websocket".into());
    }
    if !has_token("connection", "upgrade") {
        return Err("pygev: the 101 response has no Connection: Upgrade".into());
    }
    let accept = all("sec-websocket-accept");
    if accept.len() != 1 || accept[0] != accept_key(&offer.key) {
        return Err(format!(
            "pygev: wrong Sec-WebSocket-Accept {:?} (expected {:?})",
            accept,
            accept_key(&offer.key)
        ));
    }
    let protocol = match all("sec-websocket-protocol").as_slice() {
        [] => None,
        [chosen] if offer.protocols.iter().any(|p| p == chosen) => Some(chosen.to_string()),
        chosen => {
            return Err(format!(
                "pygev: the server chose subprotocol {chosen:?}, not one offered ({:?})",
                offer.protocols
            ))
        }
    };
    let extensions: Vec<&str> = all("sec-websocket-extensions")
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let deflate = match extensions.as_slice() {
        [] => None,
        [one] => Some(agreed(one, offer.deflate.as_ref())?),
        many => return Err(format!("pygev: extensions {many:?} were not offered")),
    };
    let accepted = Accepted {
        protocol,
        deflate,
        headers: fields.clone(),
    };
    Ok(Some(Answer::Accepted(accepted, used)))
}

/// What the server's permessage-deflate response `text` agrees to, checked against what
/// was offered (RFC 7692 section 7.1: every parameter once, values in range,
/// `client_max_window_bits` only if offered, `server_max_window_bits` at most the offer).
fn agreed(text: &str, offer: Option<&DeflateOffer>) -> Result<Agreed, String> {
    let refuse = |why: &str| Err(format!("pygev: extension response {text:?}: {why}"));
    let Some(offer) = offer else {
        return refuse("no extension was offered");
    };
    let mut params = text.split(';').map(str::trim);
    if !params
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate"))
    {
        return refuse("not the extension offered");
    }
    let mut agreed = Agreed {
        server_no_context_takeover: false,
        client_no_context_takeover: offer.client_no_context_takeover,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    let mut seen = Vec::new();
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquoted(value.trim()))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return refuse("a parameter repeated");
        }
        seen.push(name);
        let bits = |value: Option<&str>| -> Option<u8> {
            value?.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
        };
        match (name, value) {
            ("server_no_context_takeover", None) => agreed.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => agreed.client_no_context_takeover = true,
            ("server_max_window_bits", value) => match bits(value) {
                Some(b) if b <= offer.server_max_window_bits => agreed.server_max_window_bits = b,
                _ => return refuse("server_max_window_bits out of range"),
            },
            ("client_max_window_bits", value) if offer.client_max_window_bits => {
                match bits(value) {
                    Some(b) => agreed.client_max_window_bits = b,
                    None => return refuse("client_max_window_bits out of range"),
                }
            }
            _ => return refuse("a parameter not offered or not known"),
        }
    }
    if offer.server_no_context_takeover && !agreed.server_no_context_takeover {
        return refuse("server_no_context_takeover was asked for");
    }
    if offer.server_max_window_bits < 15 && agreed.server_max_window_bits == 15 {
        return refuse("server_max_window_bits was asked for");
    }
    Ok(agreed)
}

/// A parameter's value without one pair of quotes around it, if it has them.
fn unquoted(value: &str) -> &str {
    (value.strip_prefix('"').and_then(|v| v.strip_suffix('"'))).unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Offer {
        Offer {
            host: "example.com:8080".into(),
            target: "/chat?room=1".into(),
            key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
            origin: Some("https://example.com".into()),
            protocols: vec!["chat".into(), "superchat".into()],
            headers: vec![("X-Token".into(), "abc".into())],
            deflate: Some(DeflateOffer {
                server_no_context_takeover: false,
                client_no_context_takeover: false,
                server_max_window_bits: 15,
                client_max_window_bits: true,
            }),
        }
    }

    fn response(extra: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn the_request_carries_the_offer() {
        let text = String::from_utf8(request(&offer()).unwrap()).unwrap();
        assert!(text.starts_with("GET /chat?room=1 HTTP/1.1\r\nHost: example.com:8080\r\n"));
        assert!(text.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("Origin: https://example.com\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: chat, superchat\r\n"));
        assert!(text
            .contains("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"));
        assert!(text.contains("X-Token: abc\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn header_injection_and_our_own_headers_are_refused() {
        let mut bad = offer();
        bad.headers = vec![("X-Evil".into(), "a\r\nInjected: yes".into())];
        assert!(request(&bad).is_err());
        bad.headers = vec![("Sec-WebSocket-Key".into(), "mine".into())];
        assert!(request(&bad).is_err());
        bad.headers.clear();
        bad.target = "/a b".into();
        assert!(request(&bad).is_err());
        bad.target = "/".into();
        bad.protocols = vec!["two words".into()];
        assert!(request(&bad).is_err());
    }

    #[test]
    fn a_valid_101_is_accepted_with_what_was_chosen() {
        let bytes = response(
            "Sec-WebSocket-Protocol: chat\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=10\r\n",
        );
        let mut with_frame = bytes.clone();
        with_frame.extend_from_slice(b"\x81\x02hi");
        for split in 0..bytes.len() {
            assert_eq!(parse_response(&bytes[..split], &offer()), Ok(None));
        }
        let Ok(Some(Answer::Accepted(accepted, used))) = parse_response(&with_frame, &offer())
        else {
            panic!("not accepted");
        };
        assert_eq!(used, bytes.len(), "the frame after it is left");
        assert_eq!(accepted.protocol.as_deref(), Some("chat"));
        let deflate = accepted.deflate.unwrap();
        assert_eq!(deflate.client_max_window_bits, 10);
        assert_eq!(deflate.server_max_window_bits, 15);
    }

    #[test]
    fn a_wrong_key_or_missing_upgrade_fails() {
        let wrong = String::from_utf8(response("")).unwrap().replace(
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        );
        assert!(parse_response(wrong.as_bytes(), &offer())
            .unwrap_err()
            .contains("Accept"));
        let no_upgrade = String::from_utf8(response(""))
            .unwrap()
            .replace("Upgrade: websocket\r\n", "");
        assert!(parse_response(no_upgrade.as_bytes(), &offer()).is_err());
    }

    #[test]
    fn choices_not_offered_fail() {
        for extra in [
            "Sec-WebSocket-Protocol: other\r\n",
            "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n",
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=7\r\n",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=16\r\n",
            "Sec-WebSocket-Extensions: permessage-deflate; mystery\r\n",
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
             server_no_context_takeover\r\n",
        ] {
            assert!(
                parse_response(&response(extra), &offer()).is_err(),
                "{extra}"
            );
        }
        let mut no_deflate = offer();
        no_deflate.deflate = None;
        let extra = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
        assert!(parse_response(&response(extra), &no_deflate).is_err());
        let mut no_client_bits = offer();
        no_client_bits
            .deflate
            .as_mut()
            .unwrap()
            .client_max_window_bits = false;
        let extra = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=9\r\n";
        assert!(parse_response(&response(extra), &no_client_bits).is_err());
    }

    #[test]
    fn other_statuses_are_refusals_with_their_redirect() {
        let bytes =
            b"HTTP/1.1 302 Found\r\nLocation: wss://elsewhere/\r\nContent-Length: 0\r\n\r\n";
        let Ok(Some(Answer::Refused(refused, used))) = parse_response(bytes, &offer()) else {
            panic!("not refused");
        };
        assert_eq!((refused.status, used), (302, bytes.len()));
        assert_eq!(refused.location.as_deref(), Some("wss://elsewhere/"));
        let bytes = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope";
        let Ok(Some(Answer::Refused(refused, used))) = parse_response(bytes, &offer()) else {
            panic!("not refused");
        };
        assert_eq!(
            (refused.status, refused.reason.as_str()),
            (403, "Forbidden")
        );
        assert_eq!(&bytes[used..], b"nope", "the body follows");
    }

    #[test]
    fn garbage_and_endless_heads_fail() {
        assert!(parse_response(b"\x00\x01garbage\r\n\r\n", &offer()).is_err());
        let endless = vec![b'a'; MAX_HEAD + 1];
        assert!(parse_response(&endless, &offer()).is_err());
    }
}

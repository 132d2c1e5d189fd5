//! The opening handshake (RFC 6455 section 4.2): the client's HTTP/1.1 upgrade request,
//! parsed as its bytes arrive and checked, and the server's responses.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// The GUID every server appends to the client's key (RFC 6455 section 1.3).
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Bounds on what a client may send before its upgrade request is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The request line and headers together, in bytes.
    pub max_request_size: usize,
    /// Number of header fields.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_size: 8 << 10,
            max_headers: 64,
        }
    }
}

/// A valid upgrade request: what a Python hook sees to accept or refuse it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The request target's path, e.g. `/chat`.
    pub path: String,
    /// What follows `?` in the request target, if anything.
    pub query: Option<String>,
    /// Every header field in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// `Sec-WebSocket-Key`, as sent.
    pub key: String,
    /// `Origin`, if sent.
    pub origin: Option<String>,
    /// The subprotocols offered in `Sec-WebSocket-Protocol`, in order of preference.
    pub protocols: Vec<String>,
    /// The extension offers of `Sec-WebSocket-Extensions`, one string each.
    pub extensions: Vec<String>,
}

/// Why a request is refused: the HTTP status and a reason for the response body and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 426 (unsupported version) or 431 (request too large).
    pub status: u16,
    /// One line, for the response body and the log.
    pub reason: String,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
        }
    }

    /// The complete HTTP response for this refusal (the connection closes after it).
    pub fn response(&self) -> Vec<u8> {
        error_response(self.status, &self.reason)
    }
}

/// Parses the upgrade request at the start of `input`.
///
/// Returns `Ok(None)` while the request is incomplete (call again with more bytes), or the
/// request and the number of bytes it took (what follows is WebSocket data). A malformed,
/// invalid or too large request is refused as soon as that is known.
///
/// # Examples
///
/// ```
/// use pygev_core::websocket::handshake::{accept_key, parse, Limits};
///
/// let request = b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
///     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
///     Sec-WebSocket-Version: 13\r\n\r\n";
/// let (upgrade, used) = parse(request, &Limits::default()).unwrap().unwrap();
/// assert_eq!(used, request.len());
/// assert_eq!(upgrade.path, "/chat");
/// assert_eq!(upgrade.query.as_deref(), Some("room=1"));
/// assert_eq!(accept_key(&upgrade.key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn parse(input: &[u8], limits: &Limits) -> Result<Option<(UpgradeRequest, usize)>, Refusal> {
    let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut request = httparse::Request::new(&mut fields);
    let used = match request.parse(input) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => {
            if input.len() > limits.max_request_size {
                return Err(too_large(limits));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                431,
                format!("more than {} header fields", limits.max_headers),
            ))
        }
        Err(err) => return Err(Refusal::new(400, format!("malformed request: {err}"))),
    };
    if used > limits.max_request_size {
        return Err(too_large(limits));
    }
    validate(&request).map(|upgrade| Some((upgrade, used)))
}

fn too_large(limits: &Limits) -> Refusal {
    Refusal::new(
        431,
        format!("request headers over {} bytes", limits.max_request_size),
    )
}

/// A request's header fields, in order, with lower-case names and trimmed values.
pub(super) fn header_list(fields: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|field| {
            // Headers the handshake does not use may carry any bytes (a Latin-1 cookie,
            // say); the ones it checks fail their checks if they are not the ASCII they
            // must be.
            let value = String::from_utf8_lossy(field.value);
            (field.name.to_ascii_lowercase(), value.trim().to_string())
        })
        .collect()
}

/// A request target's path and query (after the `?`, if any).
pub(super) fn split_target(target: &str) -> (String, Option<String>) {
    match target.split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (target.to_string(), None),
    }
}

fn validate(request: &httparse::Request<'_, '_>) -> Result<UpgradeRequest, Refusal> {
    if request.method != Some("GET") {
        return Err(Refusal::new(400, "the method must be GET"));
    }
    if request.version != Some(1) {
        return Err(Refusal::new(400, "the request must be HTTP/1.1"));
    }
    let headers = header_list(request.headers);
    let one = |name: &str| -> Result<Option<&str>, Refusal> {
        let mut found = headers.iter().filter(|(n, _)| n == name);
        let first = found.next().map(|(_, v)| v.as_str());
        if found.next().is_some() {
            return Err(Refusal::new(400, format!("header {name} is repeated")));
        }
        Ok(first)
    };
    let all = |name: &str| -> Vec<String> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()
    };
    if one("transfer-encoding")?.is_some()
        || one("content-length")?.is_some_and(|length| length != "0")
    {
        return Err(Refusal::new(400, "an upgrade request has no body"));
    }
    if one("host")?.is_none_or(str::is_empty) {
        return Err(Refusal::new(400, "missing Host header"));
    }
    let has_token =
        |name: &str, token: &str| all(name).iter().any(|t| t.eq_ignore_ascii_case(token));
    if !has_token("upgrade", "websocket") {
        return Err(Refusal::new(400, "missing Upgrade: websocket"));
    }
    if !has_token("connection", "upgrade") {
        return Err(Refusal::new(400, "missing Connection: Upgrade"));
    }
    match one("sec-websocket-version")? {
        Some("13") => {}
        Some(other) => {
            return Err(Refusal::new(
                426,
                format!("unsupported Sec-WebSocket-Version {other:?}, only 13"),
            ))
        }
        None => return Err(Refusal::new(426, "missing Sec-WebSocket-Version (13)")),
    }
    let key = one("sec-websocket-key")?
        .ok_or_else(|| Refusal::new(400, "missing Sec-WebSocket-Key"))?
        .to_string();
    match BASE64.decode(&key) {
        Ok(nonce) if nonce.len() == 16 => {}
        _ => {
            return Err(Refusal::new(
                400,
                "Sec-WebSocket-Key must be 16 bytes in base64",
            ))
        }
    }
    let (path, query) = split_target(request.path.unwrap_or("/"));
    let origin = one("origin")?.map(str::to_string);
    Ok(UpgradeRequest {
        path,
        query,
        key,
        origin,
        protocols: all("sec-websocket-protocol"),
        extensions: all("sec-websocket-extensions"),
        headers,
    })
}

/// `Sec-WebSocket-Accept` for a client's key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(GUID.as_bytes());
    BASE64.encode(sha1.digest().bytes())
}

/// Whether `text` can go into a header field: no control characters (no CR or LF, so no
/// header injection).
pub fn header_safe(text: &str) -> bool {
    !text.bytes().any(|b| b.is_ascii_control() && b != b'\t')
}

/// Whether `name` is an HTTP token, as a header field's name must be.
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The reason phrase for `status` (the statuses pygev or a hook's answer use; "Status"
/// for others: the phrase is informative only).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Checks what a hook chose before it goes into the response: the subprotocol must be one
/// the client offered, extra header names must be HTTP tokens and values must be
/// [`header_safe`]. The error names the culprit.
pub fn check_choice(
    request: &UpgradeRequest,
    protocol: Option<&str>,
    extra: &[(String, String)],
) -> Result<(), String> {
    if let Some(protocol) = protocol {
        if !request.protocols.iter().any(|p| p == protocol) {
            return Err(format!(
                "pygev: subprotocol {protocol:?} was not offered by the client (offered: {:?})",
                request.protocols
            ));
        }
    }
    for (name, value) in extra {
        if !is_token(name) {
            return Err(format!("pygev: {name:?} is not a valid header name"));
        }
        let lower = name.to_ascii_lowercase();
        let reserved = lower.starts_with("sec-websocket-")
            || matches!(
                lower.as_str(),
                "upgrade" | "connection" | "content-length" | "transfer-encoding"
            );
        if reserved {
            return Err(format!(
                "pygev: the handshake sets {name} itself (pick a subprotocol with Accept's \
                 subprotocol)"
            ));
        }
        if !header_safe(value) {
            return Err(format!(
                "pygev: the value of header {name} has control characters"
            ));
        }
    }
    Ok(())
}

/// The `101 Switching Protocols` response accepting `request`, with the chosen subprotocol
/// and extensions and any extra header fields (checked with [`check_choice`] first).
pub fn accept_response(
    request: &UpgradeRequest,
    protocol: Option<&str>,
    extensions: Option<&str>,
    extra: &[(String, String)],
) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    out.push_str(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    out.push_str("Sec-WebSocket-Accept: ");
    out.push_str(&accept_key(&request.key));
    out.push_str("\r\n");
    if let Some(protocol) = protocol {
        out.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    if let Some(extensions) = extensions {
        out.push_str(&format!("Sec-WebSocket-Extensions: {extensions}\r\n"));
    }
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A complete error response (plain-text reason as the body) after which the server closes.
pub fn error_response(status: u16, reason: &str) -> Vec<u8> {
    let phrase = reason_phrase(status);
    let body = format!("{reason}\n");
    let mut out = format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 426 {
        out.push_str("Sec-WebSocket-Version: 13\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

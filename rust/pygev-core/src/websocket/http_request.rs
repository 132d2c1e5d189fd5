//! A plain HTTP request on a WebSocket port, one that is not an upgrade (a load balancer's
//! `GET /healthz`): when the server has a hook for them, it is handed to the dispatcher,
//! whose answer (a small response) goes out before the connection closes. Without the hook
//! such a request is refused as any bad upgrade request is (400, or 426 without the
//! WebSocket version).

use super::handshake::{self, header_list, split_target, Limits, Refusal};

/// A complete plain request: no body, no upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `HEAD`, ... as sent.
    pub method: String,
    /// The request target's path (`/healthz`).
    pub path: String,
    /// What followed `?`, if anything.
    pub query: Option<String>,
    /// `HTTP/1.0` or `HTTP/1.1`'s minor version.
    pub minor_version: u8,
    /// The header fields, in order, with lower-case names (values lossily decoded as
    /// UTF-8 and trimmed, as an upgrade request's).
    pub headers: Vec<(String, String)>,
    /// How the request is refused if the hook does not answer it.
    pub refusal: Refusal,
}

impl HttpRequest {
    /// About the memory it holds, for dispatch backpressure.
    pub fn held_bytes(&self) -> usize {
        let fields = self.headers.iter().map(|(n, v)| n.len() + v.len() + 48);
        std::mem::size_of::<HttpRequest>() + self.path.len() + fields.sum::<usize>()
    }
}

/// The plain request at the start of `input`, which the upgrade parser refused with
/// `refusal`, and the bytes it took; `None` if it is not one: incomplete, too large,
/// malformed, with a body, or asking for an upgrade after all (then the refusal stands).
pub fn parse(input: &[u8], limits: &Limits, refusal: Refusal) -> Option<(HttpRequest, usize)> {
    let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut request = httparse::Request::new(&mut fields);
    let used = match request.parse(input) {
        Ok(httparse::Status::Complete(used)) if used <= limits.max_request_size => used,
        _ => return None,
    };
    let has = |name: &str| {
        request
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name))
    };
    let bodyless = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .all(|h| h.value.trim_ascii() == b"0");
    if has("upgrade") || has("transfer-encoding") || !bodyless {
        return None;
    }
    let (path, query) = split_target(request.path?);
    let headers = header_list(request.headers);
    Some((
        HttpRequest {
            method: request.method?.to_string(),
            path,
            query,
            minor_version: request.version?,
            headers,
            refusal,
        },
        used,
    ))
}

/// A complete response of `status` with `headers` and `body`, after which the server
/// closes (`Connection: close`; `Content-Length` is set here). `head` leaves the body out
/// (an answer to `HEAD`), as do 204 and 304, which have none (204 has no length either).
/// `None` if the status is not 200 to 599 or a header's name is not a token (or one set
/// here) or its value has control characters.
///
/// # Examples
///
/// ```
/// use pygev_core::websocket::http_request::response;
///
/// let ok = response(200, &[("Cache-Control".into(), "no-store".into())], b"ok", false);
/// assert_eq!(
///     ok.unwrap(),
///     b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\
///       Connection: close\r\n\r\nok"
/// );
/// assert!(response(200, &[("Bad Name".into(), "x".into())], b"", false).is_none());
/// ```
pub fn response(
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    head: bool,
) -> Option<Vec<u8>> {
    if !(200..=599).contains(&status) {
        return None;
    }
    let phrase = handshake::reason_phrase(status);
    let mut out = format!("HTTP/1.1 {status} {phrase}\r\n").into_bytes();
    for (name, value) in headers {
        let framing = ["content-length", "connection", "transfer-encoding"];
        if !handshake::is_token(name)
            || !handshake::header_safe(value)
            || framing.iter().any(|f| name.eq_ignore_ascii_case(f))
        {
            return None;
        }
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    let bodiless = matches!(status, 204 | 304);
    if status != 204 {
        let len = if bodiless { 0 } else { body.len() };
        out.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    if !head && !bodiless {
        out.extend_from_slice(body);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal() -> Refusal {
        super::super::handshake::parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &Limits::default())
            .unwrap_err()
    }

    #[test]
    fn plain_requests_are_parsed() {
        let input = b"GET /healthz?full=1 HTTP/1.0\r\nHost: x\r\nUser-Agent: lb\r\n\r\nextra";
        let (request, used) = parse(input, &Limits::default(), refusal()).unwrap();
        assert_eq!(&input[used..], b"extra");
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("GET", "/healthz")
        );
        assert_eq!(request.query.as_deref(), Some("full=1"));
        assert_eq!(request.minor_version, 0);
        assert_eq!(request.headers[1], ("user-agent".into(), "lb".into()));
        assert_eq!(request.refusal.status, 400);
    }

    #[test]
    fn upgrades_bodies_and_partial_requests_are_not() {
        for input in [
            &b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(parse(input, &Limits::default(), refusal()).is_none());
        }
        let limits = Limits {
            max_request_size: 10,
            max_headers: 4,
        };
        assert!(parse(b"GET /long HTTP/1.1\r\n\r\n", &limits, refusal()).is_none());
    }

    #[test]
    fn responses() {
        let headers = [("Content-Type".to_string(), "text/plain".to_string())];
        let out = response(200, &headers, b"ok\n", false).unwrap();
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
              Connection: close\r\n\r\nok\n"
        );
        let head = response(503, &[], b"down", true).unwrap();
        assert!(head.ends_with(b"Content-Length: 4\r\nConnection: close\r\n\r\n"));
        assert!(response(99, &[], b"", false).is_none());
        assert!(response(700, &[], b"", false).is_none());
        let bad = |name: &str, value: &str| {
            response(200, &[(name.to_string(), value.to_string())], b"", false).is_none()
        };
        assert!(bad("X", "a\r\nInjected: 1"));
        assert!(bad("Content-Length", "9"));
        assert!(bad("Bad Name", "v"));
        assert!(bad("X\tY", "v"));
        assert!(bad("", "v"));
        let empty = response(204, &[], b"ignored", false).unwrap();
        assert_eq!(
            empty,
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
        );
    }
}

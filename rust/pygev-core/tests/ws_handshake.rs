//! The WebSocket opening handshake: incremental parsing, validation, responses.

use proptest::prelude::*;
use pygev_core::websocket::handshake::{
    accept_key, accept_response, check_choice, error_response, header_safe, parse, Limits,
    UpgradeRequest,
};

const GOOD: &str = "GET /chat?room=1&x=2 HTTP/1.1\r\n\
    Host: server.example.com\r\n\
    Upgrade: websocket\r\n\
    Connection: keep-alive, Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Origin: http://example.com\r\n\
    Sec-WebSocket-Protocol: chat, superchat\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// Feeds `input` in the given pieces the way a loop does (everything so far, each time).
fn feed(input: &[u8], cuts: &[usize]) -> Result<Option<(UpgradeRequest, usize)>, u16> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    points.push(input.len());
    for p in points {
        match parse(&input[..p], &Limits::default()) {
            Ok(None) => continue,
            Ok(Some(done)) => return Ok(Some(done)),
            Err(refusal) => return Err(refusal.status),
        }
    }
    Ok(None)
}

#[test]
fn the_rfc_example_key_gives_the_rfc_accept_value() {
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn a_valid_request_is_parsed_with_everything_a_hook_needs() {
    let mut input = GOOD.as_bytes().to_vec();
    input.extend_from_slice(b"\x81\x85"); // a frame already following the request
    let (request, used) = parse(&input, &Limits::default()).unwrap().unwrap();
    assert_eq!(used, GOOD.len());
    assert_eq!(request.path, "/chat");
    assert_eq!(request.query.as_deref(), Some("room=1&x=2"));
    assert_eq!(request.origin.as_deref(), Some("http://example.com"));
    assert_eq!(request.protocols, vec!["chat", "superchat"]);
    assert_eq!(
        request.extensions,
        vec!["permessage-deflate; client_max_window_bits"]
    );
    assert!(request
        .headers
        .contains(&("host".to_string(), "server.example.com".to_string())));
    let response = String::from_utf8(accept_response(&request, Some("chat"), None, &[])).unwrap();
    assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(response.contains("Sec-WebSocket-Protocol: chat\r\n"));
    assert!(response.ends_with("\r\n\r\n"));
}

#[test]
fn every_split_point_gives_the_same_request() {
    let whole = parse(GOOD.as_bytes(), &Limits::default()).unwrap();
    for at in 0..GOOD.len() {
        assert_eq!(parse(&GOOD.as_bytes()[..at], &Limits::default()), Ok(None));
        assert_eq!(
            feed(GOOD.as_bytes(), &[at]),
            Ok(whole.clone()),
            "split at {at}"
        );
    }
}

proptest! {
    #[test]
    fn any_pieces_give_the_same_request(cuts in prop::collection::vec(any::<usize>(), 0..20)) {
        let whole = parse(GOOD.as_bytes(), &Limits::default()).unwrap();
        prop_assert_eq!(feed(GOOD.as_bytes(), &cuts), Ok(whole));
    }

    #[test]
    fn garbage_is_refused_or_awaited_never_a_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&data, &Limits::default());
    }
}

fn status_of(request: &str) -> u16 {
    match parse(request.as_bytes(), &Limits::default()) {
        Err(refusal) => refusal.status,
        Ok(Some(_)) => 101,
        Ok(None) => 0,
    }
}

#[test]
fn bad_requests_are_refused_with_the_right_status() {
    let without = |name: &str| -> String {
        GOOD.split("\r\n")
            .filter(|line| !line.starts_with(name))
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    let replaced = |from: &str, to: &str| GOOD.replacen(from, to, 1);
    let cases = [
        (replaced("GET ", "POST "), 400),
        (replaced("HTTP/1.1\r\n", "HTTP/1.0\r\n"), 400),
        (without("Host:"), 400),
        (without("Upgrade:"), 400),
        (replaced("Upgrade: websocket", "Upgrade: h2c"), 400),
        (without("Connection:"), 400),
        (replaced("keep-alive, Upgrade", "keep-alive"), 400),
        (without("Sec-WebSocket-Key:"), 400),
        (replaced("dGhlIHNhbXBsZSBub25jZQ==", "not base64!"), 400),
        (replaced("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="), 400), // 5 bytes, not 16
        (without("Sec-WebSocket-Version:"), 426),
        (replaced("Version: 13", "Version: 8"), 426),
        (
            replaced(
                "Host: server",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nHost: server",
            ),
            400,
        ), // the key twice
        ("GET / HTTP/1.1\r\nHost x\r\n\r\n".to_string(), 400), // malformed header line
        (replaced("Host:", "Content-Length: 5\r\nHost:"), 400), // a body
        (
            replaced("Host:", "Transfer-Encoding: chunked\r\nHost:"),
            400,
        ),
    ];
    for (request, status) in cases {
        assert_eq!(status_of(&request), status, "{request:?}");
    }
    assert_eq!(status_of(GOOD), 101);
    // Headers the handshake does not use may hold any bytes.
    let request_line = GOOD.find("\r\n").unwrap() + 2;
    let mut latin1 = GOOD.as_bytes()[..request_line].to_vec();
    latin1.extend_from_slice(b"Cookie: caf\xe9\r\n");
    latin1.extend_from_slice(&GOOD.as_bytes()[request_line..]);
    assert!(parse(&latin1, &Limits::default()).unwrap().is_some());
    assert_eq!(
        status_of(&replaced("Host:", "Content-Length: 0\r\nHost:")),
        101
    );
    // Header names and tokens are case-insensitive.
    assert_eq!(
        status_of(&GOOD.replace("Upgrade: websocket", "upgrade: WebSocket")),
        101
    );
}

#[test]
fn limits_on_size_and_header_count() {
    let limits = Limits {
        max_request_size: 512,
        max_headers: 12,
    };
    // Still incomplete, but already over the size limit: refused without waiting.
    let long = format!("GET / HTTP/1.1\r\nX-Pad: {}", "a".repeat(600));
    assert_eq!(parse(long.as_bytes(), &limits).unwrap_err().status, 431);
    let padding: String = (0..12).map(|i| format!("X-{i}: y\r\n")).collect();
    let many = GOOD.replace("Host:", &format!("{padding}Host:"));
    assert_eq!(parse(many.as_bytes(), &limits).unwrap_err().status, 431);
    assert!(parse(GOOD.as_bytes(), &limits).unwrap().is_some());
}

#[test]
fn responses_are_complete_http() {
    let refusal = String::from_utf8(error_response(426, "only version 13")).unwrap();
    assert!(refusal.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
    assert!(refusal.contains("Sec-WebSocket-Version: 13\r\n"));
    assert!(refusal.contains("Connection: close\r\n"));
    assert!(refusal.ends_with("\r\n\r\nonly version 13\n"));
    assert!(refusal.contains("Content-Length: 16\r\n"));
    assert!(header_safe("chat.v2"));
    assert!(!header_safe("x\r\nSet-Cookie: evil"));
}

#[test]
fn a_hook_may_only_choose_an_offered_subprotocol_and_sane_headers() {
    let (request, _) = parse(GOOD.as_bytes(), &Limits::default()).unwrap().unwrap();
    let header = |n: &str, v: &str| vec![(n.to_string(), v.to_string())];
    assert!(check_choice(&request, Some("superchat"), &header("X-Server", "pygev")).is_ok());
    assert!(check_choice(&request, None, &[]).is_ok());
    let err = check_choice(&request, Some("mqtt"), &[]).unwrap_err();
    assert!(err.contains("was not offered"));
    assert!(check_choice(&request, None, &header("Bad Name", "x")).is_err());
    assert!(check_choice(&request, None, &header("X-Ok", "a\r\nSet-Cookie: x")).is_err());
}

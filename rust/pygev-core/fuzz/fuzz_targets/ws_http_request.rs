//! The plain-request parser of a WebSocket port (health checks) over arbitrary bytes: never
//! panics, never takes more than it was given, and a request found in a prefix is found
//! again, the same, in the whole input; a response built from what it found is well
//! formed (one head, the length it says).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pygev_core::websocket::handshake::{parse as parse_upgrade, Limits};
use pygev_core::websocket::http_request::{parse, response};

fuzz_target!(|input: &[u8]| {
    let limits = Limits {
        max_request_size: 1024,
        max_headers: 16,
    };
    let Err(refusal) = parse_upgrade(input, &limits) else {
        return; // an upgrade (or not complete): not the hook's
    };
    let whole = parse(input, &limits, refusal.clone());
    if let Some((request, used)) = &whole {
        assert!(*used <= input.len());
        let body = request.path.as_bytes();
        if let Some(out) = response(200, &request.headers, body, false) {
            let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            assert_eq!(&out[head_end..], body);
        }
    }
    for cut in [input.len() / 3, input.len() / 2] {
        if let Some((request, used)) = parse(&input[..cut], &limits, refusal.clone()) {
            assert!(used <= cut);
            assert_eq!(whole.clone().unwrap(), (request, used));
        }
    }
});

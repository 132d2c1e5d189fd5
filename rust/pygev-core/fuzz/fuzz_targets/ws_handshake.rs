//! The WebSocket upgrade request parser over arbitrary bytes: never panics, never takes
//! more than it was given, and a request found in a prefix is found again, the same, in
//! the whole input (bytes after it do not change it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pygev_core::websocket::handshake::{parse, Limits};

fuzz_target!(|input: &[u8]| {
    let limits = Limits {
        max_request_size: 1024,
        max_headers: 16,
    };
    let whole = parse(input, &limits);
    if let Ok(Some((_, used))) = &whole {
        assert!(*used <= input.len());
    }
    for cut in [input.len() / 3, input.len() / 2] {
        if let Ok(Some((request, used))) = parse(&input[..cut], &limits) {
            assert!(used <= cut);
            assert_eq!(whole.clone().unwrap().unwrap(), (request, used));
        }
    }
});

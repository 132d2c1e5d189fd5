//! A server's answer to a client's upgrade request, arbitrary bytes fed as they arrive:
//! never panics; an answer found in a prefix is the same answer, using the same bytes, in
//! the whole input; an accepted upgrade carried the right accept key and chose only what
//! was offered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pygev_core::websocket::client_handshake::{parse_response, Answer, DeflateOffer, Offer};
use pygev_core::websocket::handshake::accept_key;

fuzz_target!(|input: &[u8]| {
    let offer = Offer {
        host: "localhost".into(),
        target: "/".into(),
        key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
        origin: None,
        protocols: vec!["chat".into()],
        headers: Vec::new(),
        deflate: Some(DeflateOffer {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: true,
        }),
    };
    let whole = parse_response(input, &offer);
    for end in 0..input.len() {
        match parse_response(&input[..end], &offer) {
            Ok(None) => {}
            Ok(Some(answer)) => {
                assert_eq!(Ok(Some(answer)), whole, "a prefix's answer must stand");
                return;
            }
            Err(_) => return,
        }
    }
    if let Ok(Some(Answer::Accepted(accepted, used))) = &whole {
        assert!(*used <= input.len());
        let text = String::from_utf8_lossy(&input[..*used]).to_ascii_lowercase();
        assert!(text.contains(&accept_key(&offer.key).to_ascii_lowercase()));
        assert!(accepted.protocol.as_deref().is_none_or(|p| p == "chat"));
    }
});

//! permessage-deflate: negotiation, round trips with and without context takeover, and
//! bounded decompression.

use proptest::prelude::*;
use pygev_core::websocket::deflate::{negotiate, Agreed, Codec, Settings};

fn offer(text: &str) -> Option<String> {
    negotiate(&[text.to_string()], &Settings::default()).map(|(_, response)| response)
}

#[test]
fn offers_are_accepted_declined_or_answered_with_parameters() {
    // A client that allows no window limit is asked not to keep its context (an idle
    // connection keeps at most a 4 KiB window of it by default).
    assert_eq!(
        offer("permessage-deflate").as_deref(),
        Some("permessage-deflate; client_no_context_takeover")
    );
    assert_eq!(
        offer("permessage-deflate; client_max_window_bits").as_deref(),
        Some("permessage-deflate; client_max_window_bits=12")
    );
    let wide = Settings {
        client_max_window_bits: 15,
        ..Settings::default()
    };
    let (_, response) = negotiate(&["permessage-deflate".to_string()], &wide).unwrap();
    assert_eq!(response, "permessage-deflate");
    assert_eq!(
        offer("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
            .as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    assert_eq!(
        offer("permessage-deflate; server_max_window_bits=10; client_max_window_bits=12")
            .as_deref(),
        Some("permessage-deflate; server_max_window_bits=10; client_max_window_bits=12")
    );
    // Declined: unknown or repeated parameters, bad values, a window zlib cannot do.
    for bad in [
        "permessage-deflate; foo",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_no_context_takeover=1",
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; server_max_window_bits=+9",
        "x-webkit-deflate-frame",
    ] {
        assert_eq!(offer(bad), None, "{bad}");
    }
    // Never a larger client window than the client offered, even one zlib cannot compress
    // with (the server only inflates with it).
    assert_eq!(
        offer("permessage-deflate; client_max_window_bits=8").as_deref(),
        Some("permessage-deflate; client_max_window_bits=8")
    );
    // The first acceptable offer wins.
    let offers = vec![
        "permessage-deflate; server_max_window_bits=8".to_string(),
        "permessage-deflate; server_max_window_bits=9".to_string(),
    ];
    let (agreed, _) = negotiate(&offers, &Settings::default()).unwrap();
    assert_eq!(agreed.server_max_window_bits, 9);
    // Turned off: never negotiated.
    let off = Settings {
        enabled: false,
        ..Settings::default()
    };
    assert!(negotiate(&["permessage-deflate".to_string()], &off).is_none());
    // Server settings are announced.
    let strict = Settings {
        server_no_context_takeover: true,
        server_max_window_bits: 11,
        ..Settings::default()
    };
    let (_, response) = negotiate(
        &["permessage-deflate; client_max_window_bits".to_string()],
        &strict,
    )
    .unwrap();
    assert_eq!(
        response,
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=11; \
         client_max_window_bits=12"
    );
}

fn agreed(no_takeover: bool, bits: u8) -> Agreed {
    Agreed {
        server_no_context_takeover: no_takeover,
        client_no_context_takeover: no_takeover,
        server_max_window_bits: bits,
        client_max_window_bits: bits,
    }
}

#[test]
fn a_zip_bomb_is_refused_as_soon_as_it_passes_the_limit() {
    let mut sender = Codec::new(agreed(false, 15), 0);
    let bomb = sender.deflate(&vec![0u8; 50 << 20]).unwrap(); // 50 MiB of zeros: about 50 KiB
    assert!(bomb.len() < 100 << 10);
    let mut receiver = Codec::new(agreed(false, 15), 0);
    let err = receiver.inflate(&bomb, 1 << 20).unwrap_err();
    assert_eq!(err.code, 1009);
}

#[test]
fn garbage_is_invalid_data() {
    let mut receiver = Codec::new(agreed(false, 15), 0);
    let err = receiver
        .inflate(&[0xff, 0xff, 0xff, 0xff, 0x00], 1 << 20)
        .unwrap_err();
    assert_eq!(err.code, 1007);
}

#[test]
fn a_parked_codec_holds_only_the_clients_window_and_goes_on_where_it_was() {
    let mut sender = Codec::new(agreed(false, 12), 0);
    let mut receiver = Codec::new(agreed(false, 12), 0);
    // 3,000 bytes that do not compress on their own (a simple LCG), sent again and again.
    let mut seed = 12345u32;
    let text: Vec<u8> = (0..3000)
        .map(|_| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 16) as u8
        })
        .collect();
    for round in 0..4 {
        let wire = sender.deflate(&text).unwrap();
        if round == 0 {
            assert!(wire.len() > 2500, "{} bytes", wire.len());
        } else {
            // The sender refers back into the previous message: only the kept window can
            // make sense of it.
            assert!(wire.len() < 100, "{} bytes", wire.len());
        }
        assert_eq!(receiver.inflate(&wire, 1 << 20).unwrap(), text);
        receiver.park();
        assert!(receiver.is_parked());
        assert!(receiver.parked_bytes() <= 4096);
    }
    // A parked sender forgets its context: still a valid stream for the peer.
    sender.park();
    let wire = sender.deflate(&text).unwrap();
    assert_eq!(receiver.inflate(&wire, 1 << 20).unwrap(), text);
}

proptest! {
    #[test]
    fn messages_round_trip_across_parks(
        messages in prop::collection::vec(prop::collection::vec(0u8..4, 0..6000), 1..8),
        parks in prop::collection::vec(any::<(bool, bool)>(), 8),
        (server_no_takeover, client_no_takeover) in any::<(bool, bool)>(),
        (sender_bits, extra_bits) in (9u8..=15, 0u8..=6),
    ) {
        // The sender's compressor (the server's side of its Agreed) and the receiver's
        // decompressor (the client's side of its own), agreed apart: a receiver that
        // keeps no context needs a sender that keeps none, and its window must hold the
        // sender's.
        let receiver_bits = (sender_bits + extra_bits).min(15);
        let sent = Agreed {
            server_no_context_takeover: server_no_takeover || client_no_takeover,
            client_no_context_takeover: true,
            server_max_window_bits: sender_bits,
            client_max_window_bits: 15,
        };
        let received = Agreed {
            server_no_context_takeover: true,
            client_no_context_takeover: client_no_takeover,
            server_max_window_bits: 15,
            client_max_window_bits: receiver_bits,
        };
        let mut sender = Codec::new(sent, 0);
        let mut receiver = Codec::new(received, 0);
        for (message, (park_sender, park_receiver)) in messages.into_iter().zip(parks) {
            if park_sender {
                sender.park();
            }
            if park_receiver {
                receiver.park();
                prop_assert!(receiver.parked_bytes() <= 1 << receiver_bits);
                prop_assert!(!client_no_takeover || receiver.parked_bytes() == 0);
            }
            let wire = sender.deflate(&message).unwrap();
            prop_assert_eq!(receiver.inflate(&wire, 1 << 20).unwrap(), message);
        }
    }

    #[test]
    fn messages_round_trip_with_and_without_context_takeover(
        messages in prop::collection::vec(prop::collection::vec(0u8..4, 0..3000), 1..8),
        no_takeover in any::<bool>(),
        bits in 9u8..=15,
    ) {
        let mut sender = Codec::new(agreed(no_takeover, bits), 0);
        let mut receiver = Codec::new(agreed(no_takeover, bits), 0);
        for message in messages {
            let wire = sender.deflate(&message).unwrap();
            prop_assert_eq!(receiver.inflate(&wire, 1 << 20).unwrap(), message);
        }
    }
}

#[test]
fn a_message_ending_its_deflate_stream_is_fine_and_so_is_the_next() {
    use flate2::{Compress, Compression, FlushCompress};
    // Each message its own deflate stream (BFINAL), the second referring back into the
    // first through a preset dictionary: with the client's context kept, the window
    // outlives the end of a stream (RFC 7692 section 7.2.2).
    let finished = |data: &[u8], dictionary: &[u8]| {
        let mut c = Compress::new(Compression::default(), false);
        if !dictionary.is_empty() {
            c.set_dictionary(dictionary).unwrap();
        }
        let mut out = Vec::with_capacity(data.len() + 64);
        c.compress_vec(data, &mut out, FlushCompress::Finish)
            .unwrap();
        out
    };
    let first = b"the first message, long enough to be referred back to".to_vec();
    let second = b"the first message, long enough to be referred back to, again".to_vec();
    let wire = finished(&second, &first);
    assert!(
        wire.len() < 30,
        "the second refers back: {} bytes",
        wire.len()
    );
    for park in [false, true] {
        let mut receiver = Codec::new(agreed(false, 15), 0);
        assert_eq!(
            receiver.inflate(&finished(&first, b""), 1000).unwrap(),
            first
        );
        if park {
            receiver.park();
        }
        assert_eq!(receiver.inflate(&wire, 1000).unwrap(), second);
    }
    let mut receiver = Codec::new(agreed(false, 15), 0);
    let mut trailing = finished(b"third", b"");
    trailing.extend_from_slice(b"junk");
    assert_eq!(receiver.inflate(&trailing, 1000).unwrap_err().code, 1007);
}

#[test]
fn an_empty_message_between_others_keeps_the_stream_in_step() {
    // zlib-rs flushes nothing for an empty message; a receiver fed only the tail would
    // have read the next message as a stored block (found by the round-trip proptest).
    for bits in [9, 15] {
        let mut sender = Codec::new(agreed(false, bits), 0);
        let mut receiver = Codec::new(agreed(false, bits), 0);
        for message in [&b"abcabcabc hello"[..], b"", b"abcabc more", b"", b""] {
            let wire = sender.deflate(message).unwrap();
            assert!(
                !wire.is_empty(),
                "RFC 7692 7.2.3.6: an empty message is 0x00"
            );
            assert_eq!(receiver.inflate(&wire, 1 << 20).unwrap(), message);
        }
        // And an empty compressed payload from another sender is an empty message.
        assert_eq!(receiver.inflate(&[], 1 << 20).unwrap(), b"");
        let wire = sender.deflate(b"after").unwrap();
        assert_eq!(receiver.inflate(&wire, 1 << 20).unwrap(), b"after");
    }
}

//! The WebSocket client framing against the server framing, in memory: the upgrade, masked
//! frames one way and unmasked the other, with and without permessage-deflate, pings, a
//! masked frame from the server (1002), refusals, wrong answers and silence (reported,
//! closed in order), and fresh keys per connection.

use std::time::Duration;

use pygev_core::websocket::client::{ClientSettings, WebSocketClient};
use pygev_core::websocket::client_handshake::{DeflateOffer, HandshakeFailure, Offer};
use pygev_core::websocket::frames::{opcode, write_frame};
use pygev_core::websocket::masking::write_masked_frame;
use pygev_core::websocket::{Settings, WebSocket};
use pygev_core::{FrameSink, Item, MessageKind, Protocol, ProtocolState, Signal};

fn client(deflate: bool) -> WebSocketClient {
    WebSocketClient::new(ClientSettings {
        offer: Offer {
            host: "localhost".into(),
            target: "/echo".into(),
            key: String::new(),
            origin: None,
            protocols: Vec::new(),
            headers: Vec::new(),
            deflate: deflate.then_some(DeflateOffer {
                server_no_context_takeover: false,
                client_no_context_takeover: false,
                server_max_window_bits: 15,
                client_max_window_bits: true,
            }),
        },
        max_message_size: 1 << 20,
        handshake_timeout: Duration::from_secs(5),
        threshold: 16,
        own_window_bits: 15,
        ping_interval: None,
        ping_timeout: Duration::from_secs(5),
    })
    .expect("a valid offer")
}

/// Feeds `input` to `protocol` as the loop would; returns what it delivered and what it
/// asked to write back.
fn feed(protocol: &dyn Protocol, state: &mut ProtocolState, input: &[u8]) -> (Vec<Item>, Vec<u8>) {
    let mut sink = FrameSink::new();
    let used = protocol.unpack(state, input, &mut sink).unwrap();
    assert_eq!(used, input.len(), "everything whole was used");
    let items = sink.drain_items();
    let (reply, _) = sink.take_actions();
    (items, reply)
}

/// A connected client and server, and whether they agreed on compression.
type Pair = (
    WebSocketClient,
    ProtocolState,
    WebSocket,
    ProtocolState,
    bool,
);

/// A client connected to a default server.
fn connected(deflate: bool) -> Pair {
    connected_to(deflate, Settings::default())
}

fn connected_to(deflate: bool, settings: Settings) -> Pair {
    let client = client(deflate);
    let server = WebSocket::new(settings);
    let (mut cstate, mut sstate) = (client.new_state(), server.new_state());
    let mut request = Vec::new();
    client.opening(&mut cstate, &mut request).unwrap();
    assert!(request.starts_with(b"GET /echo HTTP/1.1\r\n"));
    let (items, response) = feed(&server, &mut sstate, &request);
    assert!(matches!(items[..], [Item::Signal(Signal::Opened { .. })]));
    let (items, _) = feed(&client, &mut cstate, &response);
    let [Item::Signal(Signal::Opened { compressed, .. })] = items[..] else {
        panic!("the client did not open: {items:?}");
    };
    (client, cstate, server, sstate, compressed)
}

/// What `protocol` writes for a message of `kind` carrying `payload`.
fn packed(
    protocol: &dyn Protocol,
    state: &mut ProtocolState,
    kind: MessageKind,
    payload: &[u8],
) -> Vec<u8> {
    let mut wire = Vec::new();
    protocol.pack_kind(state, kind, payload, &mut wire).unwrap();
    wire
}

fn message(items: &[Item]) -> (MessageKind, Vec<u8>) {
    match items {
        [Item::Message { kind, data }] => (*kind, data.clone()),
        other => panic!("not one message: {other:?}"),
    }
}

#[test]
fn messages_go_both_ways_with_and_without_compression() {
    for deflate in [false, true] {
        let (client, mut cstate, server, mut sstate, compressed) = connected(deflate);
        assert_eq!(compressed, deflate);
        for size in [0usize, 5, 200, 70_000] {
            let payload: Vec<u8> = (0..size).map(|i| b"abcabcabd"[i % 9]).collect();
            let wire = packed(&client, &mut cstate, MessageKind::Text, &payload);
            assert_eq!(wire[1] & 0x80, 0x80, "a client frame is masked");
            let (items, _) = feed(&server, &mut sstate, &wire);
            assert_eq!(message(&items), (MessageKind::Text, payload.clone()));
            let back = packed(&server, &mut sstate, MessageKind::Binary, &payload);
            let (items, _) = feed(&client, &mut cstate, &back);
            assert_eq!(message(&items), (MessageKind::Binary, payload));
        }
    }
}

#[test]
fn pings_are_answered_with_masked_pongs() {
    let (client, mut cstate, server, mut sstate, _) = connected(false);
    let mut ping = Vec::new();
    write_frame(&mut ping, opcode::PING, true, false, b"are you there");
    let (items, pong) = feed(&client, &mut cstate, &ping);
    assert!(items.is_empty());
    assert_eq!(pong[0] & 0x0f, opcode::PONG);
    assert_eq!(pong[1] & 0x80, 0x80, "masked");
    let (items, _) = feed(&server, &mut sstate, &pong); // the server's reader accepts it
    assert!(items.is_empty());
}

#[test]
fn a_masked_frame_from_the_server_is_a_protocol_error() {
    let (client, mut cstate, _, _, _) = connected(false);
    let mut masked = Vec::new();
    write_masked_frame(&mut masked, opcode::TEXT, true, false, b"hi", [9, 9, 9, 9]);
    let (items, _) = feed(&client, &mut cstate, &masked);
    match &items[..] {
        [Item::Signal(Signal::Ending { close: Some(close) })] => {
            assert_eq!(&close[..2], &1002u16.to_be_bytes());
        }
        other => panic!("not ended with 1002: {other:?}"),
    }
}

/// The failure a client reported, and whether it asked for an orderly close.
fn failure(sink: &mut FrameSink) -> (HandshakeFailure, bool) {
    let items = sink.drain_items();
    let (_, close) = sink.take_actions();
    match items.into_iter().next() {
        Some(Item::Signal(Signal::HandshakeFailed(failure))) => (*failure, close == Some(None)),
        other => panic!("no handshake failure reported: {other:?}"),
    }
}

#[test]
fn a_refusal_is_reported_with_its_status_and_whole_body() {
    let client = client(false);
    let mut state = client.new_state();
    let mut request = Vec::new();
    client.opening(&mut state, &mut request).unwrap();
    let mut sink = FrameSink::new();
    let head = b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 11\r\n\r\n";
    let mut wire = head.to_vec();
    wire.extend_from_slice(b"go ");
    // The head and part of the body: it waits for the rest.
    assert_eq!(client.unpack(&mut state, &wire, &mut sink).unwrap(), 0);
    assert!(sink.drain_items().is_empty());
    wire.extend_from_slice(b"elsewhere");
    let used = client.unpack(&mut state, &wire, &mut sink).unwrap();
    assert_eq!(used, wire.len());
    let (failure, orderly) = failure(&mut sink);
    assert!(orderly, "closed in order, nothing logged");
    let HandshakeFailure::Refused { refused, body } = failure else {
        panic!("not a refusal: {failure:?}");
    };
    assert_eq!((refused.status, refused.reason.as_str()), (302, "Found"));
    assert_eq!(refused.location.as_deref(), Some("/elsewhere"));
    assert_eq!(body, b"go elsewher", "Content-Length bytes, no more");
}

#[test]
fn a_wrong_accept_key_fails_the_handshake() {
    let client = client(false);
    let mut state = client.new_state();
    let mut request = Vec::new();
    client.opening(&mut state, &mut request).unwrap();
    let mut sink = FrameSink::new();
    let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n";
    client.unpack(&mut state, answer, &mut sink).unwrap();
    let (failure, orderly) = failure(&mut sink);
    assert!(orderly);
    match failure {
        HandshakeFailure::Invalid(reason) => assert!(reason.contains("Accept"), "{reason}"),
        other => panic!("not an invalid answer: {other:?}"),
    }
    assert!(!client.allows_packed(&state));
}

#[test]
fn a_server_that_never_answers_is_timed_out() {
    let client = client(false);
    let mut state = client.new_state();
    let mut request = Vec::new();
    client.opening(&mut state, &mut request).unwrap();
    let start = std::time::Instant::now();
    let mut sink = FrameSink::new();
    client.tick(&mut state, start, start, &mut sink).unwrap();
    assert!(sink.drain_items().is_empty(), "not yet");
    let late = start + Duration::from_secs(6);
    client.tick(&mut state, late, start, &mut sink).unwrap();
    let (failure, orderly) = failure(&mut sink);
    assert!(orderly);
    assert_eq!(failure, HandshakeFailure::TimedOut(Duration::from_secs(5)));
}

#[test]
fn an_offer_that_cannot_be_sent_is_refused_up_front() {
    let mut settings = client(false).settings().clone();
    settings.offer.headers = vec![("X-Bad".into(), "a\r\nInjected: yes".into())];
    assert!(WebSocketClient::new(settings.clone()).is_err());
    settings.offer.headers.clear();
    settings.offer.target = "no-slash".into();
    assert!(WebSocketClient::new(settings).is_err());
}

#[test]
fn every_connection_gets_a_fresh_key() {
    let client = client(false);
    let keys: std::collections::HashSet<Vec<u8>> = (0..50)
        .map(|_| {
            let mut state = client.new_state();
            let mut request = Vec::new();
            client.opening(&mut state, &mut request).unwrap();
            let text = String::from_utf8(request).unwrap();
            let line = text
                .lines()
                .find(|l| l.starts_with("Sec-WebSocket-Key:"))
                .unwrap();
            line.as_bytes().to_vec()
        })
        .collect();
    assert_eq!(keys.len(), 50);
}

#[test]
fn the_agreed_windows_and_context_takeover_hold_both_ways() {
    use pygev_core::websocket::deflate;
    for (client_bits, server_no_context, client_no_context) in [
        (8, false, false),
        (9, true, false),
        (12, false, true),
        (15, true, true),
    ] {
        let settings = Settings {
            deflate: deflate::Settings {
                server_no_context_takeover: server_no_context,
                client_no_context_takeover: client_no_context,
                client_max_window_bits: client_bits,
                ..deflate::Settings::default()
            },
            ..Settings::default()
        };
        let (client, mut cstate, server, mut sstate, compressed) = connected_to(true, settings);
        assert!(compressed);
        for round in 0..6 {
            let payload: Vec<u8> = (0..3000)
                .map(|i| b"the same words again "[(i + round) % 21])
                .collect();
            let wire = packed(&client, &mut cstate, MessageKind::Binary, &payload);
            let rsv1 = wire[0] & 0x40 != 0;
            assert_eq!(
                rsv1,
                client_bits >= 9,
                "no compression within an 8-bit window"
            );
            let (items, _) = feed(&server, &mut sstate, &wire);
            assert_eq!(message(&items), (MessageKind::Binary, payload.clone()));
            let back = packed(&server, &mut sstate, MessageKind::Binary, &payload);
            assert_ne!(back[0] & 0x40, 0, "the server compresses");
            let (items, _) = feed(&client, &mut cstate, &back);
            assert_eq!(message(&items), (MessageKind::Binary, payload));
        }
    }
}

#[test]
fn a_close_from_the_client_is_masked_and_ends_on_the_echo() {
    let (client, mut cstate, server, mut sstate, _) = connected(false);
    let mut close = Vec::new();
    client
        .control(
            &mut cstate,
            pygev_core::Control::Close(1000u16.to_be_bytes().to_vec()),
            &mut close,
        )
        .unwrap();
    assert_eq!(close[0] & 0x0f, opcode::CLOSE);
    assert_eq!(close[1] & 0x80, 0x80, "masked");
    let mut after = Vec::new();
    client
        .pack_kind(&mut cstate, MessageKind::Text, b"late", &mut after)
        .unwrap();
    assert!(after.is_empty(), "nothing after our close");
    let (items, _) = feed(&server, &mut sstate, &close);
    assert!(matches!(
        &items[..],
        [Item::Signal(Signal::Ending { close: Some(_) })]
    ));
    let mut echo = Vec::new();
    write_frame(
        &mut echo,
        opcode::CLOSE,
        true,
        false,
        &1000u16.to_be_bytes(),
    );
    let (items, _) = feed(&client, &mut cstate, &echo);
    assert!(matches!(
        &items[..],
        [Item::Signal(Signal::Ending { close: None })]
    ));
}

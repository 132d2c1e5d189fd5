//! The WebSocket client framing as the loops run it: a valid 101 (permessage-deflate agreed
//! or not), then arbitrary server bytes split at arbitrary points: never panics, never
//! takes more than it was given, every text message is UTF-8 and within the size limit,
//! and reading in pieces gives the messages and signals reading the whole input gives (our
//! replies differ: each carries a fresh mask).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pygev_core::websocket::client::{ClientSettings, WebSocketClient};
use pygev_core::websocket::client_handshake::{DeflateOffer, Offer};
use pygev_core::websocket::handshake::accept_key;
use pygev_core::{FrameSink, Item, MessageKind, Protocol, ProtocolState, Signal};

const MAX: usize = 4096;

fn client() -> WebSocketClient {
    let settings = ClientSettings {
        offer: Offer {
            host: "x".into(),
            target: "/".into(),
            key: String::new(),
            origin: None,
            protocols: vec!["chat".into()],
            headers: Vec::new(),
            deflate: Some(DeflateOffer {
                server_no_context_takeover: false,
                client_no_context_takeover: false,
                server_max_window_bits: 15,
                client_max_window_bits: true,
            }),
        },
        max_message_size: MAX,
        handshake_timeout: Duration::from_secs(10),
        threshold: 16,
        own_window_bits: 12,
        ping_interval: None,
        ping_timeout: Duration::from_secs(10),
    };
    WebSocketClient::new(settings).expect("a valid offer")
}

/// A fresh connection's state and the 101 that accepts its request.
fn opened(client: &WebSocketClient, deflate: bool) -> (ProtocolState, Vec<u8>) {
    let mut state = client.new_state();
    let mut request = Vec::new();
    client.opening(&mut state, &mut request).expect("a request");
    let text = String::from_utf8(request).expect("ASCII");
    let key = (text.lines())
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .expect("a key");
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        accept_key(key)
    );
    if deflate {
        answer.push_str(
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=10\r\n",
        );
    }
    answer.push_str("\r\n");
    (state, answer.into_bytes())
}

fn run(client: &WebSocketClient, deflate: bool, data: &[u8], step: usize) -> (Vec<String>, bool) {
    let (mut state, mut wire) = opened(client, deflate);
    wire.extend_from_slice(data);
    let mut sink = FrameSink::new();
    let mut pending = Vec::new();
    let (mut items, mut ended) = (Vec::new(), false);
    for chunk in wire.chunks(step) {
        if ended {
            break;
        }
        pending.extend_from_slice(chunk);
        loop {
            let used = (client.unpack(&mut state, &pending, &mut sink)).expect("no hard errors");
            assert!(used <= pending.len());
            pending.drain(..used);
            items.extend(sink.drain_items().into_iter().map(describe));
            ended |= sink.take_stop().is_some();
            let (_, close) = sink.take_actions();
            ended |= close.is_some();
            if ended || !sink.take_again() {
                break;
            }
        }
    }
    (items, ended)
}

fn describe(item: Item) -> String {
    match item {
        Item::Message { kind, data } => {
            assert!(data.len() <= MAX, "a message over the limit was delivered");
            match kind {
                MessageKind::Text => {
                    let text = std::str::from_utf8(&data).expect("text messages are UTF-8");
                    format!("text {text:?}")
                }
                MessageKind::Binary => format!("binary {data:?}"),
            }
        }
        Item::Signal(Signal::Upgrade(_)) => panic!("a client holds no upgrade"),
        Item::Signal(signal) => format!("{signal:?}"),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&control, data)) = input.split_first() else {
        return;
    };
    let client = client();
    let deflate = control & 1 == 1;
    let whole = run(&client, deflate, data, usize::MAX);
    let pieces = run(&client, deflate, data, 1 + (control >> 1) as usize);
    assert_eq!(whole, pieces);
});

//! The WebSocket framing as the loops run it (handshake, then frames, compression agreed
//! or not), over arbitrary bytes split at arbitrary points: never panics, never takes more
//! than it was given, every text message is UTF-8 and no upgrade is held without a hook, and reading in pieces
//! gives what reading the whole input at once gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pygev_core::websocket::{Settings, WebSocket};
use pygev_core::{FrameSink, Item, MessageKind, Protocol, Signal};

const PLAIN: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const DEFLATE: &[u8] =
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

fn run(ws: &WebSocket, input: &[u8], step: usize) -> (Vec<String>, Vec<u8>, bool) {
    let mut state = ws.new_state();
    let mut sink = FrameSink::new();
    let mut pending = Vec::new();
    let (mut frames, mut replies, mut ended) = (Vec::new(), Vec::new(), false);
    for chunk in input.chunks(step) {
        if ended {
            break;
        }
        pending.extend_from_slice(chunk);
        loop {
            let used = ws
                .unpack(&mut state, &pending, &mut sink)
                .expect("no hard errors");
            assert!(used <= pending.len());
            pending.drain(..used);
            frames.extend(sink.drain_items().into_iter().map(describe));
            ended |= sink.take_stop().is_some();
            let (reply, close) = sink.take_actions();
            replies.extend(reply);
            ended |= close.is_some();
            if ended || !sink.take_again() {
                break; // else bounded work left on what is held: go on, as the loop does
            }
        }
    }
    (frames, replies, ended)
}

/// One item as the dispatcher would see it, checked and written down for comparison.
fn describe(item: Item) -> String {
    match item {
        Item::Message {
            kind: MessageKind::Text,
            data,
        } => {
            let text = std::str::from_utf8(&data).expect("text messages are UTF-8");
            format!("text {text:?}")
        }
        Item::Message {
            kind: MessageKind::Binary,
            data,
        } => format!("binary {data:?}"),
        Item::Signal(Signal::Upgrade(_)) => panic!("no hook, so no upgrade is held"),
        Item::Signal(signal) => format!("{signal:?}"),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&control, data)) = input.split_first() else {
        return;
    };
    let settings = Settings {
        max_message_size: 4096,
        ..Settings::default()
    };
    let ws = WebSocket::new(settings);
    let mut wire = if control & 1 == 0 { PLAIN } else { DEFLATE }.to_vec();
    wire.extend_from_slice(data);
    let whole = run(&ws, &wire, wire.len());
    let pieces = run(&ws, &wire, 1 + (control >> 1) as usize);
    assert_eq!(whole, pieces);
});

//! The WebSocket framing as the loops run it: handshake, messages, pings and the close,
//! whatever way the bytes are split; and the server side's packing.

mod ws_util;

use proptest::prelude::*;
use pygev_core::websocket::frames::{opcode, unmask_into};
use pygev_core::websocket::{Settings, WebSocket};
use pygev_core::{
    Control, FrameSink, Item, MessageKind, Protocol, ProtocolError, ProtocolState, Signal,
};

/// How these tests write down what crosses between the framing and the dispatcher: one
/// letter, then the payload (the framing itself passes typed items).
mod tag {
    pub const TEXT: u8 = b'T';
    pub const BINARY: u8 = b'B';
    /// An upgrade request held for the hook; its path follows.
    pub const HANDSHAKE: u8 = b'H';
    /// Opened; 1 when compressed.
    pub const OPEN: u8 = b'O';
    /// Ending; 1 and the close payload to send, or 0.
    pub const END: u8 = b'E';
    pub const ACCEPT: u8 = b'A';
    pub const CLOSE: u8 = b'C';
    pub const HTTP: u8 = b'P';
}

/// Everything in the sink, in order, written down as in [`tag`].
fn items(sink: &mut FrameSink) -> Vec<Vec<u8>> {
    let item = |item| match item {
        Item::Message { kind, data } => {
            let kind = match kind {
                MessageKind::Text => tag::TEXT,
                MessageKind::Binary => tag::BINARY,
            };
            tagged(kind, &data)
        }
        Item::Signal(Signal::Upgrade(request)) => tagged(tag::HANDSHAKE, request.path.as_bytes()),
        Item::Signal(Signal::HttpRequest(request)) => tagged(tag::HTTP, request.path.as_bytes()),
        Item::Signal(Signal::Opened { compressed, .. }) => vec![tag::OPEN, u8::from(compressed)],
        Item::Signal(Signal::Ending { close: Some(close) }) => {
            let mut end = vec![tag::END, 1];
            end.extend(close);
            end
        }
        Item::Signal(Signal::Ending { close: None }) => vec![tag::END, 0],
        Item::Signal(Signal::HandshakeFailed(_)) => panic!("a server's handshake never fails so"),
    };
    sink.drain_items().into_iter().map(item).collect()
}

/// Hands the framing a send or a control written down as in [`tag`].
fn send(
    ws: &WebSocket,
    state: &mut ProtocolState,
    what: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let (&kind, payload) = what.split_first().expect("a tag");
    match kind {
        tag::TEXT => ws.pack_kind(state, MessageKind::Text, payload, out),
        tag::BINARY => ws.pack_kind(state, MessageKind::Binary, payload, out),
        tag::ACCEPT => ws
            .control(state, Control::Accept(payload.to_vec()), out)
            .map(drop),
        tag::CLOSE => ws
            .control(state, Control::Close(payload.to_vec()), out)
            .map(drop),
        _ => panic!("no such tag"),
    }
}

const REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

fn client_frame(fin: bool, kind: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    ws_util::client_frame(u8::from(fin) << 7 | kind, payload, mask)
}

/// What the loop does with the protocol's output, collected.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    /// Messages and signals for the dispatcher, in order, written down as in [`tag`].
    frames: Vec<Vec<u8>>,
    /// Bytes written back by the protocol itself.
    replies: Vec<u8>,
    /// The protocol stopped reading (the dispatcher ends the connection).
    stopped: bool,
    /// The protocol asked to close after its reply.
    closed: bool,
    /// Extra turns the protocol asked for (bounded steps).
    steps: usize,
}

/// Feeds `input` to a fresh connection in pieces (cut points modulo its length), keeping
/// what the protocol did not use and taking its reschedule after each read, as the loop
/// does (so an open, quiet connection's state slot goes empty between reads).
fn run(ws: &WebSocket, input: &[u8], cuts: &[usize]) -> Outcome {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    points.push(input.len());
    let mut state = ws.new_state();
    let mut sink = FrameSink::new();
    let mut pending = Vec::new();
    let mut outcome = Outcome::default();
    let mut start = 0;
    for p in points {
        pending.extend_from_slice(&input[start..p]);
        start = p;
        if outcome.stopped || outcome.closed {
            break; // the loop reads no more
        }
        loop {
            let used = ws
                .unpack(&mut state, &pending, &mut sink)
                .expect("no hard error");
            ws.take_reschedule(&mut state);
            pending.drain(..used);
            outcome.frames.extend(items(&mut sink));
            outcome.stopped |= sink.take_stop().is_some();
            let (reply, close) = sink.take_actions();
            outcome.replies.extend(reply);
            outcome.closed |= close.is_some();
            if !sink.take_again() {
                break; // else: bounded work left on what is held, as the loop does
            }
            outcome.steps += 1;
        }
    }
    outcome
}

fn tagged(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(payload);
    out
}

#[derive(Debug, Clone)]
enum Step {
    Message {
        text: bool,
        payload: Vec<u8>,
        pieces: usize,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..300),
            1usize..4
        )
            .prop_map(|(text, payload, pieces)| {
                // Text must be UTF-8: map bytes to ASCII letters for text messages.
                let payload = if text {
                    payload.iter().map(|b| b'a' + b % 26).collect()
                } else {
                    payload
                };
                Step::Message {
                    text,
                    payload,
                    pieces,
                }
            }),
        prop::collection::vec(any::<u8>(), 0..126).prop_map(Step::Ping),
        prop::collection::vec(any::<u8>(), 0..126).prop_map(Step::Pong),
    ]
}

/// The wire form of `steps` after the upgrade request, and the frames and pongs expected.
fn script(steps: &[Step], mask: [u8; 4]) -> (Vec<u8>, Vec<Vec<u8>>, Vec<u8>) {
    let mut wire = REQUEST.to_vec();
    let mut frames = vec![tagged(tag::OPEN, &[0])];
    let mut pongs = Vec::new();
    for step in steps {
        match step {
            Step::Message {
                text,
                payload,
                pieces,
            } => {
                let size = payload.len().div_ceil(*pieces).max(1);
                let chunks: Vec<&[u8]> = if payload.is_empty() {
                    vec![&[]]
                } else {
                    payload.chunks(size).collect()
                };
                let first = if *text { opcode::TEXT } else { opcode::BINARY };
                for (i, chunk) in chunks.iter().enumerate() {
                    let kind = if i == 0 { first } else { opcode::CONTINUATION };
                    wire.extend(client_frame(i + 1 == chunks.len(), kind, chunk, mask));
                }
                let kind = if *text { tag::TEXT } else { tag::BINARY };
                frames.push(tagged(kind, payload));
            }
            Step::Ping(payload) => {
                wire.extend(client_frame(true, opcode::PING, payload, mask));
                pygev_core::websocket::frames::write_frame(
                    &mut pongs,
                    opcode::PONG,
                    true,
                    false,
                    payload,
                );
            }
            Step::Pong(payload) => wire.extend(client_frame(true, opcode::PONG, payload, mask)),
        }
    }
    (wire, frames, pongs)
}

proptest! {
    #[test]
    fn any_split_gives_the_same_messages_and_pongs(
        steps in prop::collection::vec(step(), 0..12),
        mask in any::<[u8; 4]>(),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let ws = WebSocket::new(Settings::default());
        let (wire, frames, pongs) = script(&steps, mask);
        let outcome = run(&ws, &wire, &cuts);
        prop_assert_eq!(&outcome.frames, &frames);
        let response_end = outcome.replies.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        prop_assert!(outcome.replies.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
        prop_assert_eq!(&outcome.replies[response_end..], &pongs[..]);
        prop_assert!(!outcome.stopped && !outcome.closed);
    }

    #[test]
    fn unmask_into_matches_a_plain_xor(
        data in prop::collection::vec(any::<u8>(), 0..100),
        mask in any::<[u8; 4]>(),
        prefix in prop::collection::vec(any::<u8>(), 0..5),
    ) {
        let mut out = prefix.clone();
        unmask_into(&mut out, &data, mask);
        let expected: Vec<u8> = prefix
            .iter()
            .copied()
            .chain(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]))
            .collect();
        prop_assert_eq!(out, expected);
    }

    #[test]
    fn garbage_after_the_handshake_never_panics(
        junk in prop::collection::vec(any::<u8>(), 0..400),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let ws = WebSocket::new(Settings::default());
        let mut wire = REQUEST.to_vec();
        wire.extend(junk);
        let outcome = run(&ws, &wire, &cuts);
        // Whatever happened, a failed connection ends with a close frame for the dispatcher.
        if outcome.stopped {
            let last = outcome.frames.last().unwrap();
            prop_assert_eq!(last[0], tag::END);
        }
    }
}

#[test]
fn a_close_comes_after_the_messages_before_it_and_echoes_the_code() {
    let ws = WebSocket::new(Settings::default());
    let mask = [1, 2, 3, 4];
    let mut wire = REQUEST.to_vec();
    wire.extend(client_frame(true, opcode::TEXT, b"last", mask));
    wire.extend(client_frame(
        true,
        opcode::CLOSE,
        &[0x0f, 0xa0, b'b', b'y'],
        mask,
    ));
    wire.extend(client_frame(true, opcode::TEXT, b"ignored", mask));
    let outcome = run(&ws, &wire, &[]);
    assert!(outcome.stopped);
    assert_eq!(outcome.frames.len(), 3);
    assert_eq!(outcome.frames[1], tagged(tag::TEXT, b"last"));
    // The END item carries our close frame's payload: code 4000 echoed, no reason.
    assert_eq!(outcome.frames[2], vec![tag::END, 1, 0x0f, 0xa0]);
}

#[test]
fn after_the_peers_close_replies_still_pack_then_our_close_ends_everything() {
    let ws = WebSocket::new(Settings::default());
    let mut state = ws.new_state();
    let mut sink = FrameSink::new();
    let mut wire = REQUEST.to_vec();
    wire.extend(client_frame(
        true,
        opcode::CLOSE,
        &[0x03, 0xe8],
        [1, 2, 3, 4],
    ));
    ws.unpack(&mut state, &wire, &mut sink).unwrap();
    assert!(sink.take_stop().is_some());
    assert!(ws.allows_packed(&state)); // replies to earlier messages may still go
    let mut out = Vec::new();
    send(&ws, &mut state, &tagged(tag::TEXT, b"late reply"), &mut out).unwrap();
    send(
        &ws,
        &mut state,
        &tagged(tag::CLOSE, &[0x03, 0xe8]),
        &mut out,
    )
    .unwrap();
    send(&ws, &mut state, &tagged(tag::TEXT, b"too late"), &mut out).unwrap();
    send(
        &ws,
        &mut state,
        &tagged(tag::CLOSE, &[0x03, 0xe8]),
        &mut out,
    )
    .unwrap();
    let mut expected = vec![0x81, 10];
    expected.extend_from_slice(b"late reply");
    expected.extend([0x88, 2, 0x03, 0xe8]);
    assert_eq!(out, expected); // one close frame, nothing after it
    assert!(!ws.allows_packed(&state));
}

#[test]
fn the_peers_close_after_ours_is_not_echoed() {
    let ws = WebSocket::new(Settings::default());
    let mut state = ws.new_state();
    let mut sink = FrameSink::new();
    ws.unpack(&mut state, REQUEST, &mut sink).unwrap();
    let mut out = Vec::new();
    send(
        &ws,
        &mut state,
        &tagged(tag::CLOSE, &[0x0f, 0xa0]),
        &mut out,
    )
    .unwrap();
    let reply = client_frame(true, opcode::CLOSE, &[0x0f, 0xa0], [0, 0, 0, 0]);
    items(&mut sink);
    ws.unpack(&mut state, &reply, &mut sink).unwrap();
    assert_eq!(items(&mut sink), vec![vec![tag::END, 0]]);
}

#[test]
fn an_unfinished_handshake_times_out_and_keepalive_pings_then_gives_up() {
    use std::time::{Duration, Instant};
    let ws = WebSocket::new(Settings {
        handshake_timeout: Duration::from_secs(10),
        ping_interval: Some(Duration::from_secs(5)),
        ping_timeout: Duration::from_secs(2),
        ..Settings::default()
    });
    let start = Instant::now();
    let mut sink = FrameSink::new();
    let mut waiting = ws.new_state();
    assert!(ws.tick(&mut waiting, start, start, &mut sink).is_ok());
    let late = start + Duration::from_secs(11);
    assert!(ws.tick(&mut waiting, late, start, &mut sink).is_err());
    assert!(sink.reply().is_empty());

    let mut state = ws.new_state();
    ws.unpack(&mut state, REQUEST, &mut FrameSink::new())
        .unwrap();
    let t = |s: u64| start + Duration::from_secs(s);
    ws.tick(&mut state, t(3), t(0), &mut sink).unwrap();
    assert!(sink.reply().is_empty()); // not silent long enough
    ws.tick(&mut state, t(6), t(0), &mut sink).unwrap();
    assert_eq!(
        *sink.reply(),
        [0x89, 9, b'k', b'e', b'e', b'p', b'a', b'l', b'i', b'v', b'e']
    );
    sink.reply().clear();
    // Bytes arrived after the ping (a long frame, say): the ping counts as answered.
    ws.tick(&mut state, t(9), t(7), &mut sink).unwrap();
    assert!(sink.reply().is_empty());
    // Silent again: a new ping, then nothing for ping_timeout: close 1011.
    ws.tick(&mut state, t(13), t(7), &mut sink).unwrap();
    sink.reply().clear();
    assert!(ws.tick(&mut state, t(16), t(7), &mut sink).is_err());
    assert_eq!(&sink.reply()[..4], &[0x88, 24, 0x03, 0xf3]);
    assert!(!ws.allows_packed(&state));
}

#[test]
fn an_open_quiet_connection_keeps_no_state_until_it_holds_something() {
    use std::time::{Duration, Instant};
    let ws = WebSocket::new(Settings {
        ping_interval: Some(Duration::from_secs(5)),
        ping_timeout: Duration::from_secs(2),
        ..Settings::default()
    });
    let mask = [1, 2, 3, 4];
    let mut sink = FrameSink::new();
    let mut state = ws.new_state();
    assert!(state.is_some(), "the handshake has a deadline to keep");
    ws.unpack(&mut state, REQUEST, &mut sink).unwrap();
    assert_eq!(items(&mut sink), [vec![tag::OPEN, 0]]);
    sink.take_actions();
    assert!(ws.take_reschedule(&mut state));
    assert!(state.is_none(), "open and holding nothing: no state kept");

    // A whole binary message, a packed reply, the keepalive's deadline: still nothing.
    let frame = client_frame(true, opcode::BINARY, b"abc", mask);
    assert_eq!(ws.unpack(&mut state, &frame, &mut sink), Ok(frame.len()));
    assert_eq!(items(&mut sink), [tagged(tag::BINARY, b"abc")]);
    let mut out = Vec::new();
    ws.pack_kind(&mut state, MessageKind::Binary, b"xyz", &mut out)
        .unwrap();
    assert_eq!(out, [0x82, 3, b'x', b'y', b'z']);
    assert!(state.is_none() && ws.allows_packed(&state));
    assert!(!ws.has_partial_frame(&state, 0) && ws.has_partial_frame(&state, 1));
    let t0 = Instant::now();
    let t = |s: u64| t0 + Duration::from_secs(s);
    assert_eq!(ws.next_tick(&state, t0), Some(t(5)));

    // A ping out is kept until the peer answers.
    ws.tick(&mut state, t(6), t0, &mut sink).unwrap();
    assert_eq!(sink.reply()[0], 0x89);
    sink.take_actions();
    assert!(state.is_some());
    assert_eq!(ws.next_tick(&state, t0), Some(t(8)));
    let pong = client_frame(true, opcode::PONG, b"keepalive", mask);
    assert_eq!(ws.unpack(&mut state, &pong, &mut sink), Ok(pong.len()));
    assert!(state.is_none(), "answered");

    // Half a text frame, then a message in two frames: kept until parked.
    let text = client_frame(true, opcode::TEXT, "hé".as_bytes(), mask);
    assert_eq!(ws.unpack(&mut state, &text[..7], &mut sink), Ok(0));
    assert!(state.is_some(), "part of a text frame was checked");
    assert_eq!(ws.unpack(&mut state, &text, &mut sink), Ok(text.len()));
    assert_eq!(items(&mut sink), [tagged(tag::TEXT, "hé".as_bytes())]);
    assert!(ws.take_reschedule(&mut state), "the park's deadline");
    assert!(state.is_some(), "the reassembly buffer is kept a while");
    let first = client_frame(false, opcode::BINARY, b"ab", mask);
    ws.unpack(&mut state, &first, &mut sink).unwrap();
    assert!(ws.has_partial_frame(&state, 0), "in a message");
    let last = client_frame(true, opcode::CONTINUATION, b"cd", mask);
    ws.unpack(&mut state, &last, &mut sink).unwrap();
    assert_eq!(items(&mut sink), [tagged(tag::BINARY, b"abcd")]);
    let later = Instant::now() + Duration::from_secs(2);
    ws.tick(&mut state, later, later, &mut sink).unwrap();
    assert!(sink.reply().is_empty());
    assert!(state.is_none(), "parked: nothing held");

    // Our close is kept: the peer's is still to come.
    ws.control(&mut state, Control::Close(vec![3, 232]), &mut out)
        .unwrap();
    assert!(state.is_some() && !ws.allows_packed(&state));
}

#[test]
fn a_connection_that_agreed_compression_or_waits_for_the_hook_keeps_its_state() {
    use std::time::{Duration, Instant};
    let ws = WebSocket::new(Settings::default());
    let mut sink = FrameSink::new();
    let mut state = ws.new_state();
    ws.unpack(&mut state, deflate_request().as_bytes(), &mut sink)
        .unwrap();
    assert_eq!(items(&mut sink), [vec![tag::OPEN, 1]]);
    ws.take_reschedule(&mut state);
    let later = Instant::now() + Duration::from_secs(2);
    ws.tick(&mut state, later, later, &mut sink).unwrap();
    assert!(state.is_some(), "what was agreed stays, parked or not");

    let hooked = WebSocket::new(Settings {
        handshake_hook: true,
        ..Settings::default()
    });
    let mut state = hooked.new_state();
    hooked.unpack(&mut state, REQUEST, &mut sink).unwrap();
    assert_eq!(items(&mut sink), [tagged(tag::HANDSHAKE, b"/chat")]);
    assert!(!hooked.take_reschedule(&mut state));
    assert!(state.is_some(), "held for the hook");
    let mut out = Vec::new();
    send(&hooked, &mut state, b"AHTTP/1.1 101 ok\r\n\r\n", &mut out).unwrap();
    assert!(hooked.take_reschedule(&mut state));
    assert!(state.is_none(), "accepted, and holding nothing");
}

#[test]
fn a_violation_ends_with_its_code_after_earlier_messages() {
    let ws = WebSocket::new(Settings::default());
    let mut wire = REQUEST.to_vec();
    wire.extend(client_frame(true, opcode::BINARY, b"ok", [9, 9, 9, 9]));
    wire.extend(client_frame(true, opcode::TEXT, b"\xff", [0, 0, 0, 0]));
    let outcome = run(&ws, &wire, &[]);
    assert!(outcome.stopped);
    assert_eq!(outcome.frames[1], tagged(tag::BINARY, b"ok"));
    let end = &outcome.frames[2];
    assert_eq!(&end[..2], &[tag::END, 1]);
    assert_eq!(u16::from_be_bytes([end[2], end[3]]), 1007);
    assert_eq!(&end[4..], b"text is not UTF-8");
}

#[test]
fn a_bad_request_is_answered_and_closed() {
    let ws = WebSocket::new(Settings::default());
    let outcome = run(&ws, b"GET / HTTP/1.0\r\n\r\n", &[]);
    assert!(outcome.closed);
    assert!(outcome.replies.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
    assert!(outcome.frames.is_empty());
}

proptest! {
    /// With the HTTP hook, a plain request split anywhere is held for it, once, and
    /// nothing is answered by the loop; without it, the same request is refused.
    #[test]
    fn a_plain_request_goes_to_the_http_hook_however_split(
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let request = b"GET /healthz?x=1 HTTP/1.1\r\nHost: lb\r\n\r\n";
        let hooked = WebSocket::new(Settings { http_hook: true, ..Settings::default() });
        let outcome = run(&hooked, request, &cuts);
        prop_assert_eq!(outcome.frames, vec![tagged(tag::HTTP, b"/healthz")]);
        prop_assert!(outcome.replies.is_empty() && !outcome.closed);
        let plain = run(&WebSocket::new(Settings::default()), request, &cuts);
        prop_assert!(plain.closed && plain.frames.is_empty());
        prop_assert!(plain.replies.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
    }
}

#[test]
fn with_a_hook_the_request_is_held_until_the_answer_is_packed() {
    let ws = WebSocket::new(Settings {
        handshake_hook: true,
        ..Settings::default()
    });
    let mut state = ws.new_state();
    let mut sink = FrameSink::new();
    let mut wire = REQUEST.to_vec();
    wire.extend(client_frame(true, opcode::BINARY, b"early", [5, 6, 7, 8]));
    let used = ws.unpack(&mut state, &wire, &mut sink).unwrap();
    assert_eq!(used, REQUEST.len());
    assert_eq!(items(&mut sink), vec![tagged(tag::HANDSHAKE, b"/chat")]);
    // Held: nothing more is taken until the hook's answer.
    assert_eq!(ws.unpack(&mut state, &wire[used..], &mut sink).unwrap(), 0);
    let mut out = Vec::new();
    send(
        &ws,
        &mut state,
        &tagged(tag::ACCEPT, b"HTTP/1.1 101 ...\r\n\r\n"),
        &mut out,
    )
    .unwrap();
    assert_eq!(out, b"HTTP/1.1 101 ...\r\n\r\n");
    let rest = &wire[used..];
    assert_eq!(ws.unpack(&mut state, rest, &mut sink).unwrap(), rest.len());
    assert_eq!(items(&mut sink), vec![tagged(tag::BINARY, b"early")]);
}

#[test]
fn server_packing_text_binary_close() {
    let ws = WebSocket::new(Settings::default());
    let mut state = ws.new_state();
    let mut sink = FrameSink::new();
    ws.unpack(&mut state, REQUEST, &mut sink).unwrap();
    let mut out = Vec::new();
    send(&ws, &mut state, &tagged(tag::TEXT, b"hi"), &mut out).unwrap();
    send(&ws, &mut state, &tagged(tag::BINARY, &[0; 200]), &mut out).unwrap();
    send(
        &ws,
        &mut state,
        &tagged(tag::CLOSE, &[0x03, 0xe8]),
        &mut out,
    )
    .unwrap();
    send(
        &ws,
        &mut state,
        &tagged(tag::TEXT, b"after close"),
        &mut out,
    )
    .unwrap();
    let mut expected = vec![0x81, 2, b'h', b'i', 0x82, 126, 0, 200];
    expected.extend([0; 200]);
    expected.extend([0x88, 2, 0x03, 0xe8]);
    assert_eq!(out, expected); // nothing after the close frame
    let mut state = ws.new_state();
    ws.unpack(&mut state, REQUEST, &mut sink).unwrap();
    assert!(send(&ws, &mut state, &tagged(tag::CLOSE, &[0; 126]), &mut out).is_err());
}

/// The upgrade request offering permessage-deflate with a client window limit.
fn deflate_request() -> String {
    String::from_utf8(REQUEST.to_vec()).unwrap().replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
    )
}

/// A client's compressor, context kept, with the 12-bit window the server agrees to.
fn client_codec() -> pygev_core::websocket::deflate::Codec {
    use pygev_core::websocket::deflate::{Agreed, Codec};
    Codec::new(
        Agreed {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 12,
            client_max_window_bits: 12,
        },
        0,
    )
}

#[test]
fn a_large_compressed_message_is_inflated_in_bounded_steps_and_keeps_its_place() {
    let ws = WebSocket::new(Settings::default());
    let request = deflate_request();
    let mut wire = request.into_bytes();
    // 4 MiB of text (a zip bomb's shape: a few KiB on the wire), then a small message.
    let text = b"all work and no play ".repeat(200_000);
    let mut sender = client_codec();
    let compressed = sender.deflate(&text).unwrap();
    assert!(compressed.len() < 64 << 10);
    wire.extend(ws_util::client_frame(0xC1, &compressed, [1, 2, 3, 4]));
    wire.extend(client_frame(true, opcode::TEXT, b"after", [5, 6, 7, 8]));
    let outcome = run(&ws, &wire, &[]);
    // 4 MiB in steps of 256 KiB: many turns, and the messages in order.
    assert!(outcome.steps >= 15, "{} steps", outcome.steps);
    let messages: Vec<&Vec<u8>> = outcome.frames.iter().skip(1).collect(); // after OPEN
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0][0], tag::TEXT);
    assert_eq!(&messages[0][1..], &text[..]);
    assert_eq!(messages[1], &tagged(tag::TEXT, b"after"));
}

#[test]
fn a_park_due_while_a_message_is_inflated_in_steps_waits_for_its_end() {
    use std::time::{Duration, Instant};
    let ws = WebSocket::new(Settings {
        ping_interval: None,
        ..Settings::default()
    });
    let request = deflate_request();
    let mut sender = client_codec();
    let text = b"all work and no play ".repeat(100_000); // 2 MiB: 8 steps
    let mut wire = request.into_bytes();
    wire.extend(ws_util::client_frame(
        0xC1,
        &sender.deflate(&text).unwrap(),
        [1, 2, 3, 4],
    ));
    // The next message refers back into the first: the context must survive.
    let next = sender.deflate(&text[..1000]).unwrap();
    wire.extend(ws_util::client_frame(0xC1, &next, [5, 6, 7, 8]));

    let mut state = ws.new_state();
    let mut sink = FrameSink::new();
    let mut frames = Vec::new();
    let used = ws.unpack(&mut state, &wire, &mut sink).unwrap();
    let mut pending = wire[used..].to_vec();
    frames.extend(items(&mut sink));
    assert!(sink.take_again(), "more steps to go");
    // The loop paused the connection between two steps for longer than the park's delay.
    let later = Instant::now() + Duration::from_secs(5);
    ws.tick(&mut state, later, later, &mut FrameSink::new())
        .unwrap();
    loop {
        let used = ws.unpack(&mut state, &pending, &mut sink).unwrap();
        pending.drain(..used);
        frames.extend(items(&mut sink));
        if !sink.take_again() {
            break;
        }
    }
    let messages: Vec<&Vec<u8>> = frames.iter().skip(1).collect(); // after OPEN
    assert_eq!(messages.len(), 2, "{:?}", sink.take_actions());
    assert_eq!(&messages[0][1..], &text[..]);
    assert_eq!(&messages[1][1..], &text[..1000]);
}

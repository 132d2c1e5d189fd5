//! WebSocket frames: reassembly, every rule a client must follow, any split of the input.

mod ws_util;

use proptest::prelude::*;
use pygev_core::websocket::frames::{opcode, write_close, write_frame, Message};
use pygev_core::websocket::reader::Reader;
use ws_util::client_frame;

fn frame(fin: bool, kind: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(u8::from(fin) << 7 | kind, payload, [0x12, 0x34, 0x56, 0x78])
}

/// Reads `input` in pieces (cut points taken modulo its length), as a loop does.
fn read_all(input: &[u8], cuts: &[usize], max: usize) -> Result<Vec<Message>, u16> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    points.push(input.len());
    let mut reader = Reader::new(max, false);
    let mut out = Vec::new();
    let mut pending = Vec::new();
    let mut start = 0;
    for p in points {
        pending.extend_from_slice(&input[start..p]);
        start = p;
        let used = reader.read(&pending, &mut out).map_err(|v| v.code)?;
        pending.drain(..used);
    }
    assert!(pending.is_empty(), "{} bytes left over", pending.len());
    Ok(out)
}

fn read(input: &[u8]) -> Result<Vec<Message>, u16> {
    read_all(input, &[], 1 << 20)
}

#[test]
fn whole_and_fragmented_messages_with_control_frames_between() {
    let mut input = frame(true, opcode::TEXT, "héllo".as_bytes());
    input.extend(frame(false, opcode::BINARY, b"ab"));
    input.extend(frame(true, opcode::PING, b"are you there"));
    input.extend(frame(false, opcode::CONTINUATION, b"cd"));
    input.extend(frame(true, opcode::PONG, b""));
    input.extend(frame(true, opcode::CONTINUATION, b"ef"));
    input.extend(frame(true, opcode::TEXT, b""));
    input.extend(frame(true, opcode::CLOSE, &[0x03, 0xe8, b'b', b'y', b'e']));
    let expected = vec![
        Message::Text("héllo".as_bytes().to_vec()),
        Message::Ping(b"are you there".to_vec()),
        Message::Pong(vec![]),
        Message::Binary(b"abcdef".to_vec()),
        Message::Text(vec![]),
        Message::Close(Some((1000, "bye".into()))),
    ];
    assert_eq!(read(&input), Ok(expected.clone()));
    for at in 0..=input.len() {
        assert_eq!(
            read_all(&input, &[at], 1 << 20),
            Ok(expected.clone()),
            "split at {at}"
        );
    }
}

#[test]
fn a_character_split_across_fragments_is_fine() {
    let text = "€uro".as_bytes(); // the euro sign is 3 bytes
    let mut input = frame(false, opcode::TEXT, &text[..1]);
    input.extend(frame(false, opcode::CONTINUATION, &text[1..2]));
    input.extend(frame(true, opcode::CONTINUATION, &text[2..]));
    assert_eq!(read(&input), Ok(vec![Message::Text(text.to_vec())]));
}

#[test]
fn every_broken_rule_fails_with_its_close_code() {
    let masked_payload = |first: u8, payload: &[u8]| client_frame(first, payload, [1, 2, 3, 4]);
    let mut unmasked = vec![0x81, 0x02];
    unmasked.extend_from_slice(b"hi");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", unmasked, 1002),
        ("RSV2", masked_payload(0x80 | 0x20 | 0x1, b"x"), 1002),
        ("RSV3", masked_payload(0x80 | 0x10 | 0x2, b"x"), 1002),
        (
            "RSV1 without extension",
            masked_payload(0x80 | 0x40 | 0x1, b"x"),
            1002,
        ),
        ("reserved data opcode", frame(true, 0x3, b"x"), 1002),
        ("reserved control opcode", frame(true, 0xB, b"x"), 1002),
        (
            "control over 125",
            frame(true, opcode::PING, &[0; 126]),
            1002,
        ),
        ("fragmented control", frame(false, opcode::PING, b"x"), 1002),
        (
            "continuation alone",
            frame(true, opcode::CONTINUATION, b"x"),
            1002,
        ),
        (
            "text inside a fragmented message",
            [
                frame(false, opcode::TEXT, b"a"),
                frame(true, opcode::TEXT, b"b"),
            ]
            .concat(),
            1002,
        ),
        ("invalid UTF-8", frame(true, opcode::TEXT, &[0xff]), 1007),
        (
            "truncated UTF-8 at the end",
            frame(true, opcode::TEXT, &[0xe2, 0x82]),
            1007,
        ),
        (
            "close payload of 1 byte",
            frame(true, opcode::CLOSE, &[3]),
            1002,
        ),
        (
            "close code 1005",
            frame(true, opcode::CLOSE, &[0x03, 0xed]),
            1002,
        ),
        (
            "close code 999",
            frame(true, opcode::CLOSE, &[0x03, 0xe7]),
            1002,
        ),
        (
            "close code 5000",
            frame(true, opcode::CLOSE, &[0x13, 0x88]),
            1002,
        ),
        (
            "close reason not UTF-8",
            frame(true, opcode::CLOSE, &[0x03, 0xe8, 0xff]),
            1002,
        ),
        (
            "64-bit length with the top bit",
            vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
            1002,
        ),
    ];
    for (what, input, code) in cases {
        assert_eq!(read(&input), Err(code), "{what}");
    }
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let input = frame(true, opcode::CLOSE, &code.to_be_bytes());
        assert_eq!(
            read(&input),
            Ok(vec![Message::Close(Some((code, String::new())))])
        );
    }
}

#[test]
fn invalid_text_fails_fast_in_the_first_fragment() {
    // The bad byte is in a non-final fragment: no need to wait for the rest.
    let input = frame(false, opcode::TEXT, &[b'o', b'k', 0xc0, b'x']);
    assert_eq!(read(&input), Err(1007));
}

#[test]
fn a_message_over_the_limit_is_refused_from_the_header() {
    // Only the header of a 2,000-byte frame: refused before its payload arrives.
    let mut header = vec![0x82, 0x80 | 126];
    header.extend_from_slice(&2000u16.to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(read_all(&header, &[], 1000), Err(1009));
    // Fragments count together.
    let two = [
        frame(false, opcode::BINARY, &[0; 600]),
        frame(true, opcode::CONTINUATION, &[0; 600]),
    ];
    assert_eq!(read_all(&two.concat(), &[], 1000), Err(1009));
    assert!(read_all(&frame(true, opcode::BINARY, &[0; 1000]), &[], 1000).is_ok());
}

#[test]
fn server_frames_have_the_right_length_encoding() {
    for len in [0usize, 125, 126, 65535, 65536] {
        let mut out = Vec::new();
        write_frame(&mut out, opcode::BINARY, true, false, &vec![7; len]);
        let header = match len {
            n if n < 126 => 2,
            n if n <= 0xffff => 4,
            _ => 10,
        };
        assert_eq!(out.len(), header + len, "length {len}");
        assert_eq!(out[0], 0x82);
    }
    let mut close = Vec::new();
    write_close(&mut close, 1002, &"é".repeat(100)); // cut to 123 bytes on a boundary
    assert_eq!(close[1] as usize, close.len() - 2);
    assert!(close.len() - 2 <= 125);
    assert!(std::str::from_utf8(&close[4..]).is_ok());
}

proptest! {
    #[test]
    fn fragmented_messages_survive_any_split(
        messages in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..300), 1usize..5),
            1..8,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for (is_text, bytes, pieces) in messages {
            let payload = if is_text {
                String::from_utf8_lossy(&bytes).into_owned().into_bytes()
            } else {
                bytes
            };
            let kind = if is_text { opcode::TEXT } else { opcode::BINARY };
            let chunk = payload.len().div_ceil(pieces).max(1);
            let parts: Vec<&[u8]> = if payload.is_empty() {
                vec![&[]]
            } else {
                payload.chunks(chunk).collect()
            };
            for (i, part) in parts.iter().enumerate() {
                let first = if i == 0 { kind } else { opcode::CONTINUATION };
                input.extend(frame(i + 1 == parts.len(), first, part));
            }
            expected.push(if is_text { Message::Text(payload) } else { Message::Binary(payload) });
        }
        prop_assert_eq!(read_all(&input, &cuts, 1 << 20), Ok(expected));
    }

    #[test]
    fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..500)) {
        let mut reader = Reader::new(1000, true);
        let _ = reader.read(&data, &mut Vec::new());
    }
}

#[test]
fn nothing_after_the_close_frame_counts() {
    let mut input = frame(false, opcode::TEXT, b"unfinished ");
    input.extend(frame(true, opcode::CLOSE, &1000u16.to_be_bytes()));
    let close_end = input.len();
    input.extend(frame(true, opcode::CONTINUATION, b"message"));
    input.extend_from_slice(&[0xff; 8]); // garbage too
    let mut reader = Reader::new(1 << 20, false);
    let mut out = Vec::new();
    assert_eq!(reader.read(&input, &mut out), Ok(close_end));
    assert_eq!(out, vec![Message::Close(Some((1000, String::new())))]);
    assert_eq!(reader.read(&input[close_end..], &mut out), Ok(0));
}

#[test]
fn a_compressed_message_without_the_extension_is_a_protocol_error() {
    let mut reader = Reader::new(1 << 20, true);
    let input = client_frame(0x80 | 0x40 | opcode::TEXT, b"x", [9, 9, 9, 9]);
    assert_eq!(reader.read(&input, &mut Vec::new()).unwrap_err().code, 1002);
}

#[test]
fn bad_utf8_fails_before_the_rest_of_its_frame_arrives() {
    let mut payload = "ok so far, ".as_bytes().to_vec();
    payload.push(0xff);
    payload.extend(std::iter::repeat_n(b'x', 1000));
    let whole = frame(true, opcode::TEXT, &payload);
    let mut reader = Reader::new(1 << 20, false);
    let mut out = Vec::new();
    // Up to just before the bad byte: fine, nothing taken.
    assert_eq!(reader.read(&whole[..8 + 11], &mut out), Ok(0));
    // The bad byte arrives, the frame is far from complete: refused now.
    let err = reader.read(&whole[..8 + 13], &mut out).unwrap_err();
    assert_eq!(err.code, 1007);
    // A character split across two fragments and cut mid-frame is not an error.
    let mut reader = Reader::new(1 << 20, false);
    let mut input = frame(false, opcode::TEXT, &"é".as_bytes()[..1]);
    let cont = frame(
        true,
        opcode::CONTINUATION,
        &[&"é".as_bytes()[1..], b"and more"].concat(),
    );
    input.extend_from_slice(&cont[..cont.len() - 4]);
    assert_eq!(reader.read(&input, &mut out).map_err(|v| v.code), Ok(7));
}

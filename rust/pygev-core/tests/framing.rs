//! The native framings (length-prefix, delimited): every split of the input gives the same
//! frames, limits are enforced before buffers grow, packing and unpacking agree.

use proptest::prelude::*;
use pygev_core::{ByteOrder, Delimited, FrameSink, LengthPrefix, Protocol, ProtocolError};

/// Feeds `chunks` one after another the way a loop does (leftover kept, offered again with
/// the next bytes) and returns the frames found, or the first error.
fn feed(protocol: &dyn Protocol, chunks: &[&[u8]]) -> Result<(Vec<Vec<u8>>, usize), ProtocolError> {
    let mut state = protocol.new_state();
    let mut sink = FrameSink::new();
    let mut leftover = Vec::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        leftover.extend_from_slice(chunk);
        let used = protocol.unpack(&mut state, &leftover, &mut sink)?;
        assert!(used <= leftover.len());
        leftover.drain(..used);
        frames.extend(sink.drain());
    }
    Ok((frames, leftover.len()))
}

fn pack_all(protocol: &dyn Protocol, payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut state = protocol.new_state();
    let mut wire = Vec::new();
    for p in payloads {
        protocol.check_payload(p).unwrap();
        protocol.pack(&mut state, p, &mut wire).unwrap();
    }
    wire
}

/// Splits `wire` at the given cut points (taken modulo its length, sorted).
fn cut<'a>(wire: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for p in points {
        pieces.push(&wire[start..p]);
        start = p;
    }
    pieces.push(&wire[start..]);
    pieces
}

fn order() -> impl Strategy<Value = ByteOrder> {
    prop_oneof![Just(ByteOrder::Big), Just(ByteOrder::Little)]
}

proptest! {
    #[test]
    fn length_prefix_frames_survive_any_split(
        header in prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
        order in order(),
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20),
        cuts in prop::collection::vec(any::<usize>(), 0..30),
    ) {
        let limit = if header == 1 { 255 } else { 300 };
        let framing = LengthPrefix::new(header, order, limit).unwrap();
        let mut payloads = payloads;
        payloads.iter_mut().for_each(|p| p.truncate(limit));
        let wire = pack_all(&framing, &payloads);
        let (frames, rest) = feed(&framing, &cut(&wire, &cuts)).unwrap();
        prop_assert_eq!(frames, payloads);
        prop_assert_eq!(rest, 0);
    }

    #[test]
    fn delimited_frames_survive_any_split(
        delimiter in prop::collection::vec(any::<u8>(), 1..=16),
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..20),
        cuts in prop::collection::vec(any::<usize>(), 0..30),
    ) {
        let framing = Delimited::new(&delimiter, 200).unwrap();
        let payloads: Vec<Vec<u8>> =
            payloads.into_iter().filter(|p| framing.check_payload(p).is_ok()).collect();
        let wire = pack_all(&framing, &payloads);
        let (frames, rest) = feed(&framing, &cut(&wire, &cuts)).unwrap();
        prop_assert_eq!(frames, payloads);
        prop_assert_eq!(rest, 0);
    }

    #[test]
    fn delimited_check_payload_accepts_exactly_what_unpacks_back(
        delimiter in prop::collection::vec(0u8..3, 1..=4),
        payload in prop::collection::vec(0u8..3, 0..12),
    ) {
        // A tiny alphabet makes delimiters inside payloads, and overlaps with the appended
        // delimiter, common.
        let framing = Delimited::new(&delimiter, 64).unwrap();
        let mut wire = Vec::new();
        framing.pack(&mut framing.new_state(), &payload, &mut wire).unwrap();
        let (frames, rest) = feed(&framing, &[&wire]).unwrap();
        let round_trips = frames == vec![payload.clone()] && rest == 0;
        prop_assert_eq!(framing.check_payload(&payload).is_ok(), round_trips);
    }

    #[test]
    fn parsers_never_panic_on_garbage(
        data in prop::collection::vec(any::<u8>(), 0..2000),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
        header in prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
        order in order(),
    ) {
        let pieces = cut(&data, &cuts);
        let _ = feed(&LengthPrefix::new(header, order, 100).unwrap(), &pieces);
        let _ = feed(&Delimited::new(b"\r\n", 100).unwrap(), &pieces);
    }
}

#[test]
fn every_split_point_of_a_glued_stream() {
    let payloads: Vec<Vec<u8>> = (0..40).map(|i| vec![i as u8; i % 7]).collect();
    for framing in [
        Box::new(LengthPrefix::new(2, ByteOrder::Little, 100).unwrap()) as Box<dyn Protocol>,
        Box::new(Delimited::new(b"\r\n", 100).unwrap()),
    ] {
        let wire = pack_all(framing.as_ref(), &payloads);
        for at in 0..=wire.len() {
            let (frames, _) = feed(framing.as_ref(), &[&wire[..at], &wire[at..]]).unwrap();
            assert_eq!(frames, payloads, "{} split at {at}", framing.name());
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(feed(framing.as_ref(), &bytes).unwrap().0, payloads);
    }
}

#[test]
fn length_prefix_refuses_a_long_frame_from_its_header_alone() {
    let framing = LengthPrefix::new(4, ByteOrder::Big, 1000).unwrap();
    // Only the header of a 1001-byte frame has arrived: refused now, nothing buffered.
    let err = feed(&framing, &[b"\x00\x00\x03\xe9"]).unwrap_err();
    assert_eq!(
        err.message(),
        "pygev: frame declares 1001 bytes, over max_frame_size 1000"
    );
    // Exactly max_frame_size, and empty frames, are fine.
    let payloads = vec![vec![7u8; 1000], vec![], vec![1]];
    let wire = pack_all(&framing, &payloads);
    assert_eq!(feed(&framing, &[&wire]).unwrap().0, payloads);
}

#[test]
fn length_prefix_checks_its_arguments_and_header_capacity() {
    assert!(LengthPrefix::new(3, ByteOrder::Big, 10).is_err());
    assert!(LengthPrefix::new(1, ByteOrder::Big, 256).is_err());
    let one = LengthPrefix::new(1, ByteOrder::Big, 255).unwrap();
    assert!(one.check_payload(&[0; 255]).is_ok());
    assert!(one.check_payload(&[0; 256]).is_err());
    let eight = LengthPrefix::new(8, ByteOrder::Little, usize::MAX).unwrap();
    let (frames, rest) = feed(&eight, &[&[5, 0, 0, 0, 0, 0, 0, 0, b'h', b'e']]).unwrap();
    assert!(frames.is_empty());
    assert_eq!(rest, 10);
    // A declared length near u64::MAX must not overflow anything.
    let (frames, _) = feed(&eight, &[&[0xff; 8]]).unwrap();
    assert!(frames.is_empty());
}

#[test]
fn delimited_refuses_a_frame_without_delimiter_past_the_limit() {
    let framing = Delimited::new(b"\r\n", 10).unwrap();
    // Ten bytes, then the delimiter: exactly max_frame_size.
    let (frames, _) = feed(&framing, &[b"0123456789", b"\r\n"]).unwrap();
    assert_eq!(frames, vec![b"0123456789".to_vec()]);
    // Eleven bytes and a lone '\r': whatever follows, the frame is over the limit.
    let err = feed(&framing, &[b"0123456789A", b"\r"]).unwrap_err();
    assert!(err
        .message()
        .contains("no delimiter within max_frame_size 10"));
    // A frame found whole in one read is held to the same limit.
    let err = feed(&framing, &[b"0123456789AB\r\n"]).unwrap_err();
    assert!(err.message().contains("max_frame_size 10"));
    assert!(Delimited::new(b"", 10).is_err());
    assert!(Delimited::new(&[0; 17], 10).is_err());
}

#[test]
fn delimited_refuses_payloads_the_peer_would_split() {
    let crlf = Delimited::new(b"\r\n", 100).unwrap();
    assert!(crlf.check_payload(b"one\r\ntwo").is_err());
    assert!(crlf.check_payload(b"ends with cr\r").is_ok()); // "\r\r\n" still ends right
    let aa = Delimited::new(b"aa", 100).unwrap();
    assert!(aa.check_payload(b"xa").is_err()); // "xaaa" would end after "x"
    assert!(aa.check_payload(b"ax").is_ok());
}

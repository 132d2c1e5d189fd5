//! LengthPrefix over arbitrary bytes split at arbitrary points: never panics, never takes
//! more than it was given, refuses declared lengths over the limit, and the frames it
//! returns re-pack into exactly the bytes it consumed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pygev_core::{ByteOrder, FrameSink, LengthPrefix, Protocol};

fuzz_target!(|input: &[u8]| {
    let Some((&config, rest)) = input.split_first() else {
        return;
    };
    let Some((&cut_seed, data)) = rest.split_first() else {
        return;
    };
    let header = [1, 2, 4, 8][(config & 3) as usize];
    let order = if config & 4 == 0 {
        ByteOrder::Big
    } else {
        ByteOrder::Little
    };
    let max = if header == 1 { 200 } else { 1000 };
    let framing = LengthPrefix::new(header, order, max).unwrap();
    let mut state = framing.new_state();
    let mut sink = FrameSink::new();
    let mut pending = Vec::new();
    let mut consumed = Vec::new();
    let mut frames = Vec::new();
    let step = 1 + cut_seed as usize;
    for chunk in data.chunks(step) {
        pending.extend_from_slice(chunk);
        match framing.unpack(&mut state, &pending, &mut sink) {
            Ok(used) => {
                assert!(used <= pending.len());
                consumed.extend(pending.drain(..used));
                frames.extend(sink.drain());
            }
            Err(err) => {
                assert!(err.message().contains("over max_frame_size"));
                break;
            }
        }
    }
    let mut repacked = Vec::new();
    for frame in &frames {
        assert!(frame.len() <= max);
        framing.pack(&mut state, frame, &mut repacked).unwrap();
    }
    assert_eq!(repacked, consumed);
});

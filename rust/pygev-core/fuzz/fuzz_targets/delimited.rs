//! Delimited over arbitrary bytes split at arbitrary points: never panics, frames never
//! contain the delimiter nor exceed the limit, and frames joined with the delimiter are
//! exactly the bytes consumed; whatever is left has no delimiter in it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pygev_core::{Delimited, FrameSink, Protocol};

fuzz_target!(|input: &[u8]| {
    let Some((&config, rest)) = input.split_first() else {
        return;
    };
    let dlen = 1 + (config & 0x0f) as usize;
    if rest.len() < dlen + 1 {
        return;
    }
    let (delimiter, rest) = rest.split_at(dlen);
    let (&cut_seed, data) = rest.split_first().unwrap();
    let max = 64;
    let framing = Delimited::new(delimiter, max).unwrap();
    let mut state = framing.new_state();
    let mut sink = FrameSink::new();
    let mut pending = Vec::new();
    let mut consumed = Vec::new();
    let mut frames = Vec::new();
    let mut failed = false;
    for chunk in data.chunks(1 + cut_seed as usize) {
        pending.extend_from_slice(chunk);
        match framing.unpack(&mut state, &pending, &mut sink) {
            Ok(used) => {
                assert!(used <= pending.len());
                consumed.extend(pending.drain(..used));
                frames.extend(sink.drain());
            }
            Err(err) => {
                assert!(err.message().contains("max_frame_size"));
                failed = true;
                break;
            }
        }
    }
    let mut joined = Vec::new();
    for frame in &frames {
        assert!(frame.len() <= max);
        assert!(!frame.windows(dlen).any(|w| w == delimiter));
        joined.extend_from_slice(frame);
        joined.extend_from_slice(delimiter);
    }
    assert_eq!(joined, consumed);
    if !failed {
        assert!(!pending.windows(dlen).any(|w| w == delimiter));
    }
});

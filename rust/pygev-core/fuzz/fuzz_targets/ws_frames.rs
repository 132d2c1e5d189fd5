//! The WebSocket frame reader over arbitrary bytes split at arbitrary points: never panics,
//! never takes more than it was given, and reading in pieces gives exactly what reading the
//! whole input at once gives (same messages, same verdict).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pygev_core::websocket::frames::Message;
use pygev_core::websocket::reader::Reader;

fn read(data: &[u8], step: usize) -> (Vec<Message>, Option<u16>) {
    let mut reader = Reader::new(4096, false);
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for chunk in data.chunks(step) {
        pending.extend_from_slice(chunk);
        match reader.read(&pending, &mut out) {
            Ok(used) => {
                assert!(used <= pending.len());
                pending.drain(..used);
            }
            Err(violation) => return (out, Some(violation.code)),
        }
    }
    (out, None)
}

fuzz_target!(|input: &[u8]| {
    let Some((&step, data)) = input.split_first() else {
        return;
    };
    let whole = read(data, data.len().max(1));
    let pieces = read(data, 1 + step as usize);
    assert_eq!(whole, pieces);
});

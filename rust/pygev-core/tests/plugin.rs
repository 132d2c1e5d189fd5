//! A framing built as a plugin (the C ABI of pygev-plugin, run by `PluginProtocol`) behaves
//! exactly like its built-in twin: same frames, same verdicts, same packing, any input.

use proptest::prelude::*;
use pygev_core::plugin::PluginProtocol;
use pygev_core::{ByteOrder, FrameSink, LengthPrefix, Protocol};

fn plugin(header: usize, big: bool, max: u64, panic_on: Option<Vec<u8>>) -> PluginProtocol {
    let framing = pygev_plugin::reference::LengthPrefix::new(header, big, max, panic_on).unwrap();
    // The table lives as long as the protocol: leaked on purpose (a test).
    let table: &'static _ = Box::leak(Box::new(pygev_plugin::table(framing)));
    // SAFETY: a valid table that is never freed.
    unsafe { PluginProtocol::from_table(table, Box::new(())) }.unwrap()
}

/// Feeds `input` in pieces, as a loop does: the frames, and the error (its message's tail).
fn run(protocol: &dyn Protocol, input: &[u8], cuts: &[usize]) -> (Vec<Vec<u8>>, Option<String>) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    points.push(input.len());
    let mut state = protocol.new_state();
    let mut sink = FrameSink::new();
    let mut pending = Vec::new();
    let mut frames = Vec::new();
    let mut start = 0;
    for p in points {
        pending.extend_from_slice(&input[start..p]);
        start = p;
        match protocol.unpack(&mut state, &pending, &mut sink) {
            Ok(used) => {
                pending.drain(..used);
                frames.extend(sink.drain());
            }
            Err(err) => {
                frames.extend(sink.drain());
                // The wording differs by prefix only ("pygev: plugin ... failed in unpack:").
                let message = err.message();
                let tail = message[message.find("frame declares").unwrap_or(0)..].to_string();
                return (frames, Some(tail));
            }
        }
    }
    (frames, None)
}

proptest! {
    #[test]
    fn the_plugin_twin_splits_any_input_like_the_builtin(
        header in prop::sample::select(vec![1usize, 2, 4, 8]),
        big in any::<bool>(),
        max in 1u64..256,
        input in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let order = if big { ByteOrder::Big } else { ByteOrder::Little };
        let builtin = LengthPrefix::new(header, order, max as usize).unwrap();
        let twin = plugin(header, big, max, None);
        prop_assert_eq!(run(&builtin, &input, &cuts), run(&twin, &input, &cuts));
    }

    #[test]
    fn the_plugin_twin_packs_and_checks_like_the_builtin(
        header in prop::sample::select(vec![1usize, 2]),
        big in any::<bool>(),
        payload in prop::collection::vec(any::<u8>(), 0..70000),
    ) {
        let order = if big { ByteOrder::Big } else { ByteOrder::Little };
        let max = (1usize << (8 * header)) - 1; // what the header can declare
        let builtin = LengthPrefix::new(header, order, max).unwrap();
        let twin = plugin(header, big, max as u64, None);
        prop_assert_eq!(builtin.check_payload(&payload).is_ok(), twin.check_payload(&payload).is_ok());
        if builtin.check_payload(&payload).is_ok() {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            builtin.pack(&mut None, &payload, &mut a).unwrap();
            twin.pack(&mut twin.new_state(), &payload, &mut b).unwrap();
            prop_assert_eq!(a, b);
        }
    }
}

#[test]
fn panics_become_errors_with_their_message() {
    let twin = plugin(4, true, 1 << 20, Some(b"boom".to_vec()));
    let mut state = twin.new_state();
    let mut sink = FrameSink::new();
    let err = twin
        .unpack(&mut state, b"\x00\x00\x00\x04boom", &mut sink)
        .unwrap_err();
    assert!(
        err.message().contains("panicked in unpack"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("asked to panic"),
        "{}",
        err.message()
    );
    let err = twin.pack(&mut None, b"boom", &mut Vec::new()).unwrap_err();
    assert!(
        err.message().contains("panicked in pack"),
        "{}",
        err.message()
    );
    // The plugin still works afterwards.
    let used = twin
        .unpack(&mut state, b"\x00\x00\x00\x02ok", &mut sink)
        .unwrap();
    assert_eq!(used, 6);
}

#[test]
fn bad_tables_are_refused_before_anything_else_is_read() {
    let mut table = pygev_plugin::table(
        pygev_plugin::reference::LengthPrefix::new(4, true, 100, None).unwrap(),
    );
    let check = |table: &pygev_plugin::ProtocolTable| {
        // SAFETY: a valid table (only its head fields are altered).
        unsafe { PluginProtocol::from_table(table, Box::new(())) }.map(|_| ())
    };
    assert!(check(&table).is_ok());
    table.abi_version = 2;
    assert!(check(&table).unwrap_err().contains("ABI version 2"));
    table.abi_version = pygev_plugin::ABI_VERSION;
    table.size = 8;
    assert!(check(&table).unwrap_err().contains("has 8 bytes"));
    table.size = std::mem::size_of::<pygev_plugin::ProtocolTable>();
    table.magic = 1;
    assert!(check(&table)
        .unwrap_err()
        .contains("not a pygev protocol table"));
    // SAFETY: null is allowed and refused.
    assert!(unsafe { PluginProtocol::from_table(std::ptr::null(), Box::new(())) }.is_err());
    table.magic = pygev_plugin::MAGIC;
    // SAFETY: freed once, unused afterwards.
    unsafe { pygev_plugin::free_table(&table) };
}

#[test]
fn a_table_missing_a_function_is_refused() {
    let table = pygev_plugin::table(
        pygev_plugin::reference::LengthPrefix::new(4, true, 100, None).unwrap(),
    );
    const SIZE: usize = std::mem::size_of::<pygev_plugin::ProtocolTable>();
    // A C plugin's table with `check` left NULL: the same bytes, that field zeroed.
    // SAFETY: reading a table's bytes (plain data).
    let mut bytes: [u8; SIZE] = unsafe { std::mem::transmute_copy(&table) };
    let at = std::mem::offset_of!(pygev_plugin::ProtocolTable, check);
    bytes[at..at + std::mem::size_of::<usize>()].fill(0);
    // SAFETY: readable memory of a version-1 table's size; its `check` is null.
    let refused = unsafe { PluginProtocol::from_table(bytes.as_ptr().cast(), Box::new(())) };
    assert_eq!(
        refused.unwrap_err(),
        "pygev: the plugin's table has no check function"
    );
    // SAFETY: freed once, unused afterwards.
    unsafe { pygev_plugin::free_table(&table) };
}

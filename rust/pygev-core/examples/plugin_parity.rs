//! Plugin parity, in process: the built-in `LengthPrefix` against its twin built as a plugin
//! (`pygev_plugin::reference::LengthPrefix` behind the C ABI, run by `PluginProtocol`), on
//! the work a loop and the dispatcher do: unpack 64 KiB reads of 64-byte frames, and pack
//! replies. Rounds alternate the two, and the table gives medians (ns per frame).
//!
//!     cargo run --release -p pygev-core --example plugin_parity [ROUNDS]

use std::time::Instant;

use pygev_core::plugin::PluginProtocol;
use pygev_core::{ByteOrder, FrameSink, LengthPrefix, Protocol};

const FRAMES: usize = 1 << 20;
const PAYLOAD: usize = 60;
const READ: usize = 64 << 10;

fn unpack_all(protocol: &dyn Protocol, wire: &[u8]) -> (f64, usize) {
    let mut state = protocol.new_state();
    let mut sink = FrameSink::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut frames = 0;
    let start = Instant::now();
    for chunk in wire.chunks(READ) {
        pending.extend_from_slice(chunk);
        let used = protocol.unpack(&mut state, &pending, &mut sink).unwrap();
        pending.drain(..used);
        frames += sink.len();
        std::hint::black_box(sink.take());
    }
    (start.elapsed().as_nanos() as f64 / frames as f64, frames)
}

fn pack_all(protocol: &dyn Protocol, payload: &[u8]) -> f64 {
    let mut out = Vec::with_capacity(READ * 2);
    let start = Instant::now();
    for i in 0..FRAMES {
        protocol.pack(&mut None, payload, &mut out).unwrap();
        if i % 1000 == 999 {
            std::hint::black_box(&out);
            out.clear();
        }
    }
    start.elapsed().as_nanos() as f64 / FRAMES as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(9);
    let payload = vec![7u8; PAYLOAD];
    let mut wire = Vec::with_capacity(FRAMES * (PAYLOAD + 4));
    for _ in 0..FRAMES {
        wire.extend_from_slice(&(PAYLOAD as u32).to_be_bytes());
        wire.extend_from_slice(&payload);
    }
    let builtin = LengthPrefix::new(4, ByteOrder::Big, 16 << 20).unwrap();
    let framing = pygev_plugin::reference::LengthPrefix::new(4, true, 16 << 20, None).unwrap();
    let table = Box::new(pygev_plugin::table(framing));
    // SAFETY: `table` is a valid table made by pygev_plugin and outlives `plugin`.
    let plugin =
        unsafe { PluginProtocol::from_table(&*table, Box::new(())) }.expect("a valid table");

    let (mut bu, mut pu, mut bp, mut pp) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        // Alternate which goes first, so drift favours neither.
        let order: [&dyn Protocol; 2] = if round % 2 == 0 {
            [&builtin, &plugin]
        } else {
            [&plugin, &builtin]
        };
        for protocol in order {
            let (unpack, frames) = unpack_all(protocol, &wire);
            assert_eq!(frames, FRAMES);
            let pack = pack_all(protocol, &payload);
            if protocol.name() == builtin.name() {
                bu.push(unpack);
                bp.push(pack);
            } else {
                pu.push(unpack);
                pp.push(pack);
            }
        }
    }
    let (bu, pu, bp, pp) = (median(bu), median(pu), median(bp), median(pp));
    println!(
        "plugin parity: {FRAMES} frames of {PAYLOAD} B, {READ} B reads, median of {rounds} rounds"
    );
    println!(
        "{:<22} {:>12} {:>12} {:>16}",
        "ns per frame", "built-in", "plugin", "plugin/built-in"
    );
    println!(
        "{:<22} {:>12.2} {:>12.2} {:>15.2}x",
        "unpack (loop)",
        bu,
        pu,
        pu / bu
    );
    println!(
        "{:<22} {:>12.2} {:>12.2} {:>15.2}x",
        "pack (dispatcher)",
        bp,
        pp,
        pp / bp
    );
    drop(plugin);
    // SAFETY: nothing uses the table any more.
    unsafe { pygev_plugin::free_table(&table) };
}

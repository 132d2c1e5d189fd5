//! `CloseReason`: each way a connection ends is counted under its reason, and the counts
//! add up to `closed`.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use pygev_core::{
    ByteOrder, CloseReason, Command, Config, LengthPrefix, LoopHandle, LoopStatsSnapshot,
};
use util::Harness;

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

fn one_loop() -> Config {
    Config {
        num_loops: 1,
        ..Config::default()
    }
}

fn totals(loops: &[Arc<LoopHandle>]) -> LoopStatsSnapshot {
    let mut total = LoopStatsSnapshot::default();
    for handle in loops {
        total.add(&handle.stats().snapshot());
    }
    total
}

fn closed_for(h: &Harness, reason: CloseReason) -> u64 {
    totals(h.running.loops()).closed_by_reason[reason.index()]
}

/// Where the one open connection is: its loop, token and id.
fn only_connection(h: &Harness) -> (u32, u32, u64) {
    let (&(loop_index, token), (id, _)) = h.conns.iter().next().unwrap();
    (loop_index, token, *id)
}

/// Waits until the server saw `n` connections close.
fn await_closes(h: &mut Harness, n: usize) {
    h.pump_until(Duration::from_secs(10), |h| {
        h.log.iter().filter(|l| l.starts_with("closed")).count() >= n
    });
}

#[test]
fn a_peer_eof_counts_as_peer() {
    let mut h = Harness::start(one_loop());
    let client = connect(h.port());
    h.pump_until(Duration::from_secs(10), |h| h.conns.len() == 1);
    drop(client);
    await_closes(&mut h, 1);
    assert_eq!(closed_for(&h, CloseReason::Peer), 1);
    h.shutdown();
}

#[test]
fn a_close_the_dispatcher_asks_for_counts_as_local() {
    let mut h = Harness::start(one_loop());
    let mut client = connect(h.port());
    h.pump_until(Duration::from_secs(10), |h| h.conns.len() == 1);
    let (loop_index, token, id) = only_connection(&h);
    h.running.loops()[loop_index as usize]
        .post(Command::Close { token, id })
        .unwrap();
    await_closes(&mut h, 1);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert_eq!(closed_for(&h, CloseReason::Local), 1);
    h.shutdown();
}

#[test]
fn an_abort_counts_as_the_sender_says() {
    let mut h = Harness::start(one_loop());
    let _client = connect(h.port());
    h.pump_until(Duration::from_secs(10), |h| h.conns.len() == 1);
    let (loop_index, token, id) = only_connection(&h);
    h.running.loops()[loop_index as usize]
        .post(Command::Abort {
            token,
            id,
            reason: None,
            counted_as: CloseReason::Timeout,
        })
        .unwrap();
    await_closes(&mut h, 1);
    assert_eq!(closed_for(&h, CloseReason::Timeout), 1);
    h.shutdown();
}

#[test]
fn an_idle_timeout_counts_as_idle() {
    let mut h = Harness::start(Config {
        idle_timeout: Some(Duration::from_millis(100)),
        ..one_loop()
    });
    let mut client = connect(h.port());
    await_closes(&mut h, 1);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert_eq!(closed_for(&h, CloseReason::Idle), 1);
    h.shutdown();
}

#[test]
fn a_frame_over_the_limit_counts_as_protocol() {
    let framing = LengthPrefix::new(4, ByteOrder::Big, 16).unwrap();
    let mut h = Harness::start_with(one_loop(), Arc::new(framing));
    let mut client = connect(h.port());
    client.write_all(&1000u32.to_be_bytes()).unwrap();
    await_closes(&mut h, 1);
    assert_eq!(closed_for(&h, CloseReason::Protocol), 1);
    h.shutdown();
}

#[test]
fn stopping_counts_as_stop_and_the_reasons_add_up() {
    let mut h = Harness::start(Config {
        num_loops: 2,
        ..Config::default()
    });
    let mut clients: Vec<TcpStream> = (0..4).map(|_| connect(h.port())).collect();
    h.pump_until(Duration::from_secs(10), |h| h.conns.len() == 4);
    drop(clients.remove(0));
    await_closes(&mut h, 1);
    let loops: Vec<Arc<LoopHandle>> = h.running.loops().to_vec();
    h.shutdown();
    drop(clients);
    let total = totals(&loops);
    assert_eq!(total.closed, 4);
    assert_eq!(total.closed_by_reason[CloseReason::Peer.index()], 1);
    assert_eq!(total.closed_by_reason[CloseReason::Stop.index()], 3);
    assert_eq!(total.closed_by_reason.iter().sum::<u64>(), total.closed);
}

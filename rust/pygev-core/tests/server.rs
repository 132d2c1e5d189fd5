//! `Server`: accept, echo through the dispatch queue, EOF handling, shutdown.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use pygev_core::{Command, Config, Strategy};
use util::Harness;

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

#[test]
fn echoes_through_the_dispatch_queue_on_every_loop() {
    for (reuse_port, strategy) in [
        (false, Strategy::RoundRobin),
        (false, Strategy::LeastConnections),
        (true, Strategy::RoundRobin),
    ] {
        let mut h = Harness::start(Config {
            num_loops: 3,
            reuse_port,
            strategy,
            ..Config::default()
        });
        let mut clients: Vec<TcpStream> = (0..12).map(|_| connect(h.port())).collect();
        for (i, c) in clients.iter_mut().enumerate() {
            c.write_all(format!("hello {i}").as_bytes()).unwrap();
        }
        let expected: Vec<String> = (0..12).map(|i| format!("hello {i}")).collect();
        let mut got = vec![Vec::new(); clients.len()];
        h.pump_until(Duration::from_secs(10), |_| {
            for (i, c) in clients.iter_mut().enumerate() {
                c.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 64];
                if let Ok(n) = c.read(&mut buf) {
                    got[i].extend_from_slice(&buf[..n]);
                }
                c.set_nonblocking(false).unwrap();
            }
            got.iter()
                .zip(&expected)
                .all(|(g, e)| g.as_slice() == e.as_bytes())
        });
        let log = h.shutdown();
        assert_eq!(log.iter().filter(|l| l.starts_with("connect")).count(), 12);
        assert_eq!(log.iter().filter(|l| l.starts_with("closed")).count(), 12);
        for mut c in clients {
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).unwrap(); // the server closed it: EOF
            assert!(rest.is_empty());
        }
    }
}

#[test]
fn peer_eof_closes_after_the_reply_is_written() {
    let mut h = Harness::start(Config::default());
    let mut client = connect(h.port());
    client.write_all(b"last words").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    h.pump_until(Duration::from_secs(10), |h| {
        h.log.iter().any(|l| l.starts_with("closed"))
    });
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"last words");
    h.shutdown();
}

#[test]
fn shutdown_flushes_output_before_closing() {
    let mut h = Harness::start(Config::default());
    let mut client = connect(h.port());
    let payload: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    // The echo of 4 MiB cannot fit in socket buffers while the client does not read.
    let writer = {
        let mut c = client.try_clone().unwrap();
        let payload = payload.clone();
        std::thread::spawn(move || c.write_all(&payload).unwrap())
    };
    h.pump_until(Duration::from_secs(10), |h| {
        let s = h.running.loops()[0].stats().snapshot();
        s.bytes_in == payload.len() as u64
    });
    writer.join().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        got
    });
    let log = h.shutdown();
    assert!(log.iter().any(|l| l.starts_with("closed")));
    assert_eq!(reader.join().unwrap(), payload);
}

#[test]
fn bind_reports_address_in_use_and_bad_addresses() {
    let h = Harness::start(Config::default());
    let taken = format!("127.0.0.1:{}", h.port());
    let err = pygev_core::Server::bind(
        &taken,
        Config::default(),
        std::sync::Arc::new(pygev_core::Raw),
    )
    .err()
    .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    let err = pygev_core::parse_inet("no-port-here").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(
        pygev_core::parse_inet(":1833").unwrap(),
        "0.0.0.0:1833".parse().unwrap()
    );
    h.shutdown();
}

#[test]
fn tiny_batches_still_serve_every_connection_in_turn() {
    // With a batch of one byte, every read fills the batch and the other readable
    // connections wait for later iterations. Connections that never stop sending must not
    // starve one that sent a single message.
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut h = Harness::start(Config {
        batch_bytes: 1,
        ..Config::default()
    });
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut hogs = Vec::new();
    for _ in 0..4 {
        let client = connect(h.port());
        let mut writer_end = client.try_clone().unwrap();
        let mut reader_end = client;
        let stop_writing = stop.clone();
        hogs.push(std::thread::spawn(move || {
            let chunk = vec![7u8; 64 << 10];
            while !stop_writing.load(Ordering::SeqCst) {
                if writer_end.write_all(&chunk).is_err() {
                    break;
                }
            }
        }));
        hogs.push(std::thread::spawn(move || {
            let mut sink = vec![0u8; 64 << 10];
            while matches!(reader_end.read(&mut sink), Ok(n) if n > 0) {}
        }));
    }
    let mut victim = connect(h.port());
    h.pump_until(Duration::from_secs(5), |h| {
        h.log.iter().filter(|l| l.starts_with("connect")).count() == 5
    });
    h.pump_until(Duration::from_secs(1), |h| {
        h.running.loops()[0].stats().snapshot().bytes_in > 4 << 20
    });
    victim.write_all(b"are you there").unwrap();
    victim.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    h.pump_until(Duration::from_secs(10), |_| {
        let mut buf = [0u8; 64];
        if let Ok(n) = victim.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        got == b"are you there"
    });
    stop.store(true, Ordering::SeqCst);
    h.shutdown();
    for hog in hogs {
        hog.join().unwrap();
    }
}

/// A loop that has ended refuses commands (they would pile up in its mailbox) and has
/// closed its waker's descriptor.
#[test]
fn posting_to_an_ended_loop_fails_and_keeps_nothing() {
    let h = Harness::start(Config::default());
    let handle = h.running.loops()[0].clone();
    assert!(!handle.is_closed());
    h.shutdown();
    assert!(handle.is_closed());
    let err = handle.post(Command::Resume).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected);
    let mut commands = vec![Command::Resume, Command::Quiesce];
    assert!(handle.post_all(&mut commands).is_err());
    assert!(commands.is_empty());
}

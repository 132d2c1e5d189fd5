//! The dialer: outgoing connections from the loops, connected, refused, timed out, and
//! given up at stop; once connected, served as accepted ones.

mod util;

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use std::io::{Read, Write};
use std::sync::Arc;

use pygev_core::{Address, ByteOrder, Command, Config, LengthPrefix, MessageKind};
use util::Harness;

const WAIT: Duration = Duration::from_secs(10);

fn dial(h: &Harness, address: Address, timeout: Duration) -> u64 {
    let id = h.running.next_id();
    h.running.connect(id, address, timeout, None, None).unwrap();
    id
}

#[test]
fn a_dialed_connection_talks_like_an_accepted_one() {
    let mut target = Harness::start(Config::default());
    let mut dialer = Harness::dialer(Config {
        num_loops: 2,
        ..Config::default()
    });
    let address = Address::Inet(([127, 0, 0, 1], target.port()).into());
    let ids: Vec<u64> = (0..4)
        .map(|_| dial(&dialer, address.clone(), WAIT))
        .collect();
    dialer.pump_until(WAIT, |h| {
        h.log.iter().filter(|l| l.starts_with("dialed")).count() == 4
    });
    for (&(loop_index, token), (id, _)) in &dialer.conns {
        assert!(ids.contains(id));
        dialer.running.loops()[loop_index as usize]
            .post(Command::Send {
                token,
                id: *id,
                data: format!("hello {id}").into_bytes(),
                packed: false,
                kind: MessageKind::Binary,
            })
            .unwrap();
    }
    // The target echoes (pumped in turn), and each reply reaches its own connection.
    for _ in 0..200 {
        target.pump_for(Duration::from_millis(20));
        dialer.pump_for(Duration::from_millis(20));
        let replies = dialer.log.iter().filter(|l| l.starts_with("message"));
        if replies.count() == 4 {
            break;
        }
    }
    for id in &ids {
        assert!(
            dialer.log.contains(&format!("message {id} hello {id}")),
            "{:?}",
            dialer.log
        );
    }
    let stats: u64 = dialer
        .running
        .loops()
        .iter()
        .map(|l| l.stats().snapshot().dialed)
        .sum();
    assert_eq!(stats, 4);
    let log = dialer.shutdown();
    for id in &ids {
        assert_eq!(
            log.iter().filter(|l| **l == format!("closed {id}")).count(),
            1
        );
    }
    target.shutdown();
}

#[test]
fn a_refused_connect_is_reported_once() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut dialer = Harness::dialer(Config::default());
    let id = dial(&dialer, Address::Inet(([127, 0, 0, 1], port).into()), WAIT);
    dialer.pump_until(WAIT, |h| !h.log.is_empty());
    dialer.pump_for(Duration::from_millis(200)); // and nothing more comes
    assert_eq!(
        dialer.log,
        [format!("connect failed {id}: ConnectionRefused")]
    );
    let failed: u64 = dialer
        .running
        .loops()
        .iter()
        .map(|l| l.stats().snapshot().connect_failed)
        .sum();
    assert_eq!(failed, 1);
    dialer.shutdown();
}

#[test]
fn a_connect_without_an_answer_times_out_and_stop_gives_up_the_rest() {
    // A listener whose accept queue is full: further SYNs are dropped.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let socket = socket2::SockRef::from(&listener);
    socket.listen(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let _filler = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let address = Address::Inet(([127, 0, 0, 1], port).into());
    let mut dialer = Harness::dialer(Config::default());
    let quick = dial(&dialer, address.clone(), Duration::from_millis(200));
    let slow = dial(&dialer, address, Duration::from_secs(60));
    dialer.pump_until(WAIT, |h| !h.log.is_empty());
    dialer.pump_for(Duration::from_millis(200)); // and nothing more comes
    assert_eq!(dialer.log, [format!("connect failed {quick}: TimedOut")]);
    let log = dialer.shutdown();
    assert!(
        log.contains(&format!("connect failed {slow}: ConnectionAborted")),
        "{log:?}"
    );
}

#[test]
fn unix_sockets_are_dialed_too() {
    let dir = std::env::temp_dir().join(format!("pygev-dial-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("target.sock");
    let text = format!("unix:{}", path.display());
    let mut target = Harness::start_at(&text, Config::default());
    let mut dialer = Harness::dialer(Config::default());
    let id = dial(&dialer, Address::parse(&text).unwrap(), WAIT);
    dialer.pump_until(WAIT, |h| h.log.iter().any(|l| l.starts_with("dialed")));
    let missing = Address::parse(&format!("unix:{}", dir.join("nobody").display())).unwrap();
    let gone = dial(&dialer, missing, WAIT);
    dialer.pump_until(WAIT, |h| {
        h.log.iter().any(|l| l.starts_with("connect failed"))
    });
    assert!(dialer.log.contains(&format!("dialed {id}")));
    assert!(dialer
        .log
        .contains(&format!("connect failed {gone}: NotFound")));
    dialer.shutdown();
    target.pump_for(Duration::from_millis(50));
    target.shutdown();
    assert!(!path.exists(), "the listener removes its socket file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_dialed_connection_may_have_a_framing_of_its_own() {
    // The dialer's server is raw; one connection is dialed with length-prefix framing.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = Address::Inet(listener.local_addr().unwrap());
    let mut dialer = Harness::dialer(Config::default());
    let framing = Arc::new(LengthPrefix::new(2, ByteOrder::Big, 65_535).unwrap());
    let id = dialer.running.next_id();
    dialer
        .running
        .connect(id, address.clone(), WAIT, Some(framing.clone()), None)
        .unwrap();
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    dialer.pump_until(WAIT, |h| h.log.iter().any(|l| l.starts_with("dialed")));
    // Two frames in one write arrive as two messages; a send goes out framed.
    peer.write_all(b"\x00\x02hi\x00\x03you").unwrap();
    dialer.pump_until(WAIT, |h| {
        h.log.iter().filter(|l| l.starts_with("message")).count() == 2
    });
    let messages: Vec<&String> = dialer
        .log
        .iter()
        .filter(|l| l.starts_with("message"))
        .collect();
    assert_eq!(
        messages,
        [&format!("message {id} hi"), &format!("message {id} you")]
    );
    let (&(loop_index, token), _) = dialer.conns.iter().next().unwrap();
    dialer.running.loops()[loop_index as usize]
        .post(Command::Send {
            token,
            id,
            data: b"back".to_vec(),
            packed: false,
            kind: MessageKind::Binary,
        })
        .unwrap();
    dialer.pump_for(Duration::from_millis(100));
    let mut reply = [0; 6];
    peer.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"\x00\x04back");
    // A second connection with no framing of its own is the server's: raw.
    let second = dial(&dialer, address, WAIT);
    let (mut raw_peer, _) = listener.accept().unwrap();
    dialer.pump_until(WAIT, |h| {
        h.log.iter().filter(|l| l.starts_with("dialed")).count() == 2
    });
    raw_peer.write_all(b"\x00\x02hi").unwrap();
    dialer.pump_until(WAIT, |h| {
        h.log
            .iter()
            .any(|l| l.starts_with(&format!("message {second}")))
    });
    let raw = dialer
        .log
        .iter()
        .find(|l| l.starts_with(&format!("message {second}")))
        .unwrap();
    assert_eq!(raw, &format!("message {second} \u{0}\u{2}hi"));
    drop((peer, raw_peer));
    dialer.shutdown();
}

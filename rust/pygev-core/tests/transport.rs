//! The transport seam over real sockets: TCP and Unix pairs read, write, shut down, reset,
//! and report their queues, addresses and peers.

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use pygev_core::{Address, Transport, UnixAddress};

/// A connected pair: our end as a transport, the peer as a blocking std socket.
fn tcp_pair() -> (Transport, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, _) = listener.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    (Transport::Tcp(mio::net::TcpStream::from_std(ours)), peer)
}

fn unix_pair() -> (Transport, UnixStream) {
    let (ours, peer) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    (Transport::Unix(mio::net::UnixStream::from_std(ours)), peer)
}

/// Reads what arrived, waiting up to 5 s (the transport is non-blocking).
fn read_some(transport: &Transport) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut buf = Vec::with_capacity(64 << 10);
        match transport.read_into(&mut buf) {
            Ok(_) => return buf,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "nothing arrived");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

fn exercise(transport: Transport, mut peer: impl Read + Write) {
    // Peer to us: read into spare capacity, FIONREAD before.
    peer.write_all(b"hello").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while transport.unread_bytes() != Some(5) {
        assert!(Instant::now() < deadline, "FIONREAD never showed 5 bytes");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(read_some(&transport), b"hello");
    assert_eq!(transport.unread_bytes(), Some(0));
    // Us to peer: plain and vectored writes, in order.
    assert_eq!(transport.write(b"abc").unwrap(), 3);
    let parts = [IoSlice::new(b"de"), IoSlice::new(b"fgh")];
    assert_eq!(transport.write_vectored(&parts).unwrap(), 5);
    let mut got = [0u8; 8];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abcdefgh");
    // Nothing waits once the peer has read it (and, on TCP, acknowledged it).
    let deadline = Instant::now() + Duration::from_secs(5);
    while transport.send_queue() != Some(0) {
        assert!(Instant::now() < deadline, "the send queue never emptied");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Shutting down our write side: the peer reads EOF, and can still write to us.
    transport.shutdown_write().unwrap();
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    peer.write_all(b"after").unwrap();
    assert_eq!(read_some(&transport), b"after");
    // EOF from the peer reads as 0.
    drop(peer);
    assert!(read_some(&transport).is_empty());
}

#[test]
fn tcp_reads_writes_shuts_down_and_reports_its_queues() {
    let (transport, peer) = tcp_pair();
    assert!(matches!(transport.local_addr().unwrap(), Address::Inet(_)));
    assert_eq!(
        transport.peer_addr().unwrap(),
        Address::Inet(peer.local_addr().unwrap())
    );
    assert!(transport.peer_credentials().is_none());
    exercise(transport, peer);
}

#[test]
fn unix_reads_writes_shuts_down_and_knows_its_peer() {
    let (transport, peer) = unix_pair();
    let credentials = transport
        .peer_credentials()
        .expect("SO_PEERCRED on a unix socket");
    assert_eq!(credentials.pid, std::process::id() as i32);
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    assert_eq!((credentials.uid, credentials.gid), (uid, gid));
    assert_eq!(
        transport.peer_addr().unwrap(),
        Address::Unix(UnixAddress::Unnamed)
    );
    exercise(transport, peer);
}

#[test]
fn a_tcp_reset_on_close_reaches_the_peer_as_a_reset() {
    let (transport, mut peer) = tcp_pair();
    transport.write(b"partial").unwrap();
    transport.reset_on_close().unwrap();
    drop(transport);
    let mut buf = Vec::new();
    let err = peer.read_to_end(&mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[test]
fn the_send_queue_shows_what_the_peer_has_not_taken() {
    let (transport, mut peer) = unix_pair();
    transport.write(&[7u8; 1000]).unwrap();
    // A Unix socket counts the memory the bytes take, more than the bytes themselves.
    let queued = transport.send_queue().unwrap();
    assert!(queued >= 1000, "{queued}");
    let mut got = [0u8; 1000];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(transport.send_queue(), Some(0));
}

#[test]
fn addresses_parse_print_and_refuse_what_no_socket_takes() {
    let path = Address::parse("unix:/tmp/app.sock").unwrap();
    assert_eq!(
        path,
        Address::Unix(UnixAddress::Path(
            std::path::Path::new("/tmp/app.sock").into()
        ))
    );
    assert_eq!(path.to_string(), "unix:/tmp/app.sock");
    assert_eq!(Address::parse("[::1]:80").unwrap().to_string(), "[::1]:80");
    assert_eq!(
        Address::parse(":1833").unwrap(),
        Address::Inet("0.0.0.0:1833".parse().unwrap())
    );
    for bad in ["unix:", "unix:@", "no-port", "host:99999"] {
        let err = Address::parse(bad).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{bad}");
    }
    let long = format!("unix:/{}", "x".repeat(107));
    assert!(Address::parse(&long)
        .unwrap_err()
        .to_string()
        .contains("107"));
    // A host name gives all its addresses; a literal or a Unix name gives itself.
    let all = Address::resolve_all("localhost:80").unwrap();
    assert!(
        all.contains(&Address::Inet("127.0.0.1:80".parse().unwrap())),
        "{all:?}"
    );
    assert_eq!(Address::resolve_all("unix:@x").unwrap().len(), 1);
    assert_eq!(Address::resolve_all("10.0.0.1:5").unwrap().len(), 1);
    // The system's form round-trips.
    let abstract_name = Address::parse("unix:@pygev").unwrap();
    let system = abstract_name.to_unix().unwrap().unwrap();
    assert_eq!(Address::from_unix(&system), abstract_name);
}

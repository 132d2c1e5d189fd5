//! Tests named after the bugs they pin.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use pygev_core::Config;
use util::Harness;

/// A FIN that arrives together with data is reported once by edge-triggered epoll; the
/// short-read shortcut must not skip the read that sees EOF.
#[test]
fn fin_glued_to_data_is_not_lost_after_a_short_read() {
    let mut h = Harness::start(Config::default());
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = TcpStream::connect(("127.0.0.1", h.port())).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(format!("bye {i}").as_bytes()).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        clients.push(c);
    }
    h.pump_until(Duration::from_secs(10), |h| {
        h.log.iter().filter(|l| l.starts_with("closed")).count() == 20
    });
    for (i, mut c) in clients.into_iter().enumerate() {
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, format!("bye {i}"));
    }
    h.shutdown();
}

/// A protocol that claims more input than it was given (a broken plugin, say) must close
/// its connection, not make the loop slice out of bounds and die with every connection.
#[test]
fn a_protocol_claiming_too_much_input_closes_only_its_connection() {
    use pygev_core::{FrameSink, Protocol, ProtocolError, ProtocolState};

    struct Greedy;
    impl Protocol for Greedy {
        fn name(&self) -> &str {
            "greedy"
        }
        fn unpack(
            &self,
            _state: &mut ProtocolState,
            input: &[u8],
            frames: &mut FrameSink,
        ) -> Result<usize, ProtocolError> {
            if input.starts_with(b"!") {
                return Ok(input.len() + 1);
            }
            frames.push(input);
            Ok(input.len())
        }
        fn pack(
            &self,
            _state: &mut ProtocolState,
            payload: &[u8],
            out: &mut Vec<u8>,
        ) -> Result<(), ProtocolError> {
            out.extend_from_slice(payload);
            Ok(())
        }
    }

    let mut h = Harness::start_with(Config::default(), std::sync::Arc::new(Greedy));
    let connect = |port| {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    };
    let mut bad = connect(h.port());
    let mut good = connect(h.port());
    bad.write_all(b"!boom").unwrap();
    let mut rest = Vec::new();
    // Reset by the server: a protocol error drops the connection's unread input.
    let err = bad.read_to_end(&mut rest).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(rest.is_empty());
    good.write_all(b"fine").unwrap();
    let mut reply = [0u8; 4];
    h.pump_until(Duration::from_secs(10), |h| {
        h.log.iter().any(|l| l.starts_with("closed"))
    });
    h.pump_until(Duration::from_secs(10), |_| {
        good.set_nonblocking(true).unwrap();
        let got = good.read_exact(&mut reply).is_ok();
        good.set_nonblocking(false).unwrap();
        got
    });
    assert_eq!(&reply, b"fine");
    h.shutdown();
}

/// A framing whose max_frame_size is above max_input_buffer must still take its largest
/// frames: the server raises the input limit to what the protocol needs.
#[test]
fn frames_up_to_max_frame_size_fit_whatever_max_input_buffer_says() {
    use pygev_core::{ByteOrder, LengthPrefix};

    let framing = LengthPrefix::new(4, ByteOrder::Big, 200_000).unwrap();
    let config = Config {
        max_input_buffer: 1024,
        ..Config::default()
    };
    let mut h = Harness::start_with(config, std::sync::Arc::new(framing));
    let mut client = TcpStream::connect(("127.0.0.1", h.port())).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut wire = (payload.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&payload);
    let writer = {
        let mut c = client.try_clone().unwrap();
        let wire = wire.clone();
        std::thread::spawn(move || c.write_all(&wire).unwrap())
    };
    let mut echoed = vec![0u8; wire.len()];
    let reader = std::thread::spawn(move || {
        client.read_exact(&mut echoed).unwrap();
        echoed
    });
    h.pump_until(Duration::from_secs(10), |h| {
        h.running.loops()[0].stats().snapshot().bytes_out == wire.len() as u64
    });
    writer.join().unwrap();
    assert!(reader.join().unwrap() == wire);
    h.shutdown();
}

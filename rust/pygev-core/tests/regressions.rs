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

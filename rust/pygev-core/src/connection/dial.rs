//! Outgoing connections: a non-blocking connect, the connecting state (only its timeout
//! runs), and the outcome, reported once: a connection that from then on is like an
//! accepted one, or a failure.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use mio::{Interest, Token};

use super::protocols::SERVER_PROTOCOL;
use super::set::{new_backlog, Connections, FIRST_LOOP_TOKEN};
use super::{flag, Conn};
use crate::address::Address;
use crate::clock::Millis;
use crate::event::Event;
use crate::protocols::Protocol;
use crate::stats::LoopStats;
use crate::tls::TlsTarget;
use crate::transport::Transport;

impl Connections {
    /// Starts connecting to `address` as connection `id`. A failure, now or later, is the
    /// system's error as it is (the dispatcher knows the address).
    pub(crate) fn dial(
        &mut self,
        id: u64,
        address: Address,
        timeout: Duration,
        protocol: Option<Arc<dyn Protocol>>,
        tls: Option<TlsTarget>,
    ) {
        if self.quiesced || self.draining {
            return self.dial_failed(id, stopping());
        }
        let tls = match tls.map(|target| target.session()).transpose() {
            Ok(tls) => tls.map(Box::new),
            Err(err) => return self.dial_failed(id, io::Error::other(err.to_string())),
        };
        let mut transport = match start_connect(&address) {
            Ok(transport) => transport,
            Err(err) => return self.dial_failed(id, err),
        };
        let protocol = match protocol {
            None => SERVER_PROTOCOL,
            Some(protocol) => match self.protocols.adopt(protocol) {
                Some(index) => index,
                None => {
                    let full = io::Error::other("pygev: too many framings in use on this loop");
                    return self.dial_failed(id, full);
                }
            },
        };
        let entry = self.conns.vacant_entry();
        let token = entry.key();
        if token >= FIRST_LOOP_TOKEN {
            self.protocols.release(protocol);
            return self.dial_failed(id, io::Error::other("pygev: no connection slot left"));
        }
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(err) = self
            .registry
            .register(&mut transport, Token(token), interest)
        {
            self.protocols.release(protocol);
            return self.dial_failed(id, err);
        }
        let backlog = new_backlog(&self.config);
        let state = self.protocols.get(protocol).new_state();
        let mut conn = Conn::new(transport, id, state, backlog, self.now);
        conn.protocol = protocol;
        conn.tls = tls;
        conn.flags |= flag::CONNECTING;
        if self.protocols.get(protocol).reads_while_output_full() {
            conn.flags |= flag::KEEPS_READING;
        }
        conn.close_deadline = self.now.after(timeout);
        entry.insert(conn);
        self.schedule(token);
    }

    /// A connecting socket reported readiness: connected, failed, or not yet (spurious).
    pub(crate) fn dial_ready(&mut self, token: usize) {
        let conn = &self.conns[token];
        let failure = match conn.transport.take_error() {
            Ok(None) => None,
            Ok(Some(err)) | Err(err) => Some(err),
        };
        if let Some(err) = failure {
            return self.abandon_dial(token, err);
        }
        let peer = match conn.transport.peer_addr() {
            Ok(peer) => peer,
            Err(err) if err.kind() == io::ErrorKind::NotConnected => return, // still at it
            Err(err) => return self.abandon_dial(token, err),
        };
        let local = match conn.transport.local_addr() {
            Ok(local) => local,
            Err(err) => return self.abandon_dial(token, err),
        };
        let now = self.now;
        let conn = &mut self.conns[token];
        conn.flags &= !flag::CONNECTING;
        conn.last_active = now;
        conn.last_read = now;
        conn.last_heard = now;
        if conn.tls.is_some() {
            // Announced once the handshake completed, within the connect's deadline.
            return self.start_client_handshake(token);
        }
        conn.close_deadline = Millis::NEVER;
        LoopStats::add(&self.handle.stats.dialed, 1);
        self.announce(token, peer, local, true, false);
    }

    /// A connect that timed out.
    pub(crate) fn dial_timed_out(&mut self, token: usize) {
        let err = io::Error::new(io::ErrorKind::TimedOut, "pygev: connect timed out");
        self.abandon_dial(token, err);
    }

    /// Gives up every connect in progress (the loop is stopping).
    pub(crate) fn abandon_dials(&mut self) {
        // (A dialed connection in its TLS handshake is not announced yet either.)
        let connecting =
            (self.conns.iter()).filter(|(_, c)| c.has(flag::CONNECTING | flag::DIALED));
        let tokens: Vec<usize> = connecting.map(|(token, _)| token).collect();
        for token in tokens {
            self.abandon_dial(token, stopping());
        }
    }

    /// Drops a connecting socket and reports why.
    pub(super) fn abandon_dial(&mut self, token: usize, err: io::Error) {
        let Some(mut conn) = self.conns.try_remove(token) else {
            return;
        };
        self.write_buffered -= conn.output.len(); // (its TLS handshake may have some)
        let _ = self.registry.deregister(&mut conn.transport);
        self.protocols.release(conn.protocol);
        self.dial_failed(conn.id, err);
    }

    pub(super) fn dial_failed(&mut self, id: u64, error: io::Error) {
        LoopStats::add(&self.handle.stats.connect_failed, 1);
        self.queue_event(Event::ConnectFailed {
            loop_index: self.index,
            id,
            error,
        });
    }
}

/// A socket connecting to `address` (non-blocking: done once it is writable).
fn start_connect(address: &Address) -> io::Result<Transport> {
    match address {
        Address::Inet(addr) => {
            let stream = mio::net::TcpStream::connect(*addr)?;
            // NOTE: as on accepted connections; failure only costs latency.
            let _ = stream.set_nodelay(true);
            Ok(Transport::Tcp(stream))
        }
        Address::Unix(_) => {
            let Some(addr) = address.to_unix()? else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "pygev: cannot connect to an unnamed Unix socket",
                ));
            };
            match mio::net::UnixStream::connect_addr(&addr) {
                Ok(stream) => Ok(Transport::Unix(stream)),
                // A Unix listener whose backlog is full refuses a non-blocking connect
                // at once rather than making it wait.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "the listener's backlog is full (EAGAIN)",
                )),
                Err(err) => Err(err),
            }
        }
    }
}

fn stopping() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "pygev: the server is stopping",
    )
}

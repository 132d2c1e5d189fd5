//! TLS on a connection: the handshake, which runs before the dispatcher hears of the
//! connection (it is announced once the handshake completed, with what was negotiated),
//! and the record layer between the socket and the framing: what is read is opened into
//! plaintext before framing sees it, what is written is sealed first (so output buffers
//! hold records, and every flush, limit and close path stays as it is), and an orderly
//! close sends close_notify.
//!
//! A failed handshake of an accepted connection ends it without any event (the dispatcher
//! never knew it); one of a dialed connection fails its connect.

use std::io;

use super::set::Connections;
use super::{flag, CloseCause};
use crate::close_reason::CloseReason;
use crate::tls::TlsSession;

/// What one read's records came to.
pub(super) struct Plain {
    /// Plaintext bytes, now in the scratch buffer.
    pub(super) plaintext: usize,
    /// The peer sent close_notify: its stream is complete (an EOF).
    pub(super) peer_closed: bool,
}

/// A sealed-output buffer grown past this by a large send is not kept for the next.
const KEEP_SEALED: usize = 256 << 10;

impl Connections {
    /// An accepted connection starts its handshake with `session`: only the handshake
    /// timeout runs until it completes.
    pub(super) fn begin_handshake(&mut self, token: usize, session: TlsSession) {
        // With a PROXY header still to come, the sooner of the two deadlines holds.
        let deadline = self.now.after(self.config.tls_handshake_timeout);
        self.handshakes += 1;
        let conn = &mut self.conns[token];
        conn.tls = Some(Box::new(session));
        conn.flags |= flag::HANDSHAKING;
        conn.close_deadline = conn.close_deadline.min(deadline);
        if self.quiesced || self.draining {
            conn.note_close(CloseReason::Stop);
            return self.close_now(token, CloseCause::Done);
        }
        self.schedule(token);
    }

    /// A dialed connection with a TLS session connected: its ClientHello goes out; the
    /// connect's deadline now bounds the handshake.
    pub(super) fn start_client_handshake(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        conn.flags |= flag::HANDSHAKING | flag::DIALED;
        let Some(tls) = conn.tls.as_mut() else {
            return;
        };
        let mut wire = std::mem::take(&mut self.sealed);
        let started = tls.start(&mut wire);
        match started {
            Ok(()) => self.write_tls_own(token, &wire),
            Err(err) => self.close_now(token, CloseCause::Failed(err.to_string())),
        }
        wire.clear();
        self.sealed = wire;
    }

    /// Opens the `n` bytes of ciphertext just read into the scratch buffer: afterwards the
    /// scratch buffer holds the plaintext they carried (see [`Connections::end_open`]).
    /// What TLS answers (handshake messages, an alert) is written at once; a completed
    /// handshake announces the connection before its first plaintext is framed.
    pub(super) fn open(&mut self, token: usize, n: usize) -> Result<Plain, CloseCause> {
        let conn = &mut self.conns[token];
        // Once our write side is shut, what TLS would answer is not sent.
        let shut = conn.has(flag::WRITE_SHUT | flag::SHUTDOWN_PENDING);
        let Some(tls) = conn.tls.as_mut() else {
            return Ok(Plain {
                plaintext: n,
                peer_closed: false,
            });
        };
        let mut wire = std::mem::take(&mut self.sealed);
        self.plaintext.clear();
        let result = tls.open(&mut self.scratch[..n], &mut self.plaintext, &mut wire);
        self.scratch.clear();
        // The plaintext is framed from the scratch buffer; the read buffer comes back after.
        std::mem::swap(&mut self.scratch, &mut self.plaintext);
        // Said before writing: the write may fail and close the connection.
        let failed = result
            .as_ref()
            .err()
            .map(|e| self.tls_failed(token, &e.to_string()));
        if !wire.is_empty() && !shut {
            self.write_tls_own(token, &wire);
        }
        wire.clear();
        self.sealed = wire;
        let opened = match result {
            Ok(opened) => opened,
            // (If writing the alert closed it already, closing again does nothing.)
            Err(_) => return Err(failed.unwrap_or(CloseCause::Done)),
        };
        if !self.conns.contains(token) {
            return Err(CloseCause::Done); // the write failed and closed it
        }
        if opened.handshake_done {
            self.handshake_done(token);
            if !self.conns.contains(token) {
                return Err(CloseCause::Done); // gone before it could be announced
            }
        }
        Ok(Plain {
            plaintext: self.scratch.len(),
            peer_closed: opened.peer_closed,
        })
    }

    /// After the plaintext of [`Connections::open`] was framed: the read buffer goes back
    /// in its place.
    pub(super) fn end_open(&mut self) {
        self.scratch.clear();
        std::mem::swap(&mut self.scratch, &mut self.plaintext);
    }

    /// Why a TLS error ends the connection; logged with the peer's address, which the
    /// dispatcher does not know during a handshake. The alert TLS queued went out already,
    /// so the close is orderly (a reset could destroy the alert).
    fn tls_failed(&self, token: usize, error: &str) -> CloseCause {
        let conn = &self.conns[token];
        let peer = conn.peer_text();
        if conn.has(flag::HANDSHAKING) {
            let id = conn.id;
            let reason =
                format!("pygev: TLS handshake with {peer} failed: {error} (connection {id})");
            return CloseCause::Refused(reason);
        }
        CloseCause::Failed(format!(
            "pygev: TLS with {peer} failed: {error} (connection {})",
            conn.id
        ))
    }

    /// The handshake completed: the connection becomes like a plain one, and the
    /// dispatcher hears of it.
    fn handshake_done(&mut self, token: usize) {
        let now = self.now;
        let conn = &mut self.conns[token];
        let Ok((peer, local)) = conn.transport.addresses() else {
            // Gone meanwhile (reset): still unannounced, so it ends as a handshake would.
            return self.close_now(token, CloseCause::Done);
        };
        let outgoing = conn.has(flag::DIALED);
        conn.flags &= !(flag::HANDSHAKING | flag::DIALED);
        let peer = self.take_proxied(token).unwrap_or(peer);
        let conn = &mut self.conns[token];
        if !outgoing {
            self.handshakes -= 1;
        }
        conn.close_deadline = crate::clock::Millis::NEVER;
        conn.last_active = now;
        conn.last_read = now;
        conn.last_heard = now;
        if outgoing {
            crate::stats::LoopStats::add(&self.handle.stats.dialed, 1);
        }
        self.announce(token, peer, local, outgoing, false);
    }

    /// The peer's EOF arrived on a TLS connection: without its close_notify first, the
    /// stream may have been cut (what came whole was delivered; a record cut short is
    /// dropped, never taken as data).
    pub(super) fn tls_eof(&mut self, token: usize) {
        let conn = &self.conns[token];
        let Some(tls) = conn.tls.as_ref() else {
            return;
        };
        if tls.peer_closed() || conn.has(flag::HANDSHAKING) {
            return;
        }
        match tls.held() {
            0 => log::debug!(
                "pygev: TLS connection {} ended without close_notify (at a record boundary)",
                conn.id
            ),
            held => log::warn!(
                "pygev: TLS connection {} ended without close_notify inside a record ({held} \
                 bytes of it dropped): the stream was truncated",
                conn.id
            ),
        }
    }

    /// Seals `data` and writes the records after any pending output.
    pub(super) fn write_sealed(&mut self, token: usize, data: &[u8]) {
        let Some(tls) = self.conns[token].tls.as_mut() else {
            return self.write_wire(token, data, true);
        };
        let mut sealed = std::mem::take(&mut self.sealed);
        match tls.seal(data, &mut sealed) {
            Ok(()) => self.write_wire(token, &sealed, true),
            Err(err) => {
                let reason = format!("{err} (connection {})", self.conns[token].id);
                self.close_now(token, CloseCause::Abort(reason));
            }
        }
        sealed.clear();
        if sealed.capacity() > KEEP_SEALED {
            sealed = Vec::new();
        }
        self.sealed = sealed;
    }

    /// Sends close_notify ahead of a FIN (once; not during a handshake, nor after the
    /// write side was shut).
    pub(super) fn send_close_notify(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        if conn.has(flag::WRITE_SHUT | flag::SHUTDOWN_PENDING | flag::HANDSHAKING) {
            return;
        }
        let Some(tls) = conn.tls.as_mut() else {
            return;
        };
        let mut wire = std::mem::take(&mut self.sealed);
        tls.close(&mut wire);
        if !wire.is_empty() {
            self.write_tls_own(token, &wire);
            wire.clear();
        }
        self.sealed = wire;
    }

    /// A connection accepted past `tls_max_handshakes` is refused; said once a second at
    /// most, with how many were.
    pub(super) fn refuse_handshake(&mut self, peer: &crate::address::Address) {
        crate::stats::LoopStats::add(&self.handle.stats.refused_handshakes, 1);
        if let Some(count) = self.over_handshakes.note(self.instant) {
            log::warn!(
                "pygev: {} TLS handshakes in progress on loop {} (tls_max_handshakes): refused \
                 {count} connection(s), the last from {peer}",
                self.handshakes,
                self.index,
            );
        }
    }

    /// An accepted connection in its handshake is gone.
    pub(super) fn handshake_ended(&mut self) {
        self.handshakes = self.handshakes.saturating_sub(1);
    }

    /// A dialed connection closed during its TLS handshake: its connect fails, with why.
    pub(super) fn handshake_abandoned(&mut self, id: u64, message: Option<String>) {
        let message =
            message.unwrap_or_else(|| "pygev: the peer closed during the TLS handshake".into());
        let err = io::Error::new(io::ErrorKind::ConnectionAborted, message);
        self.dial_failed(id, err);
    }
}

//! The write path: packing sends, writing straight to the socket when nothing is queued,
//! buffering the rest, and what follows from the output's size (pause reading, resume,
//! shut down, close).

use std::io;

use super::read::reset_cause;
use super::set::Connections;
use super::{flag, CloseCause};
use crate::event::Event;
use crate::protocols::{Control, MessageKind};
use crate::stats::LoopStats;

impl Connections {
    /// What the kernel's send queue says of a peer that seems idle: whether it took bytes
    /// out of it since the loop last looked. epoll reports the socket writable only once a
    /// good part of a send buffer of megabytes drained, and the loop writes nothing while
    /// the kernel still holds what it wrote, so a slow but live reader can go longer than a
    /// timeout without one of our writes succeeding.
    pub(super) fn kernel_queue(&mut self, token: usize) -> KernelQueue {
        let conn = &mut self.conns[token];
        let queued = conn.transport.send_queue().unwrap_or(0);
        let before = std::mem::replace(&mut conn.kernel_queued, queued);
        match (queued, before) {
            (0, _) => KernelQueue::Empty,
            (_, 0) => KernelQueue::FirstLook,
            (q, b) if q < b => KernelQueue::Draining,
            _ => KernelQueue::Stalled,
        }
    }

    /// The socket became writable: flush, and note that the peer took what was queued.
    pub(crate) fn on_writable(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        if conn.has(flag::CONNECTING) {
            return self.dial_ready(token);
        }
        conn.flags &= !flag::WRITE_BLOCKED;
        let before = conn.output.len();
        self.flush(token);
        if let Some(conn) = self.conns.get_mut(token) {
            if conn.output.len() < before {
                conn.last_heard = self.now; // the peer is reading
                if conn.output.is_empty() {
                    // What is left sits in the kernel's queue: the peer's reading shows
                    // there from now on (see `kernel_queue`).
                    conn.kernel_queued = conn.transport.send_queue().unwrap_or(0);
                }
            }
        }
    }

    pub(crate) fn send(
        &mut self,
        token: u32,
        id: u64,
        data: &[u8],
        packed: bool,
        kind: MessageKind,
    ) {
        let Some(conn) = self.conns.get_mut(token as usize).filter(|c| c.id == id) else {
            return;
        };
        let protocol = self.protocols.get(conn.protocol).clone();
        let ticks = self.protocols.ticks(conn.protocol);
        conn.backlog.took_send(data.len());
        if conn.has(flag::WRITE_SHUT | flag::SHUTDOWN_PENDING | flag::CLOSING) {
            // NOTE: sends are taken in order, so what was queued before a close went out
            // already; anything after it (a send that raced the close, replies after a
            // failed pack) must not be written.
            return;
        }
        if packed && !protocol.allows_packed(&conn.state) {
            return; // the protocol's state forbids more (WebSocket: our close frame went out)
        }
        if packed || protocol.pack_is_identity() {
            self.write_out(token as usize, data);
            return;
        }
        let mut out = Vec::with_capacity(data.len() + 16);
        if let Err(err) = protocol.pack_kind(&mut conn.state, kind, data, &mut out) {
            // The send is lost: the peer must not take what it got for the whole stream.
            let reason = format!(
                "{err} (protocol {}, connection {}, packing a send)",
                protocol.name(),
                conn.id
            );
            return self.close_now(token as usize, CloseCause::Abort(reason));
        }
        if ticks && protocol.take_reschedule(&mut conn.state) {
            self.schedule(token as usize);
        }
        self.write_out(token as usize, &out);
    }

    /// Hands `control` to the connection's framing and writes what it produced; the input
    /// it held back, if the control released it (a WebSocket handshake accepted by the
    /// hook, with frames already behind it), is read on in the loop's next turn.
    pub(crate) fn control(&mut self, token: u32, id: u64, control: Control) {
        let closer = self.closer();
        let Some(conn) = self.conns.get_mut(token as usize).filter(|c| c.id == id) else {
            return;
        };
        let protocol = self.protocols.get(conn.protocol).clone();
        let ticks = self.protocols.ticks(conn.protocol);
        if conn.has(flag::WRITE_SHUT | flag::SHUTDOWN_PENDING | flag::CLOSING) {
            return; // as for sends: nothing is written after a close
        }
        if matches!(control, Control::Close(_)) {
            // Our closing handshake begins here (an answer to the peer's has its reason).
            conn.note_close(closer);
        }
        let mut out = Vec::new();
        let resumes = match protocol.control(&mut conn.state, control, &mut out) {
            Ok(resumes) => resumes,
            Err(err) => {
                let reason = format!("{err} (protocol {}, connection {})", protocol.name(), id);
                return self.close_now(token as usize, CloseCause::Abort(reason));
            }
        };
        if ticks && protocol.take_reschedule(&mut conn.state) {
            self.schedule(token as usize);
        }
        self.write_out(token as usize, &out);
        let token = token as usize;
        let held = self
            .conns
            .get(token)
            .is_some_and(|c| !c.input.is_empty() && !c.has(flag::CLOSING));
        if resumes && held && !self.quiesced {
            // Read in the loop's next turn: a write never re-enters the read path.
            self.conns[token].flags |= flag::UNPACK_AGAIN;
            self.read_later(token);
        }
    }

    /// Someone waits for the connection's output to drain: reports it now if it has (the
    /// last flush may have looked before the wish was made).
    pub(crate) fn want_drain(&mut self, token: u32, id: u64) {
        if self
            .conn_mut(token, id)
            .is_some_and(|c| c.backlog.drained())
        {
            self.report_drained(token as usize);
        }
    }

    fn report_drained(&mut self, token: usize) {
        let (loop_index, token) = (self.handle.index(), token as u32);
        self.queue_event(Event::Drained { loop_index, token });
    }

    /// Writes `wire` (already in wire form) after any pending output: sealed into TLS
    /// records first on a TLS connection.
    #[inline]
    pub(crate) fn write_out(&mut self, token: usize, wire: &[u8]) {
        match self.conns.get(token) {
            Some(conn) if conn.tls.is_some() => self.write_sealed(token, wire),
            _ => self.write_wire(token, wire, true),
        }
    }

    /// Shuts down the write side once pending output is flushed (after close_notify on a
    /// TLS connection).
    pub(crate) fn shutdown_write(&mut self, token: u32, id: u64) {
        if self.conn_mut(token, id).is_none() {
            return;
        }
        let token = token as usize;
        self.send_close_notify(token);
        if let Some(conn) = self.conns.get_mut(token) {
            conn.flags |= flag::SHUTDOWN_PENDING;
            self.flush(token);
        }
    }

    /// Writes records TLS made itself (handshake messages, alerts, close_notify): few and
    /// small, so not held to `max_write_buffer` (a close must not become a reset).
    pub(super) fn write_tls_own(&mut self, token: usize, wire: &[u8]) {
        self.write_wire(token, wire, false);
    }

    /// Writes `wire` as it is (ciphertext, on a TLS connection) after any pending output;
    /// `bounded`: past `max_write_buffer` the connection is reset.
    pub(super) fn write_wire(&mut self, token: usize, wire: &[u8], bounded: bool) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        // NOTE: the common case (nothing queued) writes straight from the command's buffer;
        // only what the socket does not take is copied into the output ring buffer.
        let mut written = 0;
        if conn.output.is_empty() && !conn.has(flag::WRITE_BLOCKED) {
            while written < wire.len() {
                match conn.transport.write(&wire[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        conn.flags |= flag::WRITE_BLOCKED;
                        conn.kernel_queued = conn.transport.send_queue().unwrap_or(0);
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let cause = reset_cause(&e);
                        self.close_now(token, cause);
                        return;
                    }
                }
            }
            if written > 0 {
                conn.last_active = now;
                LoopStats::add(&self.handle.stats.bytes_out, written as u64);
            }
        }
        let rest = &wire[written..];
        let limit = self.config.max_write_buffer;
        if bounded && !rest.is_empty() && conn.output.len() + rest.len() > limit {
            let reason = format!(
                "pygev: connection {} would have {} bytes of unsent output, over \
                 max_write_buffer {} (the peer is not reading)",
                conn.id,
                conn.output.len() + rest.len(),
                self.config.max_write_buffer
            );
            self.close_now(token, CloseCause::Abort(reason));
            return;
        }
        conn.output.write(rest);
        self.write_buffered += rest.len();
        self.flush(token);
    }

    /// Writes as much pending output as the socket takes, then applies what follows from
    /// the output's new size (resume reading, shut down, close).
    pub(crate) fn flush(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        while !conn.output.is_empty() && !conn.has(flag::WRITE_BLOCKED) {
            let before = conn.output.len();
            match conn.output.write_to(&mut &conn.transport) {
                Ok(n) => {
                    self.write_buffered -= before - conn.output.len();
                    conn.last_active = self.now;
                    LoopStats::add(&self.handle.stats.bytes_out, n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.flags |= flag::WRITE_BLOCKED;
                    conn.kernel_queued = conn.transport.send_queue().unwrap_or(0);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let cause = reset_cause(&e);
                    self.close_now(token, cause);
                    return;
                }
            }
        }
        let pending = conn.output.len();
        conn.backlog.set_buffered(pending);
        if conn.backlog.drained() {
            self.report_drained(token);
        }
        let conn = &mut self.conns[token];
        let (high_water, low_water) = conn.backlog.write_limits();
        if pending > high_water && !conn.has(flag::KEEPS_READING) {
            if !conn.has(flag::OUTPUT_FULL) {
                conn.flags |= flag::OUTPUT_FULL;
                LoopStats::add(&self.handle.stats.read_pauses, 1);
            }
            return;
        }
        if conn.has(flag::OUTPUT_FULL) && pending <= low_water {
            conn.flags &= !flag::OUTPUT_FULL;
            if conn.has(flag::READ_READY | flag::UNPACK_AGAIN) {
                // Read in the loop's next turn: a write never re-enters the read path.
                self.read_later(token);
            }
        }
        let conn = &mut self.conns[token];
        if pending > 0 {
            return;
        }
        if conn.has(flag::CLOSING) {
            self.finish_close(token);
        } else if conn.has(flag::SHUTDOWN_PENDING) {
            conn.flags = (conn.flags | flag::WRITE_SHUT) & !flag::SHUTDOWN_PENDING;
            let _ = conn.transport.shutdown_write();
        }
    }
}

/// What [`Connections::kernel_queue`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KernelQueue {
    /// Nothing we wrote waits in the kernel.
    Empty,
    /// Bytes wait there, and it is the first look: look again shortly.
    FirstLook,
    /// Fewer bytes wait than at the last look: the peer is reading.
    Draining,
    /// As many wait as at the last look: the peer is not reading.
    Stalled,
}

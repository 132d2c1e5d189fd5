//! Closing: graceful (flush, then FIN, lingering while the peer still sends) and abortive
//! (a reset, when closing drops data).

use std::io;
use std::time::Duration;

use super::set::{Connections, READ_BUDGET};
use super::{flag, CloseCause};
use crate::clock::Millis;
use crate::close_reason::CloseReason;
use crate::event::Event;

/// How long a closing connection keeps discarding a still-sending peer's input.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// The same while the server stops, so that Ctrl+C stays prompt.
const STOP_LINGER_TIMEOUT: Duration = Duration::from_millis(250);
/// A peer that sent within this long before the close is taken to be still sending.
const LINGER_RECENT: Duration = Duration::from_secs(1);

impl Connections {
    /// Stops reading and closes once output is flushed, or at `deadline`; a TLS connection
    /// sends close_notify after what was queued. `reason` is counted when it closes,
    /// unless another came first.
    pub(crate) fn begin_close(&mut self, token: usize, deadline: Millis, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        conn.note_close(reason);
        if !conn.has(flag::CLOSING) && conn.tls.is_some() {
            self.send_close_notify(token);
        }
        let Some(conn) = self.conns.get_mut(token) else {
            return; // the write failed
        };
        if !conn.has(flag::CLOSING) {
            // Any earlier deadline was the EOF grace: the close has its own.
            conn.close_deadline = Millis::NEVER;
        }
        conn.flags |= flag::CLOSING;
        conn.close_deadline = conn.close_deadline.min(deadline);
        if conn.output.is_empty() || conn.has(flag::WRITE_SHUT) {
            self.finish_close(token);
        } else {
            self.schedule(token);
            self.flush(token);
        }
    }

    /// Closes a connection whose output is flushed. If the peer is still sending, first
    /// shuts down the write side and lingers (discarding input until EOF, bounded by
    /// `LINGER_TIMEOUT` and the close deadline): closing with unread input makes the kernel
    /// send RST, and the peer would lose the tail of what we sent.
    pub(crate) fn finish_close(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        if conn.has(flag::PEER_EOF) {
            self.close_now(token, CloseCause::Done);
            return;
        }
        if !conn.has(flag::LINGERING) {
            let probe = conn.transport.read_into(&mut self.scratch);
            self.scratch.clear();
            let unread = match probe {
                Ok(0) => return self.close_now(token, CloseCause::Done), // EOF
                Ok(_) => true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                Err(_) => return self.close_now(token, CloseCause::Done),
            };
            let sending = self.now.since(conn.last_read) < LINGER_RECENT;
            if !unread && !sending {
                // A quiet peer: a plain close loses nothing and ends promptly.
                return self.close_now(token, CloseCause::Done);
            }
            if !conn.has(flag::WRITE_SHUT) {
                let _ = conn.transport.shutdown_write();
            }
            conn.flags |= flag::LINGERING | flag::WRITE_SHUT;
            let linger = if self.draining {
                STOP_LINGER_TIMEOUT
            } else {
                LINGER_TIMEOUT
            };
            conn.close_deadline = conn.close_deadline.min(self.now.after(linger));
            self.schedule(token);
        }
        self.linger(token);
    }

    /// Discards a lingering connection's input; closes it at EOF (or on an error).
    pub(crate) fn linger(&mut self, token: usize) {
        for _ in 0..READ_BUDGET {
            let result = self.conns[token].transport.read_into(&mut self.scratch);
            self.scratch.clear();
            match result {
                Ok(0) => return self.close_now(token, CloseCause::Done),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close_now(token, CloseCause::Done),
            }
        }
        self.read_later(token);
    }

    /// Closes the socket now and tells the dispatcher. An abort resets the connection
    /// (SO_LINGER 0), so the peer cannot take a cut-off stream for a complete one. The
    /// close counts for the reason noted when it began, else for `cause`'s.
    pub(crate) fn close_now(&mut self, token: usize, cause: CloseCause) {
        let Some(mut conn) = self.conns.try_remove(token) else {
            return;
        };
        let reason = conn.close_reason.unwrap_or_else(|| {
            if conn.has(flag::HANDSHAKING) {
                CloseReason::Tls
            } else {
                cause.reason()
            }
        });
        let (reset, message) = match cause {
            CloseCause::Done => (false, None),
            CloseCause::Failed(message) => {
                log::warn!("{message}");
                (false, Some(message))
            }
            CloseCause::Abort(reason) => {
                log::warn!("{reason}; the connection was reset");
                (true, Some(reason))
            }
            CloseCause::Reset => (true, None),
            CloseCause::Refused(reason) => {
                log::info!("{reason}");
                (false, Some(reason))
            }
        };
        if reset {
            if let Err(err) = conn.transport.reset_on_close() {
                log::debug!("pygev: could not set SO_LINGER 0: {err}");
            }
        }
        self.write_buffered -= conn.output.len();
        let _ = self.registry.deregister(&mut conn.transport);
        self.protocols.release(conn.protocol);
        let (id, flags) = (conn.id, conn.flags);
        drop(conn);
        if flags & flag::DIALED != 0 {
            // In its TLS handshake, never announced (DIALED goes with it): the connect fails.
            return self.handshake_abandoned(id, message);
        }
        self.handle.stats.closed(reason);
        if flags & flag::UNANNOUNCED != 0 {
            if flags & flag::HANDSHAKING != 0 {
                self.handshake_ended();
                self.take_proxied(token);
            }
            return; // never announced: nothing to tell the dispatcher
        }
        self.queue_event(Event::Closed {
            loop_index: self.index,
            token: token as u32,
        });
    }
}

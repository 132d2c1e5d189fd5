//! The deadlines a connection may have running (drain, EOF grace, idle timeout, frame
//! deadline, the protocol's own: handshake timeout, keepalive), kept in the loop's deadline
//! heap so that the loop does no work for a connection until one is due.

use std::time::Duration;

use super::set::Connections;
use super::write::KernelQueue;
use super::{flag, CloseCause, Conn};
use crate::clock::Millis;
use crate::close_reason::CloseReason;

/// How soon a connection that seems idle, with output waiting in the kernel, is looked at
/// again (to see whether the peer takes it).
const RECHECK_MIN: Duration = Duration::from_millis(10);
const RECHECK_MAX: Duration = Duration::from_secs(1);

/// Stale heap entries tolerated beyond twice the number of connections before compacting.
const COMPACT_SLACK: usize = 1024;

impl Connections {
    /// Puts the connection's next deadline in the heap, unless an entry at or before it is
    /// there already (a later one becomes due, finds nothing to do, and reschedules).
    pub(crate) fn schedule(&mut self, token: usize) {
        self.schedule_after(token, self.now);
    }

    /// Like [`Connections::schedule`], but never before `floor` (after handling a deadline:
    /// one that is still due must not make the loop spin).
    fn schedule_after(&mut self, token: usize, floor: Millis) {
        let Some(conn) = self.conns.get(token) else {
            return;
        };
        let due = self.next_deadline(conn);
        if due.is_never() {
            return;
        }
        let due = due.max(floor);
        let conn = &mut self.conns[token];
        if due < conn.wake_at {
            conn.wake_at = due;
            self.deadlines.push(due, token, conn.id);
        }
    }

    /// The earliest of the connection's running deadlines (NEVER: none).
    fn next_deadline(&self, conn: &Conn) -> Millis {
        let mut due = conn.close_deadline;
        if conn.has(flag::CLOSING | flag::PAUSED_BY_US | flag::CONNECTING | flag::UNANNOUNCED) {
            // Closing, connecting, waiting for a PROXY header or in a TLS handshake: only
            // that deadline counts. Paused by us: the other deadlines start afresh when
            // reading resumes.
            return due;
        }
        if let Some(idle) = self.config.idle_timeout {
            due = due.min(conn.last_active.after(idle));
        }
        if let (Some(limit), false) = (self.config.frame_timeout, conn.frame_started.is_never()) {
            due = due.min(conn.frame_started.after(limit));
        }
        if conn.has(flag::READ_STOPPED) || !self.protocols.ticks(conn.protocol) {
            return due; // ending (the dispatcher closes it), or a protocol without ticks
        }
        let heard = self.clock.instant(conn.last_heard);
        let protocol = self.protocols.get(conn.protocol);
        if let Some(tick) = protocol.next_tick(&conn.state, heard) {
            due = due.min(self.clock.millis_ceil(tick));
        }
        due
    }

    /// Handles every connection whose deadline has come.
    pub(crate) fn expire_deadlines(&mut self) {
        while let Some(entry) = self.deadlines.pop_due(self.now) {
            let live = self
                .conns
                .get_mut(entry.token)
                .filter(|c| c.id == entry.id && c.wake_at == entry.at);
            let Some(conn) = live else {
                continue; // closed, or superseded by an earlier entry
            };
            conn.wake_at = Millis::NEVER;
            self.on_deadline(entry.token);
            self.schedule_after(entry.token, self.now.after(Duration::from_millis(1)));
        }
        if self.deadlines.len() > 2 * self.conns.len() + COMPACT_SLACK {
            let conns = &self.conns;
            self.deadlines.compact(|e| {
                conns
                    .get(e.token)
                    .is_some_and(|c| c.id == e.id && c.wake_at == e.at)
            });
        }
        self.deadlines.release_room();
    }

    /// Acts on whichever of the connection's deadlines has passed.
    fn on_deadline(&mut self, token: usize) {
        let now = self.now;
        let conn = &mut self.conns[token];
        if conn.close_deadline <= now {
            if conn.has(flag::CONNECTING | flag::DIALED) {
                return self.dial_timed_out(token);
            }
            if conn.has(flag::PROXY_HEADER) {
                return self.proxy_header_timed_out(token);
            }
            if conn.has(flag::HANDSHAKING) {
                let reason = format!(
                    "pygev: connection {} did not complete its TLS handshake within {:?}",
                    conn.id, self.config.tls_handshake_timeout
                );
                return self.close_now(token, CloseCause::Refused(reason));
            }
            if conn.has(flag::CLOSING) {
                let pending = conn.output.len();
                let cause = if pending == 0 {
                    CloseCause::Done // lingering peer that never sent EOF
                } else {
                    CloseCause::Abort(format!(
                        "pygev: connection {} closed with {pending} bytes unsent: drain timeout",
                        conn.id
                    ))
                };
                return self.close_now(token, cause);
            }
            // The peer sent EOF and Python did not answer its last messages in time: what
            // it still owes is lost, so the peer must not see a clean end.
            conn.close_deadline = Millis::NEVER;
            if conn.backlog.pending_dispatch() > 0 {
                let reason = format!(
                    "pygev: connection {}: Python did not answer the messages before the \
                     peer's EOF within drain_timeout {:?}",
                    conn.id, self.config.drain_timeout
                );
                return self.close_now(token, CloseCause::Abort(reason));
            }
            return self.begin_close(
                token,
                now.after(self.config.drain_timeout),
                CloseReason::Peer,
            );
        }
        if conn.has(flag::CLOSING | flag::PAUSED_BY_US) {
            return;
        }
        let idle_due = self
            .config
            .idle_timeout
            .is_some_and(|idle| conn.last_active.after(idle) <= now);
        let tick_due = {
            let heard = self.clock.instant(conn.last_heard);
            self.protocols.ticks(conn.protocol)
                && self
                    .protocols
                    .get(conn.protocol)
                    .next_tick(&conn.state, heard)
                    .is_some_and(|t| t <= self.instant)
        };
        if idle_due || tick_due {
            match self.kernel_queue(token) {
                KernelQueue::Draining => {
                    // A slow reader, not a silent one: progress, and a sign of life.
                    let conn = &mut self.conns[token];
                    conn.last_active = now;
                    conn.last_heard = now;
                    return;
                }
                KernelQueue::FirstLook => {
                    // Output waits in the kernel: look again shortly whether it drains.
                    let recheck = self.config.idle_timeout.map_or(RECHECK_MAX, |idle| {
                        (idle / 4).clamp(RECHECK_MIN, RECHECK_MAX)
                    });
                    let conn = &mut self.conns[token];
                    if let Some(idle) = self.config.idle_timeout {
                        conn.last_active = now.after(recheck).before(idle);
                    }
                    if tick_due {
                        conn.last_heard = now; // the tick comes again after its own wait
                    }
                    return;
                }
                KernelQueue::Empty | KernelQueue::Stalled => {}
            }
        }
        let conn = &mut self.conns[token];
        if idle_due {
            return self.idle(token);
        }
        if let Some(limit) = self.config.frame_timeout {
            if !conn.frame_started.is_never() && conn.frame_started.after(limit) <= now {
                if conn.has(flag::OUTPUT_FULL) {
                    // We stopped reading (the peer is slow to read): not its fault.
                    conn.frame_started = now;
                } else {
                    conn.note_close(CloseReason::Timeout);
                    let reason = format!(
                        "pygev: connection {} sent part of a frame and not the rest within \
                         frame_timeout {limit:?}",
                        conn.id
                    );
                    return self.close_now(token, CloseCause::Abort(reason));
                }
            }
        }
        if tick_due {
            self.tick_protocol(token);
        }
    }

    /// Closes a connection that made no progress for `idle_timeout`: gracefully when
    /// nothing is lost, with a reset when output or input would be dropped.
    fn idle(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        let (unsent, unread) = (conn.output.len(), conn.input.len());
        if unsent == 0 && unread == 0 {
            log::debug!("pygev: closing connection {} after idle timeout", conn.id);
            let deadline = self.now.after(self.config.drain_timeout);
            return self.begin_close(token, deadline, CloseReason::Idle);
        }
        conn.note_close(CloseReason::Idle);
        let reason = format!(
            "pygev: connection {} made no progress for idle_timeout {:?} with {unsent} bytes \
             unsent and {unread} bytes of an unfinished frame",
            conn.id,
            self.config.idle_timeout.unwrap_or_default()
        );
        self.close_now(token, CloseCause::Abort(reason));
    }

    /// Lets the protocol act on time (a WebSocket handshake timeout, a keepalive ping).
    fn tick_protocol(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        let protocol = self.protocols.get(conn.protocol).clone();
        if conn.has(flag::READ_STOPPED) {
            return; // ending: the dispatcher closes it
        }
        let heard = self.clock.instant(conn.last_heard);
        // The frame sink is empty between reads: a tick pushes signals and actions only.
        let result = protocol.tick(&mut conn.state, self.instant, heard, &mut self.frames);
        if self.frames.has_signals() {
            self.queue_frames(token);
        }
        let (out, close) = self.frames.take_actions();
        if let Some(error) = self.frames.take_stop() {
            let conn = &mut self.conns[token];
            conn.flags |= flag::READ_STOPPED;
            conn.note_close(CloseReason::Timeout);
            if let Some(message) = error {
                log::warn!("{message} (connection {})", conn.id);
            }
        }
        match result {
            Ok(()) if out.is_empty() && close.is_none() => {}
            // A protocol acts on time only when a deadline passed (a handshake that never
            // completed, a ping never answered).
            Ok(()) => self.protocol_actions(token, &out, close, CloseReason::Timeout),
            // Before any in-band close exists: reset.
            Err(err) if out.is_empty() => {
                let conn = &mut self.conns[token];
                conn.note_close(CloseReason::Timeout);
                let reason = format!("{} (connection {})", err.message(), conn.id);
                self.close_now(token, CloseCause::Abort(reason));
            }
            Err(err) => {
                let close = Some(Some(err.message().to_string()));
                self.protocol_actions(token, &out, close, CloseReason::Timeout);
            }
        }
    }
}

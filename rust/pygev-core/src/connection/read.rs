//! The read path: reading sockets, running the framing, queueing whole messages for the
//! dispatcher, and the two kinds of dispatch backpressure (the loop's whole queue, and one
//! connection's share of it).

use std::io;
use std::sync::atomic::Ordering;

use super::set::{Connections, READ_BUDGET};
use super::{flag, CloseCause};
use crate::clock::Millis;
use crate::close_reason::CloseReason;
use crate::event::Event;
use crate::protocols::{Item, ProtocolError, Taken};
use crate::stats::LoopStats;

impl Connections {
    /// Whether the loop's whole dispatch queue is over its high-water mark.
    pub(crate) fn dispatch_backlogged(&self) -> bool {
        self.handle
            .dispatch_backlogged(self.config.dispatch_high_water)
    }

    pub(crate) fn read(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        if conn.has(flag::LINGERING) {
            self.linger(token);
            return;
        }
        if conn.has(flag::UNPACK_AGAIN) {
            // The protocol's work on what it holds comes first (one step per turn); while
            // the connection is paused for its output, its own backlog or a close, it waits,
            // as reading would. (The loop-wide dispatch pause does not hold it: the input
            // is already held, and bounded.)
            if self.quiesced || conn.has(flag::NOT_READING) {
                return;
            }
            conn.flags &= !flag::UNPACK_AGAIN;
            if let Err(cause) = self.feed(token, 0) {
                return self.close_now(token, cause);
            }
            let Some(conn) = self.conns.get_mut(token) else {
                return;
            };
            if conn.has(flag::UNPACK_AGAIN) {
                return; // still at it: read_later() was called
            }
            if conn.has(flag::EOF_PENDING) {
                conn.flags &= !flag::EOF_PENDING;
                return self.peer_eof(token);
            }
        }
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        if self.quiesced || !conn.can_read() || !conn.has(flag::READ_READY) {
            return;
        }
        for _ in 0..READ_BUDGET {
            if self.batch_full() {
                break;
            }
            // A PROXY header is read even then: it queues nothing until it is whole, and its
            // deadline must not run out while the loop would not read it.
            if self.dispatch_backlogged() && !self.conns[token].has(flag::PROXY_HEADER) {
                self.defer_read(token);
                return;
            }
            let conn = &mut self.conns[token];
            if conn.backlog.throttle(self.config.conn_dispatch_high_water) {
                // This connection has its share queued for Python; others are still read.
                // (Not throttled before: `can_read` said so.)
                conn.flags |= flag::THROTTLED;
                LoopStats::add(&self.handle.stats.input_pauses, 1);
                return;
            }
            match conn.transport.read_into(&mut self.scratch) {
                Ok(0) => {
                    self.tls_eof(token);
                    self.proxy_eof(token);
                    return self.peer_eof(token);
                }
                Ok(n) => {
                    self.batch_read += n;
                    conn.last_active = self.now;
                    conn.last_read = self.now;
                    conn.last_heard = self.now;
                    LoopStats::add(&self.handle.stats.bytes_in, n as u64);
                    let read = if conn.has(flag::PROXY_HEADER) {
                        self.read_proxy_header(token, n)
                    } else if conn.tls.is_some() {
                        self.read_tls(token, n)
                    } else {
                        self.feed(token, n)
                    };
                    if let Err(cause) = read {
                        self.close_now(token, cause);
                        return;
                    }
                    let conn = self.conns.get(token);
                    if !conn.is_some_and(|c| c.can_read() && !c.has(flag::UNPACK_AGAIN)) {
                        // The protocol closed it, its reply filled the output, or it has
                        // work left on what it holds: that comes before more input (even
                        // an EOF already signalled).
                        return;
                    }
                    // NOTE: on Linux a short read means the socket was drained, and epoll
                    // (edge-triggered) reports any later arrival; skipping the read that
                    // would return EAGAIN saves a system call per message. A FIN already
                    // reported will not be reported again, so then we read on to EOF.
                    if n < self.config.read_buffer_size && !self.conns[token].has(flag::HANGUP_SEEN)
                    {
                        self.conns[token].flags &= !flag::READ_READY;
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.flags &= !flag::READ_READY;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let cause = reset_cause(&e);
                    self.close_now(token, cause);
                    return;
                }
            }
        }
        self.read_later(token);
    }

    /// The peer sent EOF. A connection that owes nothing closes at once, so that peers
    /// leaving while Python is busy do not hold descriptors; `on_close` follows in order.
    /// Otherwise it stays open so that replies to the messages before the EOF reach a peer
    /// that only shut down its write side, for at most `drain_timeout` (then a reset if
    /// Python still owes them; see `on_deadline`).
    fn peer_eof(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        conn.flags = (conn.flags | flag::PEER_EOF) & !flag::READ_READY;
        // Whoever closes it now (the dispatcher once Python answered, or drain_timeout),
        // the peer's EOF was the cause.
        conn.note_close(CloseReason::Peer);
        // Python credits a message only after its handler ran, and the handler's replies
        // are charged as it sends them: nothing in either count means nothing is coming.
        if !conn.owes_anything() {
            if conn.tls.is_some() {
                // close_notify first (then the close, the peer's EOF being in).
                let deadline = self.now.after(self.config.drain_timeout);
                return self.begin_close(token, deadline, CloseReason::Peer);
            }
            return self.close_now(token, CloseCause::Done);
        }
        conn.close_deadline = self.now.after(self.config.drain_timeout);
        self.queue_event(Event::PeerClosed {
            loop_index: self.index,
            token: token as u32,
        });
        self.schedule(token);
    }

    /// The peer hung up while the loop does not read it (Python is behind on the whole
    /// loop): if it left nothing unread and nothing of it waits, the descriptor is closed now
    /// instead of when Python catches up (no CLOSE_WAIT pile-up); `on_close` follows.
    pub(crate) fn hangup_while_paused(&mut self, token: usize) {
        let conn = &self.conns[token];
        if !conn.has(flag::PAUSED_BY_US) || conn.has(flag::CLOSING) {
            return;
        }
        let waiting = conn.owes_anything() || !conn.input.is_empty();
        if !waiting && conn.transport.unread_bytes() == Some(0) {
            self.close_now(token, CloseCause::Done);
        }
    }

    /// Whether this iteration has read its `batch_bytes`.
    pub(crate) fn batch_full(&self) -> bool {
        self.batch_read >= self.config.batch_bytes
    }

    /// Reads `token` in the next iteration, which polls without waiting.
    pub(crate) fn read_later(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        if !conn.has(flag::MORE_TO_READ) {
            conn.flags |= flag::MORE_TO_READ;
            self.more_to_read.push_back(token);
        }
    }

    /// Opens the `n` bytes of TLS records just read, and frames the plaintext they held; a
    /// close_notify among them is the peer's EOF.
    pub(super) fn read_tls(&mut self, token: usize, n: usize) -> Result<(), CloseCause> {
        let opened = self.open(token, n);
        let framed = match &opened {
            Ok(opened) if opened.plaintext > 0 => self.feed(token, opened.plaintext),
            _ => Ok(()),
        };
        self.end_open();
        let opened = opened?;
        framed?;
        let Some(conn) = self.conns.get_mut(token) else {
            return Ok(());
        };
        if !opened.peer_closed || conn.has(flag::PEER_EOF) {
            return Ok(());
        }
        if conn.has(flag::UNPACK_AGAIN) {
            // Messages still held come first (as a plain EOF is read only after them).
            conn.flags |= flag::PEER_EOF | flag::EOF_PENDING;
        } else if conn.has(flag::CLOSING) {
            conn.flags |= flag::PEER_EOF; // closing already: nothing more to read
        } else {
            self.peer_eof(token);
        }
        Ok(())
    }

    /// Runs the protocol over the `n` bytes just read into the scratch buffer (after any
    /// leftover), and leaves the scratch buffer empty.
    pub(crate) fn feed(&mut self, token: usize, n: usize) -> Result<(), CloseCause> {
        let conn = &mut self.conns[token];
        let protocol = self.protocols.get(conn.protocol);
        let result = if conn.input.is_empty() && protocol.is_passthrough() {
            // NOTE: a large read is handed over as the message itself instead of copied
            // (raw echo of 4 KiB messages: memcpy was a quarter of the server's CPU). The
            // buffer is not shrunk (that would copy); dispatch accounting counts capacity.
            if n >= self.config.read_buffer_size / 8 {
                let data = std::mem::replace(
                    &mut self.scratch,
                    Vec::with_capacity(self.config.read_buffer_size),
                );
                self.frames.push_owned(data);
            } else {
                self.frames.push(&self.scratch);
            }
            Ok(())
        } else {
            let data = &self.scratch[..];
            if conn.input.is_empty() {
                protocol
                    .unpack(&mut conn.state, data, &mut self.frames)
                    .and_then(|used| checked_use(used, data.len()))
                    .map(|used| conn.input.write(&data[used..]))
            } else {
                let input = conn.input.write_contiguous(data);
                let len = input.len();
                protocol
                    .unpack(&mut conn.state, input, &mut self.frames)
                    .and_then(|used| checked_use(used, len))
                    .map(|used| conn.input.retrieve(used))
            }
        };
        self.scratch.clear();
        let produced = !self.frames.is_empty() || self.frames.has_signals();
        self.queue_frames(token);
        let conn = &mut self.conns[token];
        if let Err(err) = result {
            self.frames.take_actions();
            self.frames.take_stop();
            conn.note_close(CloseReason::Protocol);
            return Err(CloseCause::Abort(format!(
                "{} (protocol {}, connection {})",
                err,
                self.protocols.get(conn.protocol).name(),
                conn.id
            )));
        }
        let max_input = self.protocols.max_input(conn.protocol);
        if conn.input.len() > max_input {
            self.frames.take_actions();
            self.frames.take_stop();
            conn.note_close(CloseReason::Protocol);
            return Err(CloseCause::Abort(format!(
                "pygev: connection {} holds {} bytes of unparsed input, over max_input_buffer {}",
                conn.id,
                conn.input.len(),
                max_input
            )));
        }
        if self.frames.take_again() {
            conn.flags |= flag::UNPACK_AGAIN;
            self.read_later(token);
        }
        let conn = &mut self.conns[token];
        if self.frames.has_actions() {
            if let Some(error) = self.frames.take_stop() {
                conn.flags |= flag::READ_STOPPED;
                // The peer's close (WebSocket's), or what it did wrong.
                conn.note_close(peer_or_protocol(&error));
                if let Some(message) = error {
                    log::warn!("{message} (connection {})", conn.id);
                }
            }
            let (reply, close) = self.frames.take_actions();
            let reason = close.as_ref().map_or(CloseReason::Peer, peer_or_protocol);
            self.protocol_actions(token, &reply, close, reason);
        }
        self.track_frame(token, produced);
        Ok(())
    }

    /// Queues what the protocol put in the frame sink: the messages as one event (the
    /// common case), or, around signals, each message and signal in order.
    pub(super) fn queue_frames(&mut self, token: usize) {
        let (loop_index, token32) = (self.index, token as u32);
        let count = self.frames.len() as u64;
        if count > 0 {
            LoopStats::add(&self.handle.stats.messages_in, count);
        }
        if !self.frames.has_signals() {
            let event = match self.frames.take() {
                None => return,
                Some(Taken::One { kind, data }) => Event::Message {
                    loop_index,
                    token: token32,
                    data,
                    kind,
                },
                Some(Taken::Many(frames)) => Event::Messages {
                    loop_index,
                    token: token32,
                    frames,
                },
            };
            if let Some(capacity) = self.frames.wants_buffer() {
                // NOTE: a batch's buffer comes back from the dispatcher once handled: a
                // fresh one for each read cost page faults and realloc copies (WebSocket
                // client, 10 x 16 KiB x 4 in flight: page faults 5.3% -> 2.6% of its CPU;
                // with the other copies saved, 0.77x -> 1.1x picows's MiB/s).
                let buffer = (self.handle.spare_buffer(capacity))
                    .unwrap_or_else(|| Vec::with_capacity(capacity));
                self.frames.adopt_buffer(buffer);
            }
            return self.queue_connection_event(token, event);
        }
        for item in self.frames.drain_items() {
            let event = match item {
                Item::Message { kind, data } => Event::Message {
                    loop_index,
                    token: token32,
                    data,
                    kind,
                },
                Item::Signal(signal) => Event::Signal {
                    loop_index,
                    token: token32,
                    signal,
                },
            };
            self.queue_connection_event(token, event);
        }
    }

    /// Queues a message or a signal of a connection, charged to its backlog as well.
    fn queue_connection_event(&mut self, token: usize, event: Event) {
        self.conns[token]
            .backlog
            .charge_dispatch(event.dispatch_cost());
        self.queue_event(event);
    }

    /// Starts the frame deadline when a frame began arriving (the read that completed a
    /// frame and began the next one starts it afresh), and ends it once the framing holds no
    /// partial frame; takes in a deadline the protocol brought forward.
    pub(crate) fn track_frame(&mut self, token: usize, produced: bool) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        let protocol = self.protocols.get(conn.protocol);
        if self.protocols.ticks(conn.protocol) && protocol.take_reschedule(&mut conn.state) {
            self.schedule(token);
        }
        if self.config.frame_timeout.is_none() {
            return;
        }
        let conn = &mut self.conns[token];
        if !self
            .protocols
            .get(conn.protocol)
            .has_partial_frame(&conn.state, conn.input.len())
        {
            conn.frame_started = Millis::NEVER;
        } else if conn.frame_started.is_never() {
            conn.frame_started = self.now;
            self.schedule(token);
        } else if produced {
            conn.frame_started = self.now; // later: the entry in the heap finds it moved
        }
    }

    /// Does what the protocol asked for itself: writes its reply (ahead of anything sent
    /// later), then closes (for `reason`) if it asked to, logging what the peer did wrong.
    pub(crate) fn protocol_actions(
        &mut self,
        token: usize,
        reply: &[u8],
        close: Option<Option<String>>,
        reason: CloseReason,
    ) {
        let id = self.conns[token].id;
        if !reply.is_empty() && !self.conns[token].has(flag::WRITE_SHUT | flag::SHUTDOWN_PENDING) {
            self.write_out(token, reply);
        }
        if let Some(error) = close {
            if let Some(message) = error {
                log::warn!("{message} (connection {id})");
            }
            if self.conns.contains(token) {
                self.begin_close(token, self.now.after(self.config.drain_timeout), reason);
            }
        }
    }

    fn defer_read(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        if !conn.has(flag::DEFERRED) {
            conn.flags |= flag::DEFERRED;
            self.deferred_reads.push(token);
        }
        self.note_dispatch_paused();
    }

    /// Asks the dispatcher for a `Resume` once it catches up.
    pub(crate) fn note_dispatch_paused(&mut self) {
        if !self.handle.dispatch_paused.swap(true, Ordering::SeqCst) {
            // The dispatcher may have caught up between our check and the flag: look again.
            let pending = self.handle.pending_dispatch.load(Ordering::SeqCst);
            if pending <= self.config.dispatch_high_water / 2
                && self.handle.dispatch_paused.swap(false, Ordering::SeqCst)
            {
                self.resume_deferred();
            }
        }
    }

    pub(crate) fn resume_deferred(&mut self) {
        let tokens = std::mem::take(&mut self.deferred_reads);
        for token in &tokens {
            if let Some(conn) = self.conns.get_mut(*token) {
                conn.flags &= !flag::DEFERRED;
                self.resumed(*token);
            }
        }
        for token in tokens {
            if self.conns.contains(token) {
                self.read(token);
            }
        }
        if std::mem::take(&mut self.accept_deferred) {
            self.accept_wanted = true; // the loop accepts before it polls again
        }
    }

    /// The dispatcher caught up with one throttled connection.
    pub(crate) fn unthrottle(&mut self, token: u32, id: u64) {
        let Some(conn) = self.conn_mut(token, id) else {
            return;
        };
        if !conn.has(flag::THROTTLED) {
            return;
        }
        conn.flags &= !flag::THROTTLED;
        self.resumed(token as usize);
        self.read(token as usize);
    }

    /// The handler paused reading the connection.
    pub(crate) fn pause_reading(&mut self, token: u32, id: u64) {
        if let Some(conn) = self.conn_mut(token, id) {
            conn.flags |= flag::PAUSED_BY_USER;
        }
    }

    /// The handler resumed reading the connection.
    pub(crate) fn resume_reading(&mut self, token: u32, id: u64) {
        let Some(conn) = self.conn_mut(token, id) else {
            return;
        };
        if !conn.has(flag::PAUSED_BY_USER) {
            return;
        }
        conn.flags &= !flag::PAUSED_BY_USER;
        self.resumed(token as usize);
        self.read(token as usize);
    }

    /// A connection we had stopped reading for our own reasons goes on: the time it waited
    /// was not its silence, so its timeouts start afresh.
    fn resumed(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        if conn.has(flag::PAUSED_BY_US) {
            return; // still paused for the other reason
        }
        conn.last_active = self.now;
        conn.last_heard = self.now;
        if !conn.frame_started.is_never() {
            conn.frame_started = self.now;
        }
        self.schedule(token);
    }

    /// Reads the connections left over from earlier iterations, oldest first, until the
    /// batch is full; a connection that still has bytes goes to the back of the line.
    pub(crate) fn read_leftovers(&mut self) {
        for _ in 0..self.more_to_read.len() {
            if self.batch_full() {
                return;
            }
            let Some(token) = self.more_to_read.pop_front() else {
                return;
            };
            if let Some(conn) = self.conns.get_mut(token) {
                conn.flags &= !flag::MORE_TO_READ;
                self.read(token);
            }
        }
    }
}

/// A protocol (a third-party one, say) that reports more input used than it was given is
/// broken: refuse instead of slicing out of bounds.
fn checked_use(used: usize, len: usize) -> Result<usize, ProtocolError> {
    if used > len {
        return Err(ProtocolError::new(format!(
            "pygev: the protocol reported {used} bytes used of {len}"
        )));
    }
    Ok(used)
}

/// Why a framing ends a connection as it reads: the peer's own end (no error), or what the
/// peer did wrong.
fn peer_or_protocol(error: &Option<String>) -> CloseReason {
    match error {
        None => CloseReason::Peer,
        Some(_) => CloseReason::Protocol,
    }
}

/// How a failed read or write ends the connection: a peer that reset or vanished is a
/// normal end; anything else is logged.
pub(crate) fn reset_cause(err: &io::Error) -> CloseCause {
    match err.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => CloseCause::Done,
        _ => CloseCause::Failed(format!("pygev: connection error: {err}")),
    }
}

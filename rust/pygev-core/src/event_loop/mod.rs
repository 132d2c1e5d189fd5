//! One reactor thread: a `mio::Poll`, its connections, its mailbox.
//!
//! This file holds the loop itself (polling, the mailbox, accepting); the connection's
//! paths live beside it, one concern each: `read.rs` (reading and framing), `write.rs`
//! (the write path), `close.rs` (graceful and abortive closes) and `timeouts.rs` (the
//! deadlines every connection may have running).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::acceptor::{AcceptNext, Accepting};
use crate::address::Address;
use crate::backlog::Backlog;
use crate::clock::{Clock, Millis};
use crate::config::Config;
use crate::connection::{flag, CloseCause, Conn};
use crate::deadlines::Deadlines;
use crate::dispatch_queue::DispatchQueue;
use crate::event::{Command, ConnectInfo, Event};
use crate::listener::Listener;
use crate::loop_handle::LoopHandle;
use crate::protocols::{FrameSink, Protocol};
use crate::stats::LoopStats;
use crate::transport::Transport;
use protocols::{ProtocolTable, SERVER_PROTOCOL};

mod close;
mod dial;
mod protocols;
mod read;
mod timeouts;
mod write;

const WAKER: Token = Token(usize::MAX);
const LISTENER: Token = Token(usize::MAX - 1);

/// Reads per readiness event before other connections get their turn.
const READ_BUDGET: usize = 16;
/// How often a loop holding spare send buffers looks whether they are still used.
const TRIM_INTERVAL: Duration = Duration::from_millis(250);

/// One reactor thread's state. Built on the caller's thread, then moved into its own thread
/// by [`EventLoop::run`].
pub(crate) struct EventLoop {
    index: u32,
    poll: Poll,
    handle: Arc<LoopHandle>,
    conns: Slab<Conn>,
    /// This loop's own SO_REUSEPORT listener, if any.
    listener: Option<Listener>,
    /// The framings of its connections.
    protocols: ProtocolTable,
    queue: Arc<DispatchQueue>,
    config: Arc<Config>,
    ids: Arc<AtomicU64>,
    /// Where reads land: empty, with `read_buffer_size` bytes of capacity.
    scratch: Vec<u8>,
    frames: FrameSink,
    events_out: Vec<Event>,
    commands: Vec<Command>,
    /// Connections not read because the dispatcher was behind.
    deferred_reads: Vec<usize>,
    /// Connections that spent their read budget and still have bytes.
    more_to_read: VecDeque<usize>,
    quiesced: bool,
    draining: bool,
    clock: Clock,
    /// The time of this iteration, as an `Instant` and on the loop's clock.
    instant: Instant,
    now: Millis,
    /// When each connection next needs attention (timeouts).
    deadlines: Deadlines,
    /// When to look at the spare send buffers again (NEVER: there are none).
    next_trim: Millis,
    accepting: Accepting,
    /// When to accept again without a readiness event (batch full, or after a backoff).
    accept_again_at: Option<Instant>,
    /// Accepting waits until the dispatcher catches up.
    accept_deferred: bool,
    write_buffered: usize,
    /// Bytes read in this iteration of the loop, against `Config::batch_bytes`.
    batch_read: usize,
}

impl EventLoop {
    pub(crate) fn new(
        index: u32,
        listener: Option<Listener>,
        protocol: Arc<dyn Protocol>,
        queue: Arc<DispatchQueue>,
        config: Arc<Config>,
        ids: Arc<AtomicU64>,
    ) -> io::Result<(EventLoop, Arc<LoopHandle>)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let handle = Arc::new(LoopHandle::new(index, waker));
        let listener = match listener {
            Some(mut listener) => {
                poll.registry()
                    .register(&mut listener, LISTENER, Interest::READABLE)?;
                Some(listener)
            }
            None => None,
        };
        let instant = Instant::now();
        let clock = Clock::new(instant);
        let event_loop = EventLoop {
            index,
            poll,
            handle: handle.clone(),
            conns: Slab::new(),
            listener,
            protocols: ProtocolTable::new(protocol, config.max_input_buffer),
            queue,
            scratch: Vec::with_capacity(config.read_buffer_size),
            config,
            ids,
            frames: FrameSink::new(),
            batch_read: 0,
            events_out: Vec::new(),
            commands: Vec::new(),
            deferred_reads: Vec::new(),
            more_to_read: VecDeque::new(),
            quiesced: false,
            draining: false,
            clock,
            instant,
            now: clock.millis(instant),
            deadlines: Deadlines::default(),
            next_trim: Millis::NEVER,
            accepting: Accepting::default(),
            accept_again_at: None,
            accept_deferred: false,
            write_buffered: 0,
        };
        Ok((event_loop, handle))
    }

    /// Runs until drained after [`Command::Drain`]. Always ends with [`Event::LoopExited`].
    pub(crate) fn run(mut self) {
        let result = self.run_inner();
        if let Err(err) = result {
            log::error!("pygev: loop {} failed: {err}", self.index);
            self.abandon_dials();
            let tokens: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
            for token in tokens {
                self.close_now(token, CloseCause::Done);
            }
        }
        self.handle.close();
        self.events_out.push(Event::LoopExited {
            loop_index: self.index,
        });
        self.queue.push(&mut self.events_out);
    }

    fn run_inner(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let mut timeout = self.poll_timeout();
            if timeout != Some(Duration::ZERO) && !self.handle.may_sleep() {
                timeout = Some(Duration::ZERO); // commands are waiting
            }
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.instant = Instant::now();
            self.now = self.clock.millis(self.instant);
            self.batch_read = 0;
            LoopStats::add(&self.handle.stats.wakeups, 1);
            // Every iteration looks at the mailbox: a loop that was not sleeping got no
            // wake-up for what was posted meanwhile.
            self.drain_mailbox()?;
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    Token(token) => {
                        // NOTE: a dialed socket still connecting reports writable once
                        // connected, or an error: both paths look for it (no extra lookup).
                        if event.is_writable() {
                            self.on_writable(token);
                        }
                        let hangup = event.is_read_closed() || event.is_error();
                        if event.is_readable() || hangup {
                            if let Some(conn) = self.conns.get_mut(token) {
                                if conn.has(flag::CONNECTING) {
                                    self.dial_ready(token);
                                    continue;
                                }
                                conn.flags |= flag::READ_READY;
                                if hangup {
                                    conn.flags |= flag::HANGUP_SEEN;
                                    if conn.has(flag::PAUSED_BY_US) {
                                        self.hangup_while_paused(token);
                                        continue;
                                    }
                                }
                                if self.more_to_read.is_empty() {
                                    self.read(token);
                                } else {
                                    self.read_later(token); // behind those already waiting
                                }
                            }
                        }
                    }
                }
            }
            self.read_leftovers();
            if self.accept_again_at.is_some_and(|t| t <= self.instant) {
                self.accept();
            }
            self.expire_deadlines();
            if self.now >= self.next_trim {
                self.trim_spares();
            }
            self.handle
                .stats
                .write_buffered
                .store(self.write_buffered as u64, Ordering::Relaxed);
            self.queue.push(&mut self.events_out);
            if self.batch_full() {
                // NOTE: the rest is read in the next iteration. Yielding first lets a
                // dispatcher that shares this CPU handle the batch while its bytes are still
                // in cache (raw echo of 4 KiB messages: 11% more throughput than one batch of
                // everything readable); on an idle CPU the yield returns at once.
                std::thread::yield_now();
            }
            if self.draining && self.conns.is_empty() {
                return Ok(());
            }
        }
    }

    /// How long `poll` may sleep: until the next deadline, retry or trim; for ever when
    /// there is none (an idle loop with idle connections does no work at all).
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.more_to_read.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut until = self.next_trim;
        if let Some(next) = self.deadlines.next() {
            until = until.min(next);
        }
        if let Some(t) = self.accept_again_at {
            until = until.min(self.clock.millis(t));
        }
        if until.is_never() {
            return None;
        }
        let now = self.clock.millis(Instant::now());
        // Rounded up: waking a millisecond early would find nothing due and spin.
        Some(until.since(now) + Duration::from_micros(500))
    }

    /// Frees the spare send buffers if none was used since the last look.
    fn trim_spares(&mut self) {
        self.handle.trim_spares();
        self.next_trim = if self.handle.has_spares() {
            self.now.after(TRIM_INTERVAL)
        } else {
            Millis::NEVER
        };
    }

    // ---- mailbox ----------------------------------------------------------------------

    fn drain_mailbox(&mut self) -> io::Result<()> {
        let mut commands = std::mem::take(&mut self.commands);
        let mut spent = Vec::new();
        self.handle.take(&mut commands);
        for command in commands.drain(..) {
            match command {
                Command::Register { transport, peer } => self.register(transport, peer, true),
                Command::Connect {
                    id,
                    address,
                    timeout,
                    protocol,
                } => self.dial(id, address, timeout, protocol),
                Command::Send {
                    token,
                    id,
                    data,
                    packed,
                    kind,
                } => {
                    self.send(token, id, &data, packed, kind);
                    if packed {
                        spent.push(data);
                    }
                }
                Command::Control { token, id, control } => self.control(token, id, control),
                Command::ShutdownWrite { token, id } => {
                    if let Some(conn) = self.conn_mut(token, id) {
                        conn.flags |= flag::SHUTDOWN_PENDING;
                        self.flush(token as usize);
                    }
                }
                Command::Close { token, id } => {
                    if self.conn_mut(token, id).is_some() {
                        let deadline = self.now.after(self.config.drain_timeout);
                        self.begin_close(token as usize, deadline);
                    }
                }
                Command::Abort { token, id, reason } => {
                    if self.conn_mut(token, id).is_some() {
                        let cause = reason.map_or(CloseCause::Reset, CloseCause::Abort);
                        self.close_now(token as usize, cause);
                    }
                }
                Command::Resume => self.resume_deferred(),
                Command::Unthrottle { token, id } => self.unthrottle(token, id),
                Command::Quiesce => self.quiesce()?,
                Command::Drain { deadline } => self.drain(deadline),
            }
        }
        self.commands = commands;
        if !spent.is_empty() {
            self.handle.recycle(&mut spent);
            if self.next_trim.is_never() {
                self.next_trim = self.now.after(TRIM_INTERVAL);
            }
        }
        Ok(())
    }

    fn conn_mut(&mut self, token: u32, id: u64) -> Option<&mut Conn> {
        self.conns
            .get_mut(token as usize)
            .filter(|conn| conn.id == id)
    }

    fn quiesce(&mut self) -> io::Result<()> {
        self.quiesced = true;
        self.abandon_dials();
        if let Some(mut listener) = self.listener.take() {
            self.poll.registry().deregister(&mut listener)?;
        }
        self.queue_event(Event::Quiesced {
            loop_index: self.index,
        });
        Ok(())
    }

    fn drain(&mut self, deadline: Instant) {
        self.draining = true;
        self.abandon_dials();
        let deadline = self.clock.millis(deadline);
        let tokens: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
        for token in tokens {
            self.begin_close(token, deadline);
        }
    }

    // ---- accepting --------------------------------------------------------------------

    fn accept(&mut self) {
        self.accept_again_at = None;
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        // Connect events count toward dispatch backpressure: new connections wait in the
        // kernel's backlog until the dispatcher catches up (then `Resume`).
        let room = self.handle.dispatch_room(self.config.dispatch_high_water);
        if room == 0 {
            self.accept_deferred = true;
            self.note_dispatch_paused();
            return;
        }
        let mut accepted = Vec::new();
        let next = self
            .accepting
            .accept(listener, &mut accepted, room, self.instant);
        for (transport, peer) in accepted {
            self.register(transport, peer, false);
        }
        self.accept_again_at = match next {
            AcceptNext::Idle => None,
            AcceptNext::Again => Some(self.instant),
            AcceptNext::RetryAt(until) => Some(until),
        };
    }

    /// Takes over an accepted connection. `charged`: the acceptor thread already counted
    /// its Connect event in dispatch backpressure.
    fn register(&mut self, mut transport: Transport, peer: Address, charged: bool) {
        let uncharge = |handle: &LoopHandle| {
            if charged {
                handle.dispatched_quietly(crate::event::EVENT_COST);
            }
        };
        let entry = self.conns.vacant_entry();
        let token = entry.key();
        if token >= LISTENER.0 {
            return uncharge(&self.handle); // cannot happen: the slab would need 2^64 entries
        }
        let local = match transport.local_addr() {
            Ok(local) => local,
            Err(_) => return uncharge(&self.handle), // already reset by the peer: drop it
        };
        if let Err(err) = self.poll.registry().register(
            &mut transport,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("pygev: could not register connection from {peer}: {err}");
            return uncharge(&self.handle);
        }
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let state = self.protocols.get(SERVER_PROTOCOL).new_state();
        let backlog = Arc::new(Backlog::default());
        entry.insert(Conn::new(transport, id, state, backlog, self.now));
        LoopStats::add(&self.handle.stats.accepted, 1);
        self.announce(token, peer, local, false, charged);
    }

    /// Tells the dispatcher that the connection in `token` is open (accepted, or dialed
    /// when `outgoing`), then starts its deadlines, or its close when the loop is stopping.
    /// `charged`: the acceptor thread already counted the Connect in dispatch backpressure.
    pub(super) fn announce(
        &mut self,
        token: usize,
        peer: Address,
        local: Address,
        outgoing: bool,
        charged: bool,
    ) {
        let conn = &self.conns[token];
        // The connection's own count holds its Connect until `on_connect` ran: a peer that
        // half-closes at once still gets what `on_connect` sends (a banner).
        conn.backlog.charge_dispatch(crate::event::EVENT_COST);
        let connect = Event::Connect {
            loop_index: self.index,
            token: token as u32,
            info: Box::new(ConnectInfo {
                id: conn.id,
                peer,
                local,
                credentials: conn.transport.peer_credentials(),
                backlog: conn.backlog.clone(),
                outgoing,
            }),
        };
        if charged {
            self.events_out.push(connect);
        } else {
            self.queue_event(connect);
        }
        if self.quiesced || self.draining {
            self.begin_close(token, self.now.after(self.config.drain_timeout));
        } else {
            self.schedule(token);
        }
    }

    /// Queues `event` for the dispatcher, charging its cost to dispatch backpressure.
    fn queue_event(&mut self, event: Event) {
        self.handle.charge_dispatch(event.dispatch_cost());
        self.events_out.push(event);
    }
}

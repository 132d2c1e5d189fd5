//! One reactor thread: a `mio::Poll`, its mailbox, its listener, and its connections.
//!
//! The loop polls, takes the mailbox's commands, accepts, and hands readiness and commands
//! to its [`Connections`] (`connection/`), which hold every connection's state and paths.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};

use crate::acceptor::{AcceptNext, Accepting};
use crate::clock::Millis;
use crate::close_reason::CloseReason;
use crate::config::Config;
use crate::connection::{flag, CloseCause, Connections, FIRST_LOOP_TOKEN};
use crate::dispatch_queue::DispatchQueue;
use crate::event::{Command, Event};
use crate::listener::Listener;
use crate::loop_handle::LoopHandle;
use crate::protocols::Protocol;
use crate::stats::LoopStats;

const WAKER: Token = Token(usize::MAX);
const LISTENER: Token = Token(FIRST_LOOP_TOKEN);

/// How often a loop holding spare send buffers looks whether they are still used.
const TRIM_INTERVAL: Duration = Duration::from_millis(250);

/// One reactor thread's state. Built on the caller's thread, then moved into its own thread
/// by [`EventLoop::run`].
pub(crate) struct EventLoop {
    poll: Poll,
    /// This loop's own SO_REUSEPORT listener, if any.
    listener: Option<Listener>,
    queue: Arc<DispatchQueue>,
    commands: Vec<Command>,
    /// When to look at the spare send buffers again (NEVER: there are none).
    next_trim: Millis,
    accepting: Accepting,
    /// When to accept again without a readiness event (batch full, or after a backoff).
    accept_again_at: Option<Instant>,
    /// Its connections, and everything their paths share.
    connections: Connections,
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
        // NOTE: the connections register and deregister their sockets through their own
        // handle on the poll (one more descriptor per loop).
        let registry = poll.registry().try_clone()?;
        let connections = Connections::new(index, registry, handle.clone(), protocol, config, ids);
        let event_loop = EventLoop {
            poll,
            listener,
            queue,
            commands: Vec::new(),
            next_trim: Millis::NEVER,
            accepting: Accepting::default(),
            accept_again_at: None,
            connections,
        };
        Ok((event_loop, handle))
    }

    /// Runs until drained after [`Command::Drain`]. Always ends with [`Event::LoopExited`].
    pub(crate) fn run(mut self) {
        let result = self.run_inner();
        let c = &mut self.connections;
        if let Err(err) = result {
            log::error!("pygev: loop {} failed: {err}", c.handle.index());
            c.abandon_dials();
            let tokens: Vec<usize> = c.conns.iter().map(|(t, _)| t).collect();
            for token in tokens {
                c.conns[token].note_close(CloseReason::Error);
                c.close_now(token, CloseCause::Done);
            }
        }
        c.handle.close();
        c.events_out.push(Event::LoopExited {
            loop_index: c.handle.index(),
        });
        self.queue.push(&mut c.events_out);
    }

    fn run_inner(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let mut timeout = self.poll_timeout();
            if timeout != Some(Duration::ZERO) && !self.connections.handle.may_sleep() {
                timeout = Some(Duration::ZERO); // commands are waiting
            }
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.connections.tick();
            LoopStats::add(&self.connections.handle.stats.wakeups, 1);
            // Every iteration looks at the mailbox: a loop that was not sleeping got no
            // wake-up for what was posted meanwhile.
            self.drain_mailbox()?;
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    Token(token) => self.ready(token, event),
                }
            }
            let c = &mut self.connections;
            c.read_leftovers();
            let accept_now = std::mem::take(&mut c.accept_wanted)
                || self.accept_again_at.is_some_and(|t| t <= c.instant);
            if accept_now {
                self.accept();
            }
            let c = &mut self.connections;
            c.expire_deadlines();
            if c.now >= self.next_trim {
                self.trim_spares();
            }
            let c = &mut self.connections;
            c.handle
                .stats
                .write_buffered
                .store(c.write_buffered as u64, Ordering::Relaxed);
            self.queue.push(&mut c.events_out);
            if c.batch_full() {
                // NOTE: the rest is read in the next iteration. Yielding first lets a
                // dispatcher that shares this CPU handle the batch while its bytes are still
                // in cache (raw echo of 4 KiB messages: 11% more throughput than one batch of
                // everything readable); on an idle CPU the yield returns at once.
                std::thread::yield_now();
            }
            if c.draining && c.conns.is_empty() {
                return Ok(());
            }
        }
    }

    /// Readiness of connection `token`.
    fn ready(&mut self, token: usize, event: &mio::event::Event) {
        let c = &mut self.connections;
        // NOTE: a dialed socket still connecting reports writable once connected, or an
        // error: both paths look for it (no extra lookup).
        if event.is_writable() {
            c.on_writable(token);
        }
        let hangup = event.is_read_closed() || event.is_error();
        if !(event.is_readable() || hangup) {
            return;
        }
        let Some(conn) = c.conns.get_mut(token) else {
            return;
        };
        if conn.has(flag::CONNECTING) {
            return c.dial_ready(token);
        }
        conn.flags |= flag::READ_READY;
        if hangup {
            conn.flags |= flag::HANGUP_SEEN;
            if conn.has(flag::PAUSED_BY_US) {
                return c.hangup_while_paused(token);
            }
        }
        if c.more_to_read.is_empty() {
            c.read(token);
        } else {
            c.read_later(token); // behind those already waiting
        }
    }

    /// How long `poll` may sleep: until the next deadline, retry or trim; for ever when
    /// there is none (an idle loop with idle connections does no work at all).
    fn poll_timeout(&self) -> Option<Duration> {
        let c = &self.connections;
        if !c.more_to_read.is_empty() || c.accept_wanted {
            return Some(Duration::ZERO);
        }
        let mut until = self.next_trim;
        if let Some(next) = c.deadlines.next() {
            until = until.min(next);
        }
        if let Some(t) = self.accept_again_at {
            until = until.min(c.clock.millis(t));
        }
        if until.is_never() {
            return None;
        }
        let now = c.clock.millis(Instant::now());
        // Rounded up: waking a millisecond early would find nothing due and spin.
        Some(until.since(now) + Duration::from_micros(500))
    }

    /// Frees the spare send buffers if none was used since the last look.
    fn trim_spares(&mut self) {
        let c = &self.connections;
        c.handle.trim_spares();
        self.next_trim = if c.handle.has_spares() {
            c.now.after(TRIM_INTERVAL)
        } else {
            Millis::NEVER
        };
    }

    // ---- mailbox ----------------------------------------------------------------------

    fn drain_mailbox(&mut self) -> io::Result<()> {
        let mut commands = std::mem::take(&mut self.commands);
        let mut spent = Vec::new();
        self.connections.handle.take(&mut commands);
        for command in commands.drain(..) {
            let c = &mut self.connections;
            match command {
                Command::Register { transport, peer } => c.register(transport, peer, true),
                Command::Connect {
                    id,
                    address,
                    timeout,
                    protocol,
                    tls,
                } => c.dial(id, address, timeout, protocol, tls),
                Command::Send {
                    token,
                    id,
                    data,
                    packed,
                    kind,
                } => {
                    c.send(token, id, &data, packed, kind);
                    if packed {
                        spent.push(data);
                    }
                }
                Command::Control { token, id, control } => c.control(token, id, control),
                Command::ShutdownWrite { token, id } => c.shutdown_write(token, id),
                Command::Close { token, id } => {
                    if c.conn_mut(token, id).is_some() {
                        let deadline = c.now.after(c.config.drain_timeout);
                        c.begin_close(token as usize, deadline, c.closer());
                    }
                }
                Command::Abort {
                    token,
                    id,
                    reason,
                    counted_as,
                } => {
                    if let Some(conn) = c.conn_mut(token, id) {
                        conn.note_close(counted_as);
                        let cause = reason.map_or(CloseCause::Reset, CloseCause::Abort);
                        c.close_now(token as usize, cause);
                    }
                }
                Command::Resume => c.resume_deferred(),
                Command::Unthrottle { token, id } => c.unthrottle(token, id),
                Command::PauseReading { token, id } => c.pause_reading(token, id),
                Command::WantDrain { token, id } => c.want_drain(token, id),
                Command::ResumeReading { token, id } => c.resume_reading(token, id),
                Command::Quiesce => self.quiesce()?,
                Command::Drain { deadline } => c.drain(deadline),
            }
        }
        self.commands = commands;
        let c = &self.connections;
        if !spent.is_empty() {
            c.handle.recycle(&mut spent);
            if self.next_trim.is_never() {
                self.next_trim = c.now.after(TRIM_INTERVAL);
            }
        }
        Ok(())
    }

    /// Stops accepting and reading; the dispatcher learns it from [`Event::Quiesced`].
    fn quiesce(&mut self) -> io::Result<()> {
        if let Some(mut listener) = self.listener.take() {
            self.poll.registry().deregister(&mut listener)?;
        }
        self.connections.quiesce();
        Ok(())
    }

    // ---- accepting --------------------------------------------------------------------

    fn accept(&mut self) {
        self.accept_again_at = None;
        let c = &mut self.connections;
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        // Connect events count toward dispatch backpressure: new connections wait in the
        // kernel's backlog until the dispatcher catches up (then `Resume`).
        let room = c.handle.dispatch_room(c.config.dispatch_high_water);
        if room == 0 {
            c.accept_deferred = true;
            c.note_dispatch_paused();
            return;
        }
        let mut accepted = Vec::new();
        let next = self
            .accepting
            .accept(listener, &mut accepted, room, c.instant);
        for (transport, peer) in accepted {
            c.register(transport, peer, false);
        }
        self.accept_again_at = match next {
            AcceptNext::Idle => None,
            AcceptNext::Again => Some(c.instant),
            AcceptNext::RetryAt(until) => Some(until),
        };
    }
}

//! One reactor thread: a `mio::Poll`, its connections, its mailbox.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::acceptor::{AcceptNext, Accepting};
use crate::config::Config;
use crate::dispatch_queue::DispatchQueue;
use crate::event::{Command, ConnectInfo, Event};
use crate::loop_handle::LoopHandle;
use crate::protocols::{FrameSink, Protocol, ProtocolError, ProtocolState};
use crate::ring_buffer::RingBuffer;
use crate::stats::LoopStats;

const WAKER: Token = Token(usize::MAX);
const LISTENER: Token = Token(usize::MAX - 1);

/// Reads per readiness event before other connections get their turn.
const READ_BUDGET: usize = 16;
/// How long a closing connection keeps discarding a still-sending peer's input.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// The same while the server stops, so that Ctrl+C stays prompt.
const STOP_LINGER_TIMEOUT: Duration = Duration::from_millis(250);
/// A peer that sent within this long before the close is taken to be still sending.
const LINGER_RECENT: Duration = Duration::from_secs(1);
/// How often a loop looks for idle connections and expired drain deadlines.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Connection state bits.
mod flag {
    /// The socket may have unread bytes (edge-triggered: remembered until WouldBlock).
    pub const READ_READY: u16 = 1;
    /// The last write hit WouldBlock; wait for a writable event.
    pub const WRITE_BLOCKED: u16 = 1 << 1;
    /// Output passed the high-water mark: not reading until it drains.
    pub const OUTPUT_FULL: u16 = 1 << 2;
    /// The peer sent EOF; nothing more to read.
    pub const PEER_EOF: u16 = 1 << 3;
    /// Closing: flush output, then close.
    pub const CLOSING: u16 = 1 << 4;
    /// Shut down the write side once output is flushed.
    pub const SHUTDOWN_PENDING: u16 = 1 << 5;
    /// The write side is shut down.
    pub const WRITE_SHUT: u16 = 1 << 6;
    /// Waiting in the deferred-read list (dispatch backpressure).
    pub const DEFERRED: u16 = 1 << 7;
    /// Waiting in the more-to-read list (read budget spent).
    pub const MORE_TO_READ: u16 = 1 << 8;
    /// epoll reported the peer's FIN (or an error): read on to EOF, even after short reads.
    pub const HANGUP_SEEN: u16 = 1 << 9;
    /// Output flushed and write side shut; discarding input until the peer's EOF, so that
    /// closing with unread input (which sends RST) cannot destroy what we sent.
    pub const LINGERING: u16 = 1 << 10;
    /// The protocol stopped reading; the dispatcher ends the connection (WebSocket close).
    pub const READ_STOPPED: u16 = 1 << 11;
}

struct Conn {
    stream: TcpStream,
    id: u64,
    flags: u16,
    input: RingBuffer,
    output: RingBuffer,
    state: ProtocolState,
    last_active: Instant,
    /// Last time bytes arrived (a peer that sent recently may still be sending).
    last_read: Instant,
    /// Set while closing: when to give up on flushing.
    close_deadline: Option<Instant>,
}

impl Conn {
    fn has(&self, bits: u16) -> bool {
        self.flags & bits != 0
    }

    fn can_read(&self) -> bool {
        !self.has(flag::OUTPUT_FULL | flag::PEER_EOF | flag::CLOSING | flag::READ_STOPPED)
    }
}

/// Why a connection is closed right away.
enum CloseCause {
    /// Normal end: flushed, peer gone, idle, or stop.
    Done,
    /// Something the log should say.
    Error(String),
}

/// One reactor thread's state. Built on the caller's thread, then moved into its own thread
/// by [`EventLoop::run`].
pub(crate) struct EventLoop {
    index: u32,
    poll: Poll,
    handle: Arc<LoopHandle>,
    conns: Slab<Conn>,
    /// This loop's own SO_REUSEPORT listener, if any.
    listener: Option<TcpListener>,
    protocol: Arc<dyn Protocol>,
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
    now: Instant,
    next_sweep: Instant,
    accepting: Accepting,
    /// When to accept again without a readiness event (batch full, or after a backoff).
    accept_again_at: Option<Instant>,
    write_buffered: usize,
    /// Bytes read in this iteration of the loop, against `Config::batch_bytes`.
    batch_read: usize,
}

impl EventLoop {
    pub(crate) fn new(
        index: u32,
        listener: Option<std::net::TcpListener>,
        protocol: Arc<dyn Protocol>,
        queue: Arc<DispatchQueue>,
        config: Arc<Config>,
        ids: Arc<AtomicU64>,
    ) -> io::Result<(EventLoop, Arc<LoopHandle>)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let handle = Arc::new(LoopHandle::new(index, waker));
        let listener = match listener {
            Some(std_listener) => {
                std_listener.set_nonblocking(true)?;
                let mut listener = TcpListener::from_std(std_listener);
                poll.registry()
                    .register(&mut listener, LISTENER, Interest::READABLE)?;
                Some(listener)
            }
            None => None,
        };
        let now = Instant::now();
        let event_loop = EventLoop {
            index,
            poll,
            handle: handle.clone(),
            conns: Slab::new(),
            listener,
            protocol,
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
            now,
            next_sweep: now + SWEEP_INTERVAL,
            accepting: Accepting::default(),
            accept_again_at: None,
            write_buffered: 0,
        };
        Ok((event_loop, handle))
    }

    fn sweep_interval(&self) -> Duration {
        let idle = match self.config.idle_timeout {
            Some(idle) => (idle / 8).clamp(Duration::from_millis(5), SWEEP_INTERVAL),
            None => SWEEP_INTERVAL,
        };
        self.protocol.tick_interval().map_or(idle, |t| t.min(idle))
    }

    /// Runs until drained after [`Command::Drain`]. Always ends with [`Event::LoopExited`].
    pub(crate) fn run(mut self) {
        let result = self.run_inner();
        if let Err(err) = result {
            log::error!("pygev: loop {} failed: {err}", self.index);
            let tokens: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
            for token in tokens {
                self.close_now(token, CloseCause::Done);
            }
        }
        self.handle.drop_spares();
        self.events_out.push(Event::LoopExited {
            loop_index: self.index,
        });
        self.queue.push(&mut self.events_out);
    }

    fn run_inner(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let mut timeout = self.poll_timeout();
            if !timeout.is_zero() && !self.handle.may_sleep() {
                timeout = Duration::ZERO; // commands are waiting
            }
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.now = Instant::now();
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
                        if event.is_writable() {
                            if let Some(conn) = self.conns.get_mut(token) {
                                conn.flags &= !flag::WRITE_BLOCKED;
                                self.flush(token);
                            }
                        }
                        let hangup = event.is_read_closed() || event.is_error();
                        if event.is_readable() || hangup {
                            if let Some(conn) = self.conns.get_mut(token) {
                                conn.flags |= flag::READ_READY;
                                if hangup {
                                    conn.flags |= flag::HANGUP_SEEN;
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
            if self.accept_again_at.is_some_and(|t| t <= self.now) {
                self.accept();
            }
            if self.now >= self.next_sweep {
                self.sweep();
                self.next_sweep = self.now + self.sweep_interval();
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

    fn poll_timeout(&self) -> Duration {
        if !self.more_to_read.is_empty() {
            return Duration::ZERO;
        }
        let mut until = self.next_sweep;
        if let Some(t) = self.accept_again_at {
            until = until.min(t);
        }
        until.saturating_duration_since(Instant::now())
    }

    // ---- mailbox ----------------------------------------------------------------------

    fn drain_mailbox(&mut self) -> io::Result<()> {
        let mut commands = std::mem::take(&mut self.commands);
        let mut spent = Vec::new();
        self.handle.take(&mut commands);
        for command in commands.drain(..) {
            match command {
                Command::Register { stream, peer } => self.register(stream, peer),
                Command::Send {
                    token,
                    id,
                    data,
                    packed,
                } => {
                    self.send(token, id, &data, packed);
                    if packed {
                        spent.push(data);
                    }
                }
                Command::ShutdownWrite { token, id } => {
                    if let Some(conn) = self.conn_mut(token, id) {
                        conn.flags |= flag::SHUTDOWN_PENDING;
                        self.flush(token as usize);
                    }
                }
                Command::Close { token, id } => {
                    if self.conn_mut(token, id).is_some() {
                        self.begin_close(token as usize, self.now + self.config.drain_timeout);
                    }
                }
                Command::Resume => self.resume_deferred(),
                Command::Quiesce => self.quiesce()?,
                Command::Drain { deadline } => self.drain(deadline),
            }
        }
        self.commands = commands;
        self.handle.recycle(&mut spent);
        Ok(())
    }

    fn conn_mut(&mut self, token: u32, id: u64) -> Option<&mut Conn> {
        self.conns
            .get_mut(token as usize)
            .filter(|conn| conn.id == id)
    }

    fn quiesce(&mut self) -> io::Result<()> {
        self.quiesced = true;
        if let Some(mut listener) = self.listener.take() {
            self.poll.registry().deregister(&mut listener)?;
        }
        self.events_out.push(Event::Quiesced {
            loop_index: self.index,
        });
        Ok(())
    }

    fn drain(&mut self, deadline: Instant) {
        self.draining = true;
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
        let mut accepted = Vec::new();
        let next = self.accepting.accept(listener, &mut accepted, self.now);
        for (stream, peer) in accepted {
            self.register(stream, peer);
        }
        self.accept_again_at = match next {
            AcceptNext::Idle => None,
            AcceptNext::Again => Some(self.now),
            AcceptNext::RetryAt(until) => Some(until),
        };
    }

    fn register(&mut self, mut stream: TcpStream, peer: std::net::SocketAddr) {
        let entry = self.conns.vacant_entry();
        let token = entry.key();
        if token >= LISTENER.0 {
            return; // cannot happen: the slab would need 2^64 entries
        }
        let local = match stream.local_addr() {
            Ok(local) => local,
            Err(_) => return, // already reset by the peer: drop it
        };
        if let Err(err) = self.poll.registry().register(
            &mut stream,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("pygev: could not register connection from {peer}: {err}");
            return;
        }
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        entry.insert(Conn {
            stream,
            id,
            flags: 0,
            input: RingBuffer::new(),
            output: RingBuffer::new(),
            state: self.protocol.new_state(),
            last_active: self.now,
            last_read: self.now,
            close_deadline: None,
        });
        LoopStats::add(&self.handle.stats.accepted, 1);
        self.events_out.push(Event::Connect {
            loop_index: self.index,
            token: token as u32,
            info: Box::new(ConnectInfo { id, peer, local }),
        });
        if self.quiesced {
            self.begin_close(token, self.now + self.config.drain_timeout);
        }
    }

    // ---- reading ----------------------------------------------------------------------

    fn dispatch_backlogged(&self) -> bool {
        self.handle.pending_dispatch.load(Ordering::SeqCst) > self.config.dispatch_high_water
    }

    fn read(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        if conn.has(flag::LINGERING) {
            self.linger(token);
            return;
        }
        if self.quiesced || !conn.can_read() || !conn.has(flag::READ_READY) {
            return;
        }
        for _ in 0..READ_BUDGET {
            if self.batch_full() {
                break;
            }
            if self.dispatch_backlogged() {
                self.defer_read(token);
                return;
            }
            let conn = &mut self.conns[token];
            match read_into_spare(&conn.stream, &mut self.scratch) {
                Ok(0) => {
                    conn.flags = (conn.flags | flag::PEER_EOF) & !flag::READ_READY;
                    self.events_out.push(Event::PeerClosed {
                        loop_index: self.index,
                        token: token as u32,
                    });
                    return;
                }
                Ok(n) => {
                    self.batch_read += n;
                    conn.last_active = self.now;
                    conn.last_read = self.now;
                    LoopStats::add(&self.handle.stats.bytes_in, n as u64);
                    if let Err(cause) = self.feed(token, n) {
                        self.close_now(token, cause);
                        return;
                    }
                    if !self.conns.get(token).is_some_and(Conn::can_read) {
                        return; // the protocol closed it (or its reply filled the output)
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

    /// Whether this iteration has read its `batch_bytes`.
    fn batch_full(&self) -> bool {
        self.batch_read >= self.config.batch_bytes
    }

    /// Reads `token` in the next iteration, which polls without waiting.
    fn read_later(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        if !conn.has(flag::MORE_TO_READ) {
            conn.flags |= flag::MORE_TO_READ;
            self.more_to_read.push_back(token);
        }
    }

    /// Runs the protocol over the `n` bytes just read into the scratch buffer (after any
    /// leftover), and leaves the scratch buffer empty.
    fn feed(&mut self, token: usize, n: usize) -> Result<(), CloseCause> {
        let conn = &mut self.conns[token];
        let result = if conn.input.is_empty() && self.protocol.is_passthrough() {
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
                self.protocol
                    .unpack(&mut conn.state, data, &mut self.frames)
                    .and_then(|used| checked_use(used, data.len()))
                    .map(|used| conn.input.write(&data[used..]))
            } else {
                let input = conn.input.write_contiguous(data);
                let len = input.len();
                self.protocol
                    .unpack(&mut conn.state, input, &mut self.frames)
                    .and_then(|used| checked_use(used, len))
                    .map(|used| conn.input.retrieve(used))
            }
        };
        self.scratch.clear();
        let count = self.frames.len();
        let (loop_index, token32) = (self.index, token as u32);
        let event = self.frames.take().map(|taken| match taken {
            Ok(data) => Event::Message {
                loop_index,
                token: token32,
                data,
            },
            Err(frames) => Event::Messages {
                loop_index,
                token: token32,
                frames,
            },
        });
        if let Some(event) = event {
            self.handle
                .pending_dispatch
                .fetch_add(event.held_bytes(), Ordering::SeqCst);
            LoopStats::add(&self.handle.stats.messages_in, count as u64);
            self.events_out.push(event);
        }
        if let Err(err) = result {
            self.frames.take_actions();
            self.frames.take_stop();
            return Err(CloseCause::Error(format!(
                "{} (protocol {}, connection {})",
                err,
                self.protocol.name(),
                conn.id
            )));
        }
        if conn.input.len() > self.config.max_input_buffer {
            self.frames.take_actions();
            self.frames.take_stop();
            return Err(CloseCause::Error(format!(
                "pygev: connection {} holds {} bytes of unparsed input, over max_input_buffer {}",
                conn.id,
                conn.input.len(),
                self.config.max_input_buffer
            )));
        }
        if self.frames.has_actions() {
            if let Some(error) = self.frames.take_stop() {
                conn.flags |= flag::READ_STOPPED;
                if let Some(message) = error {
                    log::warn!("{message} (connection {})", conn.id);
                }
            }
            let (reply, close) = self.frames.take_actions();
            self.protocol_actions(token, &reply, close);
        }
        Ok(())
    }

    /// Does what the protocol asked for itself: writes its reply (ahead of anything sent
    /// later), then closes if it asked to, logging what the peer did wrong.
    fn protocol_actions(&mut self, token: usize, reply: &[u8], close: Option<Option<String>>) {
        let id = self.conns[token].id;
        if !reply.is_empty() && !self.conns[token].has(flag::WRITE_SHUT | flag::SHUTDOWN_PENDING) {
            self.write_out(token, reply);
        }
        if let Some(error) = close {
            if let Some(message) = error {
                log::warn!("{message} (connection {id})");
            }
            if self.conns.contains(token) {
                self.begin_close(token, self.now + self.config.drain_timeout);
            }
        }
    }

    fn defer_read(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        if !conn.has(flag::DEFERRED) {
            conn.flags |= flag::DEFERRED;
            self.deferred_reads.push(token);
        }
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

    fn resume_deferred(&mut self) {
        let tokens = std::mem::take(&mut self.deferred_reads);
        for token in &tokens {
            if let Some(conn) = self.conns.get_mut(*token) {
                conn.flags &= !flag::DEFERRED;
            }
        }
        for token in tokens {
            if self.conns.contains(token) {
                self.read(token);
            }
        }
    }

    /// Reads the connections left over from earlier iterations, oldest first, until the
    /// batch is full; a connection that still has bytes goes to the back of the line.
    fn read_leftovers(&mut self) {
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

    // ---- writing ----------------------------------------------------------------------

    fn send(&mut self, token: u32, id: u64, data: &[u8], packed: bool) {
        let protocol = self.protocol.clone();
        let Some(conn) = self.conns.get_mut(token as usize).filter(|c| c.id == id) else {
            return;
        };
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
        } else {
            let mut out = Vec::with_capacity(data.len() + 16);
            if let Err(err) = protocol.pack(&mut conn.state, data, &mut out) {
                // As when the dispatcher packs: what was sent before still goes out.
                log::warn!(
                    "{err} (protocol {}, connection {}, packing a send)",
                    protocol.name(),
                    conn.id
                );
                self.begin_close(token as usize, self.now + self.config.drain_timeout);
                return;
            }
            self.write_out(token as usize, &out);
            if protocol.pack_resumes_input(data) && !self.quiesced {
                // Packing released input the protocol held back (a WebSocket handshake
                // accepted by the hook, with frames already behind it).
                let held = self
                    .conns
                    .get(token as usize)
                    .is_some_and(|c| !c.input.is_empty() && !c.has(flag::CLOSING));
                if held {
                    if let Err(cause) = self.feed(token as usize, 0) {
                        self.close_now(token as usize, cause);
                    }
                }
            }
        }
    }

    /// Writes `wire` (already in wire form) after any pending output.
    fn write_out(&mut self, token: usize, wire: &[u8]) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        // NOTE: the common case (nothing queued) writes straight from the command's buffer;
        // only what the socket does not take is copied into the output ring buffer.
        let mut written = 0;
        if conn.output.is_empty() && !conn.has(flag::WRITE_BLOCKED) {
            while written < wire.len() {
                match conn.stream.write(&wire[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        conn.flags |= flag::WRITE_BLOCKED;
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
        if conn.output.len() + rest.len() > self.config.max_write_buffer {
            let message = format!(
                "pygev: connection {} would have {} bytes of unsent output, over \
                 max_write_buffer {}; closing it (the peer is not reading)",
                conn.id,
                conn.output.len() + rest.len(),
                self.config.max_write_buffer
            );
            self.close_now(token, CloseCause::Error(message));
            return;
        }
        conn.output.write(rest);
        self.write_buffered += rest.len();
        self.flush(token);
    }

    /// Writes as much pending output as the socket takes, then applies what follows from
    /// the output's new size (resume reading, shut down, close).
    fn flush(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        while !conn.output.is_empty() && !conn.has(flag::WRITE_BLOCKED) {
            let before = conn.output.len();
            match conn.output.write_to(&mut conn.stream) {
                Ok(n) => {
                    self.write_buffered -= before - conn.output.len();
                    conn.last_active = self.now;
                    LoopStats::add(&self.handle.stats.bytes_out, n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.flags |= flag::WRITE_BLOCKED;
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
        if pending > self.config.max_write_buffer {
            let message = format!(
                "pygev: connection {} has {} bytes of unsent output, over max_write_buffer {}; \
                 closing it (the peer is not reading)",
                conn.id, pending, self.config.max_write_buffer
            );
            self.close_now(token, CloseCause::Error(message));
            return;
        }
        if pending > self.config.write_high_water {
            if !conn.has(flag::OUTPUT_FULL) {
                conn.flags |= flag::OUTPUT_FULL;
                LoopStats::add(&self.handle.stats.read_pauses, 1);
            }
            return;
        }
        if conn.has(flag::OUTPUT_FULL) && pending <= self.config.write_high_water / 2 {
            conn.flags &= !flag::OUTPUT_FULL;
            if conn.has(flag::READ_READY) {
                self.read(token);
                if !self.conns.contains(token) {
                    return;
                }
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
            let _ = conn.stream.shutdown(Shutdown::Write);
        }
    }

    // ---- closing ----------------------------------------------------------------------

    /// Stops reading and closes once output is flushed, or at `deadline`.
    fn begin_close(&mut self, token: usize, deadline: Instant) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        conn.flags |= flag::CLOSING;
        let deadline = conn.close_deadline.map_or(deadline, |d| d.min(deadline));
        conn.close_deadline = Some(deadline);
        if conn.output.is_empty() || conn.has(flag::WRITE_SHUT) {
            self.finish_close(token);
        } else {
            self.flush(token);
        }
    }

    /// Closes a connection whose output is flushed. If the peer is still sending, first
    /// shuts down the write side and lingers (discarding input until EOF, bounded by
    /// `LINGER_TIMEOUT` and the close deadline): closing with unread input makes the kernel
    /// send RST, and the peer would lose the tail of what we sent.
    fn finish_close(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        if conn.has(flag::PEER_EOF) {
            self.close_now(token, CloseCause::Done);
            return;
        }
        if !conn.has(flag::LINGERING) {
            let probe = read_into_spare(&conn.stream, &mut self.scratch);
            self.scratch.clear();
            let unread = match probe {
                Ok(0) => return self.close_now(token, CloseCause::Done), // EOF
                Ok(_) => true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                Err(_) => return self.close_now(token, CloseCause::Done),
            };
            let sending = self.now.duration_since(conn.last_read) < LINGER_RECENT;
            if !unread && !sending {
                // A quiet peer: a plain close loses nothing and ends promptly.
                return self.close_now(token, CloseCause::Done);
            }
            if !conn.has(flag::WRITE_SHUT) {
                let _ = conn.stream.shutdown(Shutdown::Write);
            }
            conn.flags |= flag::LINGERING | flag::WRITE_SHUT;
            let linger = if self.draining {
                STOP_LINGER_TIMEOUT
            } else {
                LINGER_TIMEOUT
            };
            let linger_until = self.now + linger;
            conn.close_deadline = Some(
                conn.close_deadline
                    .map_or(linger_until, |d| d.min(linger_until)),
            );
        }
        self.linger(token);
    }

    /// Discards a lingering connection's input; closes it at EOF (or on an error).
    fn linger(&mut self, token: usize) {
        for _ in 0..READ_BUDGET {
            let result = read_into_spare(&self.conns[token].stream, &mut self.scratch);
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

    fn close_now(&mut self, token: usize, cause: CloseCause) {
        let Some(mut conn) = self.conns.try_remove(token) else {
            return;
        };
        if let CloseCause::Error(message) = cause {
            log::warn!("{message}");
        }
        self.write_buffered -= conn.output.len();
        let _ = self.poll.registry().deregister(&mut conn.stream);
        drop(conn);
        LoopStats::add(&self.handle.stats.closed, 1);
        self.events_out.push(Event::Closed {
            loop_index: self.index,
            token: token as u32,
        });
    }

    /// Closes idle connections and connections whose drain deadline passed.
    fn sweep(&mut self) {
        self.handle.trim_spares();
        let now = self.now;
        let idle = self.config.idle_timeout;
        let mut expired = Vec::new();
        let mut idle_conns = Vec::new();
        for (token, conn) in self.conns.iter() {
            if let Some(deadline) = conn.close_deadline {
                if deadline <= now {
                    expired.push(token);
                }
            } else if idle.is_some_and(|idle| now.duration_since(conn.last_active) >= idle)
                && !conn.has(flag::DEFERRED | flag::OUTPUT_FULL)
            {
                // A connection we paused is busy, not idle.
                idle_conns.push(token);
            }
        }
        for token in expired {
            let id = self.conns[token].id;
            let pending = self.conns[token].output.len();
            let cause = if pending == 0 {
                CloseCause::Done // lingering peer that never sent EOF
            } else {
                CloseCause::Error(format!(
                    "pygev: connection {id} closed with {pending} bytes unsent: drain timeout"
                ))
            };
            self.close_now(token, cause);
        }
        for token in idle_conns {
            log::debug!(
                "pygev: closing connection {} after idle timeout",
                self.conns[token].id
            );
            self.begin_close(token, now + self.config.drain_timeout);
        }
        if self.protocol.tick_interval().is_some() {
            self.tick_protocol();
        }
    }

    /// Lets the protocol act on time (WebSocket keepalive pings) for every open connection.
    fn tick_protocol(&mut self) {
        let protocol = self.protocol.clone();
        let mut actions = Vec::new();
        for (token, conn) in self.conns.iter_mut() {
            // A connection we stopped reading is busy (or ending), not silent.
            if conn.has(flag::CLOSING | flag::DEFERRED | flag::OUTPUT_FULL | flag::READ_STOPPED) {
                continue;
            }
            let mut out = Vec::new();
            let result = protocol.tick(&mut conn.state, self.now, conn.last_read, &mut out);
            if !out.is_empty() || result.is_err() {
                actions.push((token, out, result.err()));
            }
        }
        for (token, out, error) in actions {
            if self.conns.contains(token) {
                let close = error.map(|e| Some(e.message().to_string()));
                self.protocol_actions(token, &out, close);
            }
        }
    }
}

/// Reads from `stream` into the spare capacity of `buf` (which must be empty), without
/// zeroing it first; returns the count, which is also `buf`'s new length.
fn read_into_spare(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    debug_assert!(buf.is_empty());
    let spare = buf.spare_capacity_mut();
    // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `buf`; read(2)
    // writes at most that many bytes into it and touches nothing else.
    let n = unsafe {
        libc::read(
            stream.as_raw_fd(),
            spare.as_mut_ptr().cast::<libc::c_void>(),
            spare.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: read(2) initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(n) };
    Ok(n)
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

fn reset_cause(err: &io::Error) -> CloseCause {
    match err.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => CloseCause::Done,
        _ => CloseCause::Error(format!("pygev: connection error: {err}")),
    }
}

//! Binding listeners and running the loop threads.

use std::io;
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::acceptor::Acceptor;
use crate::address::Address;
use crate::config::Config;
use crate::dispatch_queue::DispatchQueue;
use crate::event::{Command, Event};
use crate::event_loop::EventLoop;
use crate::listener::Listener;
use crate::loop_handle::LoopHandle;
use crate::protocols::Protocol;
use crate::tls::TlsTarget;

/// A bound server whose loops have not started yet.
///
/// Binding happens in [`Server::bind`], so the address is known (and errors such as
/// "address in use" surface) before anything runs. [`Server::start`] spawns the loop threads
/// and the acceptor; the caller then drains the [`DispatchQueue`] and drives shutdown through
/// the returned [`Running`].
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use pygev_core::{Config, Raw, Server};
///
/// let server = Server::bind("127.0.0.1:0", Config::default(), Arc::new(Raw)).unwrap();
/// assert_ne!(server.local_addr().unwrap().as_inet().unwrap().port(), 0);
/// ```
pub struct Server {
    config: Arc<Config>,
    protocol: Arc<dyn Protocol>,
    queue: Arc<DispatchQueue>,
    listeners: Vec<Listener>,
    /// What the listeners bound (`None`: a server that only dials).
    local_addr: Option<Address>,
    /// `close_listeners` was called: the server may not start.
    closed: bool,
    /// Connection ids, shared with the loops once started.
    ids: Arc<AtomicU64>,
}

impl Server {
    /// Validates `config`, resolves `address` (`"host:port"`, `"[::1]:0"`, `":1833"`,
    /// `"unix:/path"`, `"unix:@name"`) and binds: one listener, or one SO_REUSEPORT
    /// listener per loop (TCP only: a Unix socket is one listener, shared).
    pub fn bind(address: &str, config: Config, protocol: Arc<dyn Protocol>) -> io::Result<Server> {
        let mut server = Server::without_listener(config, protocol)?;
        let mut addr = Address::parse(address)?;
        let mut config = (*server.config).clone();
        if matches!(addr, Address::Unix(_)) {
            config.reuse_port = false;
        }
        let count = if config.reuse_port {
            config.num_loops
        } else {
            1
        };
        let mut listeners = Vec::with_capacity(count);
        for _ in 0..count {
            let listener = Listener::bind(&addr, &config)?;
            addr = listener.local_addr()?; // later listeners share the port picked first
            listeners.push(listener);
        }
        server.config = Arc::new(config);
        server.listeners = listeners;
        server.local_addr = Some(addr);
        Ok(server)
    }

    /// A server that listens on `fd`, a socket already listening (TCP or Unix), handed
    /// down by a parent process or systemd; it is closed with the server.
    pub fn adopt(fd: OwnedFd, config: Config, protocol: Arc<dyn Protocol>) -> io::Result<Server> {
        let mut server = Server::without_listener(config, protocol)?;
        let listener = Listener::adopt(fd)?;
        let mut config = (*server.config).clone();
        config.reuse_port = false; // one socket: one acceptor hands its connections out
        server.config = Arc::new(config);
        server.local_addr = Some(listener.local_addr()?);
        server.listeners = vec![listener];
        Ok(server)
    }

    /// A duplicate of the listening socket (before [`start`](Self::start)), so that other
    /// processes accept from the same socket; a Unix socket file is theirs to remove from
    /// then on. `None` without a listener, or with one SO_REUSEPORT listener per loop (other
    /// processes bind the port themselves).
    pub fn share_listener(&mut self) -> io::Result<Option<OwnedFd>> {
        match self.listeners.as_mut_slice() {
            [listener] => listener.share().map(Some),
            _ => Ok(None),
        }
    }

    /// A server with no listener: its loops serve the connections it dials
    /// ([`Running::connect`]) and nothing else.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use pygev_core::{Address, Config, Event, Raw, Server};
    ///
    /// let mut target = Server::bind("127.0.0.1:0", Config::default(), Arc::new(Raw)).unwrap();
    /// let _serving = target.start().unwrap();
    /// let mut dialer = Server::without_listener(Config::default(), Arc::new(Raw)).unwrap();
    /// assert!(dialer.local_addr().is_none());
    /// let running = dialer.start().unwrap();
    /// let id = running.next_id();
    /// let to = target.local_addr().unwrap().clone();
    /// running.connect(id, to, Duration::from_secs(5), None, None).unwrap();
    /// let (mut batch, mut due) = (Vec::new(), Vec::new());
    /// while batch.is_empty() {
    ///     dialer.queue().wait(&mut batch, &mut due, Duration::from_millis(50));
    /// }
    /// assert!(matches!(&batch[0], Event::Connect { info, .. } if info.id == id && info.outgoing));
    /// ```
    pub fn without_listener(config: Config, protocol: Arc<dyn Protocol>) -> io::Result<Server> {
        // NOTE: a connection may hold the largest frame its framing accepts: the loops raise
        // max_input_buffer per framing (see connection/protocols.rs), so a connection dialed
        // with a framing of its own keeps the limit the user set.
        config
            .validate()
            .map_err(|msg| io::Error::new(io::ErrorKind::InvalidInput, msg))?;
        Ok(Server {
            config: Arc::new(config),
            protocol,
            queue: Arc::new(DispatchQueue::new()),
            listeners: Vec::new(),
            local_addr: None,
            closed: false,
            ids: Arc::new(AtomicU64::new(1)),
        })
    }

    /// The address actually bound (with the real port when 0 was asked); `None` for a
    /// server without a listener.
    pub fn local_addr(&self) -> Option<&Address> {
        self.local_addr.as_ref()
    }

    /// The source of connection ids: ids for [`Command::Connect`] may be taken from it
    /// before the server starts, as [`Running::next_id`] does after.
    pub fn ids(&self) -> &Arc<AtomicU64> {
        &self.ids
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The queue the loops fill and the dispatcher drains.
    pub fn queue(&self) -> &Arc<DispatchQueue> {
        &self.queue
    }

    /// Closes the listening sockets without starting (a `stop()` before `start()`).
    pub fn close_listeners(&mut self) {
        self.listeners.clear();
        self.closed = true;
    }

    /// Spawns the loop threads (and the acceptor, unless each loop has its own listener).
    pub fn start(&mut self) -> io::Result<Running> {
        if self.closed {
            return Err(io::Error::other("pygev: server was stopped"));
        }
        self.closed = true; // started once: the listeners move to the loops
        let ids = self.ids.clone();
        let mut listeners = std::mem::take(&mut self.listeners).into_iter();
        let shared_listener = if self.config.reuse_port {
            None
        } else {
            listeners.next()
        };
        let mut running = Running {
            loops: Vec::new(),
            threads: Vec::new(),
            acceptor: None,
            ids: ids.clone(),
            next_loop: AtomicUsize::new(0),
        };
        let mut loops = Vec::new();
        for index in 0..self.config.num_loops {
            let (event_loop, handle) = EventLoop::new(
                index as u32,
                listeners.next(),
                self.protocol.clone(),
                self.queue.clone(),
                self.config.clone(),
                ids.clone(),
            )?;
            loops.push(event_loop);
            running.loops.push(handle);
        }
        for (index, event_loop) in loops.into_iter().enumerate() {
            let queue = self.queue.clone();
            let thread = std::thread::Builder::new()
                .name(format!("pygev-loop-{index}"))
                .spawn(move || {
                    if catch_unwind(AssertUnwindSafe(|| event_loop.run())).is_err() {
                        log::error!("pygev: loop {index} panicked; its connections are lost");
                        queue.push(&mut vec![Event::LoopExited {
                            loop_index: index as u32,
                        }]);
                    }
                })?;
            running.threads.push(thread);
        }
        if let Some(listener) = shared_listener {
            running.acceptor = Some(Acceptor::spawn(
                listener,
                running.loops.clone(),
                self.config.strategy,
                self.config.dispatch_high_water,
            )?);
        }
        Ok(running)
    }
}

/// The threads of a started server, and the steps of its orderly shutdown.
///
/// Shutdown goes: [`stop_accepting`](Self::stop_accepting), [`quiesce`](Self::quiesce)
/// (each loop answers [`Event::Quiesced`] once every message it read is queued), the
/// dispatcher handles what is queued, then [`drain`](Self::drain) (each loop flushes and
/// closes its connections and answers [`Event::LoopExited`]), then [`join`](Self::join).
pub struct Running {
    loops: Vec<Arc<LoopHandle>>,
    threads: Vec<JoinHandle<()>>,
    acceptor: Option<Acceptor>,
    /// Connection ids, shared with the loops (accepted connections take theirs there).
    ids: Arc<AtomicU64>,
    /// The loop the next dialed connection goes to (round robin).
    next_loop: AtomicUsize,
}

impl Running {
    /// Handles to the loops, indexed by loop index.
    pub fn loops(&self) -> &[Arc<LoopHandle>] {
        &self.loops
    }

    /// A server-unique connection id, for [`Command::Connect`].
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Dials `address` from one of the loops (in turn) as connection `id` (see
    /// [`Running::next_id`]), framed by `protocol` (`None`: the server's), over TLS to
    /// `tls` when given; the outcome comes as an
    /// [`Event::Connect`] for that id (after the TLS handshake) or an
    /// [`Event::ConnectFailed`]. Fails at once only when no loop takes commands any more
    /// (the server ended).
    pub fn connect(
        &self,
        id: u64,
        address: Address,
        timeout: Duration,
        protocol: Option<Arc<dyn Protocol>>,
        tls: Option<TlsTarget>,
    ) -> io::Result<()> {
        let index = self.next_loop.fetch_add(1, Ordering::Relaxed) % self.loops.len();
        self.loops[index].post(Command::Connect {
            id,
            address,
            timeout,
            protocol,
            tls,
        })
    }

    /// Stops the acceptor thread and closes its listener; returns once it has ended.
    pub fn stop_accepting(&mut self) {
        if let Some(mut acceptor) = self.acceptor.take() {
            acceptor.stop();
        }
    }

    /// Tells every loop to stop reading and accepting.
    pub fn quiesce(&self) {
        self.broadcast(|| Command::Quiesce);
    }

    /// Tells every loop to flush and close its connections, forcibly at `deadline`.
    pub fn drain(&self, deadline: Instant) {
        self.broadcast(|| Command::Drain { deadline });
    }

    fn broadcast(&self, command: impl Fn() -> Command) {
        for handle in &self.loops {
            if let Err(e) = handle.post(command()) {
                log::error!("pygev: could not wake loop {}: {e}", handle.index());
            }
        }
    }

    /// Waits for the loop threads to end.
    pub fn join(&mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Running {
    /// A `Running` dropped without the orderly shutdown (the dispatcher failed) still closes
    /// every connection and ends its threads.
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.stop_accepting();
        self.drain(Instant::now());
        self.join();
    }
}

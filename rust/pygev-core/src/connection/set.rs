//! A loop's connections and what their paths share: the slab, the framings, the frame
//! sink and read buffer, the deadline heap, the read queues, the loop's clock, and the
//! events on their way to the dispatcher. The loop (`event_loop.rs`) owns one and hands it
//! readiness and commands; the paths themselves are `read.rs`, `write.rs`, `close.rs`,
//! `timeouts.rs` and `dial.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mio::{Interest, Registry, Token};
use slab::Slab;

use super::protocols::{ProtocolTable, SERVER_PROTOCOL};
use super::refusals::Refusals;
use super::Conn;
use crate::address::Address;
use crate::backlog::Backlog;
use crate::clock::{Clock, Millis};
use crate::close_reason::CloseReason;
use crate::config::Config;
use crate::deadlines::Deadlines;
use crate::event::{ConnectInfo, Event};
use crate::loop_handle::LoopHandle;
use crate::protocols::{FrameSink, Protocol};
use crate::stats::LoopStats;
use crate::transport::Transport;

/// Tokens at or past this one are the loop's own (listener, waker), never a connection's.
pub(crate) const FIRST_LOOP_TOKEN: usize = usize::MAX - 1;

/// Reads per readiness event before other connections get their turn.
pub(super) const READ_BUDGET: usize = 16;

/// One loop's connections.
pub(crate) struct Connections {
    pub(super) index: u32,
    /// Registers and deregisters sockets with the loop's poll.
    pub(super) registry: Registry,
    pub(crate) handle: Arc<LoopHandle>,
    pub(crate) conns: Slab<Conn>,
    /// The framings of its connections.
    pub(super) protocols: ProtocolTable,
    pub(crate) config: Arc<Config>,
    ids: Arc<AtomicU64>,
    /// Where reads land: empty, with `read_buffer_size` bytes of capacity.
    pub(super) scratch: Vec<u8>,
    /// Where TLS puts what it opened (then swapped with `scratch` while it is framed).
    pub(super) plaintext: Vec<u8>,
    /// Where TLS puts what it sealed, and what it answers, on its way to the socket.
    pub(super) sealed: Vec<u8>,
    pub(super) frames: FrameSink,
    /// What happened, for the dispatcher: queued once per loop iteration.
    pub(crate) events_out: Vec<Event>,
    /// Connections not read because the dispatcher was behind.
    pub(super) deferred_reads: Vec<usize>,
    /// Connections that spent their read budget and still have bytes.
    pub(crate) more_to_read: VecDeque<usize>,
    /// Reading and accepting stopped (the server stops).
    pub(crate) quiesced: bool,
    /// Every connection is closing; the loop ends with the last.
    pub(crate) draining: bool,
    pub(crate) clock: Clock,
    /// The time of this iteration, as an `Instant` and on the loop's clock.
    pub(crate) instant: Instant,
    pub(crate) now: Millis,
    /// When each connection next needs attention (timeouts).
    pub(crate) deadlines: Deadlines,
    /// Bytes waiting in output buffers, all connections together.
    pub(crate) write_buffered: usize,
    /// Bytes read in this iteration of the loop, against `Config::batch_bytes`.
    pub(crate) batch_read: usize,
    /// Accepting waits until the dispatcher catches up.
    pub(crate) accept_deferred: bool,
    /// Accepted connections in their TLS handshake (against `tls_max_handshakes`).
    pub(super) handshakes: usize,
    /// Connections refused for `tls_max_handshakes`, for the log.
    pub(super) over_handshakes: Refusals,
    /// The dispatcher caught up with accepting deferred: the loop accepts again.
    pub(crate) accept_wanted: bool,
    /// The clients' addresses from PROXY headers of connections still in their TLS
    /// handshake (announced with them once it completes).
    pub(super) proxied: HashMap<usize, Address>,
    /// Connections refused for not coming from a trusted proxy, for the log.
    pub(super) untrusted: Refusals,
    /// The local address last announced, shared with the next connection that has it.
    local: Option<Arc<Address>>,
}

impl Connections {
    pub(crate) fn new(
        index: u32,
        registry: Registry,
        handle: Arc<LoopHandle>,
        protocol: Arc<dyn Protocol>,
        config: Arc<Config>,
        ids: Arc<AtomicU64>,
    ) -> Self {
        let instant = Instant::now();
        let clock = Clock::new(instant);
        Connections {
            index,
            registry,
            handle,
            conns: Slab::new(),
            protocols: ProtocolTable::new(protocol, config.max_input_buffer),
            scratch: Vec::with_capacity(config.read_buffer_size),
            plaintext: Vec::new(),
            sealed: Vec::new(),
            config,
            ids,
            frames: FrameSink::new(),
            events_out: Vec::new(),
            deferred_reads: Vec::new(),
            more_to_read: VecDeque::new(),
            quiesced: false,
            draining: false,
            clock,
            instant,
            now: clock.millis(instant),
            deadlines: Deadlines::default(),
            write_buffered: 0,
            batch_read: 0,
            accept_deferred: false,
            accept_wanted: false,
            handshakes: 0,
            over_handshakes: Refusals::default(),
            proxied: HashMap::new(),
            untrusted: Refusals::default(),
            local: None,
        }
    }

    /// A new iteration of the loop begins now.
    pub(crate) fn tick(&mut self) {
        self.instant = Instant::now();
        self.now = self.clock.millis(self.instant);
        self.batch_read = 0;
    }

    pub(crate) fn conn_mut(&mut self, token: u32, id: u64) -> Option<&mut Conn> {
        self.conns
            .get_mut(token as usize)
            .filter(|conn| conn.id == id)
    }

    /// Reads nothing more and dials nothing more (the server stops); answers with
    /// [`Event::Quiesced`].
    pub(crate) fn quiesce(&mut self) {
        self.quiesced = true;
        self.abandon_dials();
        self.queue_event(Event::Quiesced {
            loop_index: self.index,
        });
    }

    /// Why a close the dispatcher asks for counts: the application's, or the stop's once
    /// the server stops (its WebSocket goodbyes, the handlers' last closes).
    pub(crate) fn closer(&self) -> CloseReason {
        if self.quiesced || self.draining {
            CloseReason::Stop
        } else {
            CloseReason::Local
        }
    }

    /// Closes every connection, flushing output until `deadline`.
    pub(crate) fn drain(&mut self, deadline: Instant) {
        self.draining = true;
        self.abandon_dials();
        let deadline = self.clock.millis(deadline);
        let tokens: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
        for token in tokens {
            self.begin_close(token, deadline, CloseReason::Stop);
        }
    }

    /// Takes over an accepted connection. `charged`: the acceptor thread already counted
    /// its Connect event in dispatch backpressure.
    pub(crate) fn register(&mut self, mut transport: Transport, peer: Address, charged: bool) {
        let uncharge = |handle: &LoopHandle| {
            if charged {
                handle.dispatched_quietly(crate::event::EVENT_COST);
            }
        };
        // Dropped before it counts as accepted: the acceptor's count of what it gave this
        // loop (for least_connections) takes it back.
        let refuse = |handle: &LoopHandle| {
            uncharge(handle);
            if charged {
                handle.assigned.fetch_sub(1, Ordering::Relaxed);
            }
        };
        if !self.proxy_admits(&peer) {
            let _ = transport.reset_on_close();
            return refuse(&self.handle);
        }
        let entry = self.conns.vacant_entry();
        let token = entry.key();
        if token >= FIRST_LOOP_TOKEN {
            return refuse(&self.handle); // cannot happen: the slab would need 2^64 entries
        }
        let local = match transport.local_addr() {
            Ok(local) => local,
            Err(_) => return refuse(&self.handle), // already reset by the peer: drop it
        };
        if let Err(err) = self.registry.register(
            &mut transport,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("pygev: could not register connection from {peer}: {err}");
            return refuse(&self.handle);
        }
        let session = match &self.config.tls {
            None => None,
            Some(_) if self.handshakes >= self.config.tls_max_handshakes => {
                self.refuse_handshake(&peer);
                let _ = transport.reset_on_close();
                let _ = self.registry.deregister(&mut transport);
                return refuse(&self.handle);
            }
            Some(tls) => match tls.session() {
                Ok(session) => Some(session),
                Err(err) => {
                    log::error!("pygev: no TLS session for a connection from {peer}: {err}");
                    let _ = self.registry.deregister(&mut transport);
                    return refuse(&self.handle);
                }
            },
        };
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let state = self.protocols.get(SERVER_PROTOCOL).new_state();
        let backlog = new_backlog(&self.config);
        entry.insert(Conn::new(transport, id, state, backlog, self.now));
        LoopStats::add(&self.handle.stats.accepted, 1);
        let header = self.await_proxy_header(token);
        if let Some(session) = session {
            // Announced once the handshake completed (and charged then).
            uncharge(&self.handle);
            return self.begin_handshake(token, session);
        }
        if !header {
            return self.announce(token, peer, local, false, charged);
        }
        // Announced once its header came (and charged then).
        uncharge(&self.handle);
        if self.quiesced || self.draining {
            self.conns[token].note_close(crate::close_reason::CloseReason::Stop);
            return self.close_now(token, super::CloseCause::Done);
        }
        self.schedule(token);
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
        let local = match &self.local {
            Some(shared) if **shared == local => shared.clone(),
            _ => self.local.insert(Arc::new(local)).clone(),
        };
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
                tls: conn.tls.as_ref().map(|tls| Box::new(tls.info())),
            }),
        };
        if charged {
            self.events_out.push(connect);
        } else {
            self.queue_event(connect);
        }
        if outgoing && !self.say_first(token) {
            return; // its framing could not open it: closed
        }
        if self.quiesced || self.draining {
            let deadline = self.now.after(self.config.drain_timeout);
            self.begin_close(token, deadline, CloseReason::Stop);
        } else {
            self.schedule(token);
        }
    }

    /// Writes what the connection's framing sends first (a WebSocket client's upgrade
    /// request); false when it failed and the connection was closed.
    fn say_first(&mut self, token: usize) -> bool {
        let conn = &mut self.conns[token];
        let protocol = self.protocols.get(conn.protocol).clone();
        let mut out = Vec::new();
        if let Err(err) = protocol.opening(&mut conn.state, &mut out) {
            let reason = format!(
                "{err} (protocol {}, connection {})",
                protocol.name(),
                conn.id
            );
            self.close_now(token, super::CloseCause::Abort(reason));
            return false;
        }
        if !out.is_empty() {
            self.write_out(token, &out);
        }
        self.conns.contains(token)
    }

    /// Queues `event` for the dispatcher, charging its cost to dispatch backpressure.
    pub(crate) fn queue_event(&mut self, event: Event) {
        self.handle.charge_dispatch(event.dispatch_cost());
        self.events_out.push(event);
    }
}

/// A new connection's backlog, with the server's write limits.
pub(crate) fn new_backlog(config: &Config) -> Arc<Backlog> {
    let backlog = Backlog::default();
    backlog.set_write_limits(config.write_high_water, config.write_low_water);
    Arc::new(backlog)
}

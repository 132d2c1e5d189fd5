//! The dispatcher: runs on the thread that called `Server.start()`, takes batches of events
//! from the loops and calls the Python handler for each, under one GIL acquisition per batch.
//!
//! This file holds what every mode shares (connections, callbacks, replies, failures,
//! timers); `drivers.rs` is how the two drivers (`start()`, `serve()`) take batches and
//! stop; `rounds.rs` cuts the work into bounded, fair rounds, and
//! `python_protocol.rs` holds the Python framing's buffers; `lifecycle.rs` is a
//! connection's life (opened, drained, closed) and the loops' own events. What differs by
//! mode is in `mode/`.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pygev_core::{Command, Config, Event};
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::callback_times::CallbackClock;
use crate::connection::Connection;
use crate::errors::Error;
use crate::logging;
use crate::ring_buffer::RingBuffer;
use crate::shared::{Packer, Shared};
use crate::slow_callbacks::{Slow, SlowCallbacks};

mod awaiting;
mod coroutine;
mod current_task;
mod drivers;
mod first_step;
mod lifecycle;
mod python_protocol;
mod rounds;

use awaiting::Awaits;
pub(crate) use awaiting::{HookRequest, Then};
use python_protocol::PartialFrame;
use rounds::Work;

#[derive(Clone, Copy, PartialEq, Eq)]
enum LoopPhase {
    Serving,
    Quiesced,
    Exited,
}

/// The handler's callbacks, looked up once.
pub(crate) struct Callbacks {
    pub(crate) on_connect: Py<PyAny>,
    pub(crate) on_message: Py<PyAny>,
    pub(crate) on_close: Py<PyAny>,
    /// A WebSocket handler's `on_handshake`, if it has one.
    pub(crate) on_handshake: Option<Py<PyAny>>,
    /// A WebSocket handler's `on_http_request`, if it has one.
    pub(crate) on_http_request: Option<Py<PyAny>>,
}

impl Callbacks {
    /// `handler`'s callbacks (`on_handshake` only when `websocket`); a `TypeError` when
    /// one is missing or not callable.
    pub(crate) fn of(handler: &Bound<'_, PyAny>, websocket: bool) -> PyResult<Callbacks> {
        let get = |name: &str| -> PyResult<Py<PyAny>> {
            match handler.getattr(name) {
                Ok(attr) if attr.is_callable() => Ok(attr.unbind()),
                _ => Err(crate::errors::Error::Type(format!(
                    "pygev: handler must have a callable {name}() (subclass pygev.Handler)"
                ))
                .into()),
            }
        };
        Ok(Callbacks {
            on_connect: get("on_connect")?,
            on_message: get("on_message")?,
            on_close: get("on_close")?,
            on_handshake: match websocket {
                true => handler.getattr("on_handshake").ok().map(Bound::unbind),
                false => None,
            },
            on_http_request: match websocket {
                true => handler.getattr("on_http_request").ok().map(Bound::unbind),
                false => None,
            },
        })
    }

    /// Visits the Python references for the GC.
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.on_connect)?;
        visit.call(&self.on_message)?;
        visit.call(&self.on_close)?;
        visit.call(self.on_handshake.as_ref())?;
        visit.call(self.on_http_request.as_ref())
    }
}

/// The dispatcher: what it keeps between batches ([`DispatchState`]) and, while it runs
/// one, the GIL token.
pub(crate) struct Dispatcher<'py> {
    py: Python<'py>,
    state: DispatchState,
}

impl std::ops::Deref for Dispatcher<'_> {
    type Target = DispatchState;

    fn deref(&self) -> &DispatchState {
        &self.state
    }
}

impl std::ops::DerefMut for Dispatcher<'_> {
    fn deref_mut(&mut self) -> &mut DispatchState {
        &mut self.state
    }
}

/// What the dispatcher keeps between batches: connections, callbacks, leftover work. It
/// holds no GIL token, so that a driver (asyncio) can keep it between its turns.
pub(crate) struct DispatchState {
    shared: Arc<Shared>,
    callbacks: Callbacks,
    /// Per loop, the connection objects indexed by token.
    conns: Vec<Vec<Option<Py<Connection>>>>,
    /// Per loop, dispatch cost of the events handled in the current batch.
    handled_cost: Vec<usize>,
    phases: Vec<LoopPhase>,
    drain_timeout: Duration,
    dispatch_high_water: usize,
    conn_dispatch_high_water: usize,
    /// Handler calls per batch at most.
    max_batch_events: usize,
    /// The handlers of outgoing connections given their own, by connection id.
    own_callbacks: HashMap<u64, Callbacks>,
    /// Work left over from earlier batches (bounded batches; see `rounds.rs`).
    pending: VecDeque<Work>,
    /// Open connections whose framing is written in Python (it runs here, over `inputs`).
    python_framed: usize,
    /// Per connection id, the bytes its Python framing has not taken yet.
    inputs: HashMap<u64, Py<RingBuffer>>,
    /// Per connection id, the part of a frame its Python framing holds.
    partial_frames: HashMap<u64, PartialFrame>,
    frame_timeout: Option<Duration>,
    max_input_buffer: usize,
    stopping: bool,
    /// The loops were told to drain (stopping caught up).
    drain_sent: bool,
    /// An exception to re-raise from `start()` once stopped (e.g. SystemExit).
    pending_error: Option<PyErr>,
    /// Callbacks that await (`awaiting.rs`).
    awaits: Awaits,
    /// Running work that was held: its loop had its credit when it was held.
    replaying: bool,
    /// When the stop was noticed.
    stopped_at: Option<Instant>,
    /// Watches for callbacks that hold the dispatcher too long.
    slow: SlowCallbacks,
    /// Times callbacks when the server asks for it.
    clock: CallbackClock,
}

impl DispatchState {
    /// Visits the Python references it holds between a driver's turns, for the GC.
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.callbacks.traverse(visit)?;
        for callbacks in self.own_callbacks.values() {
            callbacks.traverse(visit)?;
        }
        for conn in self.conns.iter().flatten().flatten() {
            visit.call(conn)?;
        }
        for buffer in self.inputs.values() {
            visit.call(buffer)?;
        }
        for partial in self.partial_frames.values() {
            partial.traverse(visit)?;
        }
        self.awaits.traverse(visit)
    }
}

impl<'py> Dispatcher<'py> {
    pub(crate) fn new(
        py: Python<'py>,
        shared: Arc<Shared>,
        callbacks: Callbacks,
        config: &Config,
        slow_callback_duration: Option<Duration>,
    ) -> PyResult<Self> {
        let num_loops = config.num_loops;
        let awaits = Awaits::new(py, shared.queue.clone())?;
        let state = DispatchState {
            python_framed: 0,
            inputs: HashMap::new(),
            partial_frames: HashMap::new(),
            frame_timeout: config.frame_timeout,
            max_input_buffer: config.max_input_buffer,
            drain_timeout: config.drain_timeout,
            dispatch_high_water: config.dispatch_high_water,
            conn_dispatch_high_water: config.conn_dispatch_high_water,
            max_batch_events: config.max_batch_events,
            pending: VecDeque::new(),
            own_callbacks: HashMap::new(),
            callbacks,
            conns: (0..num_loops).map(|_| Vec::new()).collect(),
            handled_cost: vec![0; num_loops],
            phases: vec![LoopPhase::Serving; num_loops],
            stopping: false,
            drain_sent: false,
            pending_error: None,
            awaits,
            replaying: false,
            stopped_at: None,
            slow: SlowCallbacks::new(slow_callback_duration),
            clock: CallbackClock::new(shared.callback_times.clone()),
            shared,
        };
        Ok(Dispatcher { py, state })
    }

    pub(crate) fn py(&self) -> Python<'py> {
        self.py
    }

    /// Whether a callback of `conn` awaits (its later input waits for it).
    pub(crate) fn awaits_for(&self, conn: &Py<Connection>) -> bool {
        self.awaits.holds(conn.get())
    }

    fn on_interrupt(&mut self, err: PyErr) {
        if err.is_instance_of::<PyKeyboardInterrupt>(self.py) {
            if !self.stopping {
                log::info!("pygev: interrupted (Ctrl+C); stopping the server");
            }
        } else if self.pending_error.is_none() {
            self.pending_error = Some(err);
        }
        self.shared.queue.request_stop();
    }

    /// Handles one bounded round of the work queued (see `rounds.rs`), then the due timers;
    /// then posts the batch's commands and gives the loops their credit.
    fn dispatch_batch(&mut self, batch: &mut Vec<Event>, due: &mut Vec<u64>) {
        let shared = self.shared.clone();
        let batch_in_progress = shared.begin_batch();
        self.clock.begin_batch();
        // Held work gets half the batch's calls at most, new work the rest.
        let bound = self.max_batch_events;
        let mut calls = self.resume_awaited(bound.div_ceil(2));
        calls += self.run_round(batch, bound.saturating_sub(calls));
        if !self.stopping {
            calls += due.len();
            for id in due.drain(..) {
                self.fire_timer(id);
            }
        }
        due.clear();
        self.leave_first_steps();
        drop(batch_in_progress); // posts the batch's commands
        let state = &mut self.state;
        if let Some(loops) = state.shared.loops.get() {
            for (handle, cost) in loops.iter().zip(state.handled_cost.iter_mut()) {
                let cost = std::mem::take(cost);
                if let Err(e) = handle.dispatched(cost, state.dispatch_high_water) {
                    if e.kind() != std::io::ErrorKind::NotConnected {
                        log::error!("pygev: could not wake loop {}: {e}", handle.index());
                    }
                }
            }
        }
        self.clock.end_batch();
        let stats = &self.shared.stats;
        stats.events.fetch_add(calls as u64, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.max_batch.fetch_max(calls as u64, Ordering::Relaxed);
    }

    /// Takes a handled event's cost off dispatch backpressure: the loop's, and for a
    /// message its connection's (which the loop then reads again if it had stopped).
    fn credit(&mut self, loop_index: u32, conn: Option<&Py<Connection>>, cost: usize) {
        self.credit_loop(loop_index, cost);
        if let Some(conn) = conn {
            self.credit_connection(conn.get(), cost);
        }
    }

    /// Hands a handled batch's buffer back to its loop, which frames its next reads into
    /// it (no fresh memory, and its page faults, per read).
    pub(crate) fn give_back(&self, loop_index: u32, buffer: Vec<u8>) {
        if let Some(handle) = self
            .shared
            .loops
            .get()
            .and_then(|l| l.get(loop_index as usize))
        {
            handle.give_back(buffer);
        }
    }

    /// Takes a handled event's cost off its loop's count (once: work held behind an
    /// awaiting callback had it when it was held).
    fn credit_loop(&mut self, loop_index: u32, cost: usize) {
        if !self.replaying {
            self.handled_cost[loop_index as usize] += cost;
        }
    }

    /// Takes a handled event's cost off its connection's count (a message, or the Connect
    /// once `on_connect` ran); the loop reads the connection again if it had stopped.
    fn credit_connection(&mut self, conn: &Connection, cost: usize) {
        if conn.backlog.dispatched(cost, self.conn_dispatch_high_water) {
            let (token, id) = (conn.token, conn.id_value());
            self.shared
                .post(conn.loop_index, Command::Unthrottle { token, id });
        }
    }

    /// The callbacks of `conn`: its own handler's (an outgoing connection given one), or
    /// the server's.
    pub(crate) fn callbacks_of(&self, conn: &Connection) -> &Callbacks {
        if self.own_callbacks.is_empty() {
            return &self.callbacks;
        }
        self.own_callbacks
            .get(&conn.id_value())
            .unwrap_or(&self.callbacks)
    }

    /// A Python callback begins (`slow_callbacks.rs` watches it, `callback_times.rs`
    /// may time it).
    #[inline]
    pub(crate) fn enter_callback(&self) {
        self.slow.enter();
        self.clock.enter();
    }

    /// The callback begun last has returned (`what` of `conn`): logged if it ran too long.
    #[inline]
    pub(crate) fn leave_callback(&self, what: &str, conn: Option<&Py<Connection>>) {
        self.clock.leave();
        if let Some(slow) = self.slow.leave() {
            self.report_slow(what, conn, &slow);
        }
    }

    #[cold]
    fn report_slow(&self, what: &str, conn: Option<&Py<Connection>>, slow: &Slow) {
        // The handler's own name for it ("Echo.on_message") where there is one.
        let callbacks = conn.map(|conn| self.callbacks_of(conn.get()));
        let callable = callbacks.and_then(|c| match what {
            "on_connect" => Some(&c.on_connect),
            "on_message" => Some(&c.on_message),
            "on_close" => Some(&c.on_close),
            "on_handshake" => c.on_handshake.as_ref(),
            _ => None,
        });
        let name = callable
            .and_then(|c| c.bind(self.py).getattr("__qualname__").ok())
            .and_then(|n| n.extract::<String>().ok())
            .unwrap_or_else(|| what.to_owned());
        let of = conn.map_or(String::new(), |c| {
            format!(" of connection {}", c.get().id_value())
        });
        log::warn!(
            "pygev: {name}{of} took {:.3} s (slow_callback_duration is {} s); every connection \
             waits while a callback runs: blocking work belongs in await asyncio.to_thread(...)",
            slow.took.as_secs_f64(),
            slow.threshold.as_secs_f64(),
        );
    }

    /// Sends what `on_message` returned, framed by `framing`. A reply after
    /// shutdown_write()/close() is dropped, as a send would be; one the framing cannot pack
    /// is the handler's error.
    pub(crate) fn reply(
        &mut self,
        conn: &Py<Connection>,
        data: Cow<'_, [u8]>,
        framing: Packer<'_>,
    ) {
        if let Err(err @ Error::Value(_)) = conn.get().send_framed(data, framing) {
            let err: PyErr = err.into();
            self.callback_failed("sending on_message's reply", conn, err);
        }
    }

    /// Ctrl+C landed inside a callback: stop the server (true), the connection is not at
    /// fault.
    fn interrupts(&mut self, err: &PyErr) -> bool {
        if err.is_instance_of::<PyKeyboardInterrupt>(self.py) {
            self.on_interrupt(err.clone_ref(self.py));
            return true;
        }
        false
    }

    /// Logs a failed callback and closes its connection only.
    pub(crate) fn callback_failed(&mut self, what: &str, conn: &Py<Connection>, err: PyErr) {
        if self.interrupts(&err) {
            return;
        }
        self.report(what, conn, &err);
        conn.get()
            .mode()
            .say_goodbye(conn.get(), 1011, "internal error");
        conn.get().request_close();
        self.maybe_stop(err);
    }

    pub(crate) fn report(&self, what: &str, conn: &Py<Connection>, err: &PyErr) {
        let message = format!(
            "pygev: {what} raised; closing connection {}",
            conn.get().id_value()
        );
        logging::log_exception(self.py, &message, err);
    }

    /// Ctrl+C or sys.exit() inside a callback stops the server instead of one connection.
    pub(crate) fn maybe_stop(&mut self, err: PyErr) {
        if err.is_instance_of::<PyKeyboardInterrupt>(self.py)
            || err.is_instance_of::<PySystemExit>(self.py)
        {
            self.on_interrupt(err);
        }
    }

    fn fire_timer(&mut self, id: u64) {
        let Some(timer) = self.shared.timer(self.py, id) else {
            return; // cancelled
        };
        let Some(callback) = timer.get().fire(self.py) else {
            return;
        };
        self.enter_callback();
        let result = callback.bind(self.py).call0();
        if let Some(Err(err)) = self.settle(result, None, Then::Timer) {
            if !err.is_instance_of::<PyKeyboardInterrupt>(self.py) {
                logging::log_exception(self.py, "pygev: timer callback raised", &err);
            }
            self.maybe_stop(err);
        }
    }
}

/// One message's payload: its own buffer, or a slice of a batch of frames.
pub(crate) enum Frame<'a> {
    Owned(Vec<u8>),
    Borrowed(&'a [u8]),
}

impl Frame<'_> {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Frame::Owned(data) => data,
            Frame::Borrowed(data) => data,
        }
    }
}

/// The name of `obj`'s class, for messages.
pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

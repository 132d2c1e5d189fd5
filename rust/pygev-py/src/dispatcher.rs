//! The dispatcher: runs on the thread that called `Server.start()`, takes batches of events
//! from the loops and calls the Python handler for each, under one GIL acquisition per batch.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pygev_core::{Command, Config, Event, Frames, Running};
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PySystemExit, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::connection::{bytes_of, packet, Connection};
use crate::errors::Error;
use crate::logging;
use crate::ring_buffer::RingBuffer;
use crate::shared::Shared;

/// How long the dispatcher sleeps at most before looking at signals (Ctrl+C).
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(50);

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
}

pub(crate) struct Dispatcher<'py> {
    py: Python<'py>,
    shared: Arc<Shared>,
    callbacks: Callbacks,
    /// Per loop, the connection objects indexed by token.
    conns: Vec<Vec<Option<Py<Connection>>>>,
    /// Per loop, message bytes handled in the current batch.
    handled_bytes: Vec<usize>,
    phases: Vec<LoopPhase>,
    drain_timeout: Duration,
    dispatch_high_water: usize,
    /// The server's framing written in Python, if any: it runs here, over `inputs`.
    py_protocol: Option<Py<PyAny>>,
    /// Per connection id, the bytes its Python framing has not taken yet.
    inputs: HashMap<u64, Py<RingBuffer>>,
    max_input_buffer: usize,
    stopping: bool,
    /// An exception to re-raise from `start()` once stopped (e.g. SystemExit).
    pending_error: Option<PyErr>,
}

impl<'py> Dispatcher<'py> {
    pub(crate) fn new(
        py: Python<'py>,
        shared: Arc<Shared>,
        callbacks: Callbacks,
        config: &Config,
    ) -> Self {
        let num_loops = config.num_loops;
        let py_protocol = shared.py_protocol(py).map(Bound::unbind);
        Dispatcher {
            py_protocol,
            inputs: HashMap::new(),
            max_input_buffer: config.max_input_buffer,
            drain_timeout: config.drain_timeout,
            dispatch_high_water: config.dispatch_high_water,
            py,
            shared,
            callbacks,
            conns: (0..num_loops).map(|_| Vec::new()).collect(),
            handled_bytes: vec![0; num_loops],
            phases: vec![LoopPhase::Serving; num_loops],
            stopping: false,
            pending_error: None,
        }
    }

    /// Dispatches until the server is stopped and every loop has closed its connections.
    pub(crate) fn run(mut self, running: &mut Running) -> PyResult<()> {
        let queue = self.shared.queue.clone();
        let mut batch = Vec::new();
        let mut due = Vec::new();
        let mut drain_sent = false;
        while !self.phases.iter().all(|p| *p == LoopPhase::Exited) {
            if !self.stopping && queue.stop_requested() {
                self.stopping = true;
                let open: usize = self.conns.iter().flatten().filter(|c| c.is_some()).count();
                log::info!("pygev: stopping; draining {open} open connections");
                self.py.detach(|| running.stop_accepting());
                running.quiesce();
            }
            self.py
                .detach(|| queue.wait(&mut batch, &mut due, SIGNAL_CHECK_INTERVAL));
            if let Err(err) = self.py.check_signals() {
                self.on_interrupt(err);
            }
            if !batch.is_empty() || !due.is_empty() {
                self.dispatch_batch(&mut batch, &mut due);
            }
            logging::emit_pending(self.py);
            if self.stopping && !drain_sent && !self.phases.contains(&LoopPhase::Serving) {
                // Every message read before the stop has been handled and its replies are
                // posted; now the loops may flush and close.
                running.drain(Instant::now() + self.drain_timeout);
                drain_sent = true;
            }
        }
        self.py.detach(|| running.join());
        logging::emit_pending(self.py);
        match self.pending_error.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
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

    fn dispatch_batch(&mut self, batch: &mut Vec<Event>, due: &mut Vec<u64>) {
        // Events as the handler sees them: a batch of frames counts once per frame.
        let frames_batched: usize = batch
            .iter()
            .map(|e| match e {
                Event::Messages { frames, .. } => frames.ends.len() - 1,
                _ => 0,
            })
            .sum();
        let count = batch.len() + frames_batched + due.len();
        self.shared.begin_batch();
        for event in batch.drain(..) {
            self.handle(event);
        }
        if !self.stopping {
            for id in due.drain(..) {
                self.fire_timer(id);
            }
        }
        due.clear();
        self.shared.end_batch();
        if let Some(loops) = self.shared.loops.get() {
            for (handle, bytes) in loops.iter().zip(self.handled_bytes.iter_mut()) {
                if let Err(e) = handle.dispatched(std::mem::take(bytes), self.dispatch_high_water) {
                    log::error!("pygev: could not wake loop {}: {e}", handle.index());
                }
            }
        }
        let stats = &self.shared.stats;
        stats.events.fetch_add(count as u64, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.max_batch.fetch_max(count as u64, Ordering::Relaxed);
    }

    fn handle(&mut self, event: Event) {
        if let Event::Message { loop_index, .. } | Event::Messages { loop_index, .. } = &event {
            // What the loop counted for dispatch backpressure.
            self.handled_bytes[*loop_index as usize] += event.held_bytes();
        }
        match event {
            Event::Message {
                loop_index,
                token,
                data,
            } => self.on_data(loop_index, token, Ok(data)),
            Event::Messages {
                loop_index,
                token,
                frames,
            } => self.on_data(loop_index, token, Err(frames)),
            Event::Connect {
                loop_index,
                token,
                info,
            } => {
                let conn = Connection::new(
                    self.shared.clone(),
                    loop_index,
                    token,
                    info.id,
                    info.peer,
                    info.local,
                );
                let conn = match Py::new(self.py, conn) {
                    Ok(conn) => conn,
                    Err(err) => {
                        logging::log_exception(self.py, "pygev: cannot create connection", &err);
                        let close = Command::Close { token, id: info.id };
                        self.shared.post(loop_index, close);
                        return;
                    }
                };
                let table = &mut self.conns[loop_index as usize];
                if table.len() <= token as usize {
                    table.resize_with(token as usize + 1, || None);
                }
                table[token as usize] = Some(conn.clone_ref(self.py));
                let result = self
                    .callbacks
                    .on_connect
                    .call1(self.py, (conn.clone_ref(self.py),));
                if let Err(err) = result {
                    self.callback_failed("on_connect", &conn, err);
                }
            }
            Event::PeerClosed { loop_index, token } => {
                // Replies to the messages before the EOF are already in the outbox: close
                // after them.
                if let Some(conn) = self.conn(loop_index, token) {
                    conn.get().request_close();
                }
            }
            Event::Closed { loop_index, token } => {
                let slot = self.conns[loop_index as usize]
                    .get_mut(token as usize)
                    .and_then(Option::take);
                if let Some(conn) = slot {
                    self.closed(conn);
                }
            }
            Event::Quiesced { loop_index } => {
                self.phases[loop_index as usize] = LoopPhase::Quiesced;
            }
            Event::LoopExited { loop_index } => {
                self.phases[loop_index as usize] = LoopPhase::Exited;
                if !self.stopping {
                    // A loop died (a bug): its connections are gone. Tell the handler, and
                    // stop the server rather than keep sending new connections there.
                    let orphans: Vec<Py<Connection>> = self.conns[loop_index as usize]
                        .iter_mut()
                        .filter_map(Option::take)
                        .collect();
                    for conn in orphans {
                        self.closed(conn);
                    }
                    if self.pending_error.is_none() {
                        self.pending_error = Some(PyRuntimeError::new_err(format!(
                            "pygev: loop {loop_index} failed; the server was stopped"
                        )));
                    }
                    self.shared.queue.request_stop();
                }
            }
        }
    }

    /// The connection is gone: mark it and call `on_close` (exactly once: the caller took
    /// it out of the table).
    fn closed(&mut self, conn: Py<Connection>) {
        conn.get().mark_closed();
        self.inputs.remove(&conn.get().id_value());
        if let Err(err) = self
            .callbacks
            .on_close
            .call1(self.py, (conn.clone_ref(self.py),))
        {
            self.report("on_close", &conn, &err);
            self.maybe_stop(err);
        }
    }

    fn conn(&self, loop_index: u32, token: u32) -> Option<Py<Connection>> {
        self.conns[loop_index as usize]
            .get(token as usize)
            .and_then(|slot| slot.as_ref())
            .map(|conn| conn.clone_ref(self.py))
    }

    /// Messages of one read: a single one in its own buffer (`Ok`), or several back to
    /// back (`Err`). Python framings get the raw bytes (the loop never splits for them).
    fn on_data(&mut self, loop_index: u32, token: u32, messages: Result<Vec<u8>, Frames>) {
        let Some(conn) = self.conn(loop_index, token) else {
            return;
        };
        if let Some(protocol) = self.py_protocol.as_ref().map(|p| p.clone_ref(self.py)) {
            let data = messages.unwrap_or_else(|frames| frames.data);
            return self.on_bytes(conn, data, protocol.bind(self.py));
        }
        match messages {
            Ok(data) => self.on_frame(&conn, Frame::Owned(data)),
            Err(frames) => {
                for frame in frames.iter() {
                    self.on_frame(&conn, Frame::Borrowed(frame));
                }
            }
        }
    }

    /// Calls `on_message` for one frame and sends its reply.
    fn on_frame(&mut self, conn: &Py<Connection>, frame: Frame<'_>) {
        if conn.get().is_closed() {
            return; // closed by the handler or after an error: drop what is left
        }
        let py = self.py;
        let bytes = PyBytes::new(py, frame.bytes());
        let result = self
            .callbacks
            .on_message
            .bind(py)
            .call1((conn.bind(py), py.None(), &bytes));
        match result {
            Ok(reply) if reply.is_none() => {}
            // NOTE: a handler that returns the bytes it was given (echo) sends our own copy
            // of them: no second copy (raw echo: memcpy was 17% of server CPU).
            Ok(reply) if reply.is(&bytes) => match frame {
                Frame::Owned(data) if self.shared.protocol.pack_is_identity() => {
                    self.reply(conn, data)
                }
                frame => self.reply_slice(conn, frame.bytes()),
            },
            Ok(reply) => match bytes_of(&reply) {
                Ok(reply) => self.reply(conn, reply),
                Err(err) => {
                    let err: PyErr = err.into();
                    self.callback_failed("on_message returned a non-bytes value, which", conn, err);
                }
            },
            Err(err) => self.callback_failed("on_message", conn, err),
        }
    }

    /// Bytes arrived for a server whose framing is a Python `pygev.Protocol`: append them to
    /// the connection's buffer, then call `unpacket` while it returns frames, handing each
    /// to `on_message`. The buffer is lent only for the `unpacket` call itself.
    fn on_bytes(&mut self, conn: Py<Connection>, data: Vec<u8>, protocol: &Bound<'py, PyAny>) {
        if conn.get().is_closed() {
            return;
        }
        let py = self.py;
        let id = conn.get().id_value();
        let buffer = match self.inputs.get(&id) {
            Some(buffer) => buffer.clone_ref(py),
            None => match Py::new(py, RingBuffer::lent()) {
                Ok(buffer) => {
                    self.inputs.insert(id, buffer.clone_ref(py));
                    buffer
                }
                Err(err) => return self.callback_failed("buffering input", &conn, err),
            },
        };
        let held = buffer.get().append(&data);
        drop(data);
        if held > self.max_input_buffer {
            log::error!(
                "pygev: connection {id} holds {held} bytes that Protocol.unpacket() has not \
                 taken, over max_input_buffer {}; closing it",
                self.max_input_buffer
            );
            self.inputs.remove(&id);
            conn.get().request_close();
            return;
        }
        while !conn.get().is_closed() {
            let before = buffer.get().held();
            buffer.get().set_usable(true);
            let frame = protocol.call_method1("unpacket", (conn.bind(py), buffer.bind(py)));
            buffer.get().set_usable(false);
            let frame = match frame {
                Ok(frame) if frame.is_none() => break,
                Ok(frame) => frame,
                Err(err) => return self.callback_failed("Protocol.unpacket()", &conn, err),
            };
            let Ok((ctx, payload)) = frame.extract::<(Bound<'py, PyAny>, Bound<'py, PyAny>)>()
            else {
                let err = PyTypeError::new_err(format!(
                    "pygev: {}.unpacket() must return (ctx, payload) or None, got {}",
                    type_name(protocol),
                    frame.repr().map(|r| r.to_string()).unwrap_or_default()
                ));
                return self.callback_failed("Protocol.unpacket()", &conn, err);
            };
            if buffer.get().held() == before {
                // Called again, it would return the same frame forever.
                let err = PyRuntimeError::new_err(format!(
                    "pygev: {}.unpacket() returned a frame but consumed no input (a virtual \
                     read needs virtual_flush())",
                    type_name(protocol)
                ));
                return self.callback_failed("Protocol.unpacket()", &conn, err);
            }
            if conn.get().is_closed() {
                return; // unpacket closed it
            }
            let result = self
                .callbacks
                .on_message
                .bind(py)
                .call1((conn.bind(py), ctx, payload));
            match result {
                Ok(reply) if reply.is_none() => {}
                Ok(reply) => match packet(protocol, conn.bind(py), &reply) {
                    Ok(Ok(wire)) => self.reply(&conn, wire),
                    Ok(Err(not_bytes)) => {
                        let err: PyErr = not_bytes.into();
                        self.callback_failed("Protocol.packet()", &conn, err);
                    }
                    Err(err) => self.callback_failed("Protocol.packet()", &conn, err),
                },
                Err(err) => self.callback_failed("on_message", &conn, err),
            }
        }
    }

    /// Sends what `on_message` returned. A reply after shutdown_write()/close() is dropped,
    /// as a send would be; one the protocol cannot pack is the handler's error.
    fn reply(&mut self, conn: &Py<Connection>, data: Vec<u8>) {
        if let Err(err @ Error::Value(_)) = conn.get().send_bytes(data) {
            let err: PyErr = err.into();
            self.callback_failed("sending on_message's reply", conn, err);
        }
    }

    /// Sends a borrowed reply (an echoed frame of a batch).
    fn reply_slice(&mut self, conn: &Py<Connection>, payload: &[u8]) {
        if let Err(err @ Error::Value(_)) = conn.get().send_slice(payload) {
            let err: PyErr = err.into();
            self.callback_failed("sending on_message's reply", conn, err);
        }
    }

    /// Logs a failed callback and closes its connection only.
    fn callback_failed(&mut self, what: &str, conn: &Py<Connection>, err: PyErr) {
        if err.is_instance_of::<PyKeyboardInterrupt>(self.py) {
            // Ctrl+C landed inside a callback: stop the server, the connection is not at fault.
            self.on_interrupt(err);
            return;
        }
        self.report(what, conn, &err);
        conn.get().request_close();
        self.maybe_stop(err);
    }

    fn report(&self, what: &str, conn: &Py<Connection>, err: &PyErr) {
        let message = format!(
            "pygev: {what} raised; closing connection {}",
            conn.get().id_value()
        );
        logging::log_exception(self.py, &message, err);
    }

    /// Ctrl+C or sys.exit() inside a callback stops the server instead of one connection.
    fn maybe_stop(&mut self, err: PyErr) {
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
        if let Err(err) = callback.call0(self.py) {
            if !err.is_instance_of::<PyKeyboardInterrupt>(self.py) {
                logging::log_exception(self.py, "pygev: timer callback raised", &err);
            }
            self.maybe_stop(err);
        }
    }
}

/// One message's payload: its own buffer, or a slice of a batch of frames.
enum Frame<'a> {
    Owned(Vec<u8>),
    Borrowed(&'a [u8]),
}

impl Frame<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Frame::Owned(data) => data,
            Frame::Borrowed(data) => data,
        }
    }
}

/// The name of `obj`'s class, for messages.
fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

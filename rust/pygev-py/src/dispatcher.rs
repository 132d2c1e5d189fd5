//! The dispatcher: runs on the thread that called `Server.start()`, takes batches of events
//! from the loops and calls the Python handler for each, under one GIL acquisition per batch.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pygev_core::websocket::handshake::{self, Limits, UpgradeRequest};
use pygev_core::websocket::tag;
use pygev_core::{Command, Config, Event, Frames, Running};
use pyo3::exceptions::{
    PyKeyboardInterrupt, PyRuntimeError, PySystemExit, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::connection::{bytes_of, packet, Connection};
use crate::errors::Error;
use crate::logging;
use crate::ring_buffer::RingBuffer;
use crate::shared::Shared;
use crate::websocket::WebSocketRequest;

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
    /// A WebSocket handler's `on_handshake`, if it has one.
    pub(crate) on_handshake: Option<Py<PyAny>>,
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
                self.say_going_away();
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

    /// The server stops: every open WebSocket connection gets a close frame (1001) after
    /// what was already queued for it.
    fn say_going_away(&self) {
        if self.shared.websocket.is_none() {
            return;
        }
        for conn in self.conns.iter().flatten().flatten() {
            conn.get().close_ws(1001, "server stopping");
            conn.get().request_close();
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
                if self.shared.websocket.is_none() {
                    self.connected(&conn);
                } // a WebSocket connection is connected once its handshake completes
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

    fn connected(&mut self, conn: &Py<Connection>) {
        let result = self
            .callbacks
            .on_connect
            .call1(self.py, (conn.clone_ref(self.py),));
        if let Err(err) = result {
            self.callback_failed("on_connect", conn, err);
        }
    }

    /// The connection is gone: mark it and call `on_close` (exactly once: the caller took
    /// it out of the table; never for a WebSocket whose handshake did not complete).
    fn closed(&mut self, conn: Py<Connection>) {
        conn.get().mark_closed();
        self.inputs.remove(&conn.get().id_value());
        if self.shared.websocket.is_some() && !conn.get().ws_opened() {
            return;
        }
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
        if self.shared.websocket.is_some() {
            match messages {
                Ok(data) => self.on_ws_frame(&conn, &data),
                Err(frames) => {
                    for frame in frames.iter() {
                        self.on_ws_frame(&conn, frame);
                    }
                }
            }
            return;
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

    /// One tagged item from a WebSocket connection's loop: the handshake's outcome or a
    /// whole message.
    fn on_ws_frame(&mut self, conn: &Py<Connection>, frame: &[u8]) {
        if conn.get().is_closed() {
            return;
        }
        let Some((&kind, payload)) = frame.split_first() else {
            return;
        };
        match kind {
            tag::OPEN => {
                conn.get().set_ws_open(payload == [1]);
                self.connected(conn);
            }
            tag::HANDSHAKE => self.ws_handshake(conn, payload),
            tag::END => {
                // Our close frame goes after the replies already queued, packed by the loop
                // (which then refuses anything more).
                if let Some((&1, close)) = payload.split_first() {
                    let _ = conn.get().post_tagged(tag::CLOSE, close);
                }
                conn.get().request_close();
            }
            tag::TEXT | tag::BINARY => self.ws_message(conn, kind == tag::TEXT, payload),
            _ => {}
        }
    }

    /// Calls `on_message(conn, data)` with `str` (text) or `bytes` (binary) and sends what
    /// it returns.
    fn ws_message(&mut self, conn: &Py<Connection>, text: bool, payload: &[u8]) {
        let py = self.py;
        let data = if text {
            // The loop checked the text (RFC 6455: failing the connection with 1007).
            match std::str::from_utf8(payload) {
                Ok(text) => PyString::new(py, text).into_any(),
                Err(_) => return,
            }
        } else {
            PyBytes::new(py, payload).into_any()
        };
        let result = self
            .callbacks
            .on_message
            .bind(py)
            .call1((conn.bind(py), &data));
        let sent = match result {
            Ok(reply) if reply.is_none() => return,
            Ok(reply) if reply.is(&data) => conn.get().send_ws(text, payload),
            Ok(reply) => match reply.cast::<PyString>() {
                Ok(reply) => match reply.to_str() {
                    Ok(reply) => conn.get().send_ws(true, reply.as_bytes()),
                    Err(err) => {
                        return self.callback_failed("sending on_message's reply", conn, err)
                    }
                },
                Err(_) => match bytes_of(&reply) {
                    Ok(reply) => conn.get().send_ws(false, &reply),
                    Err(_) => Err(Error::Type(format!(
                        "pygev: on_message must return str, bytes or None, got {}",
                        type_name(&reply)
                    ))),
                },
            },
            Err(err) => return self.callback_failed("on_message", conn, err),
        };
        if let Err(err @ (Error::Type(_) | Error::Value(_))) = sent {
            self.callback_failed("on_message", conn, err.into());
        }
    }

    /// Runs the `on_handshake` hook over a held upgrade request and answers it.
    fn ws_handshake(&mut self, conn: &Py<Connection>, raw: &[u8]) {
        let py = self.py;
        let Some(ws) = self.shared.websocket.clone() else {
            return;
        };
        let limits = Limits {
            max_request_size: usize::MAX,
            max_headers: ws.settings().limits.max_headers,
        };
        let Ok(Some((request, _))) = handshake::parse(raw, &limits) else {
            log::error!("pygev: a held upgrade request no longer parses (a bug)");
            return conn.get().request_close();
        };
        let Some(hook) = self
            .callbacks
            .on_handshake
            .as_ref()
            .map(|h| h.clone_ref(py))
        else {
            return self.ws_accept(conn, &ws, &request, None, &[]);
        };
        let answer = Py::new(
            py,
            WebSocketRequest {
                inner: request.clone(),
            },
        )
        .and_then(|r| hook.call1(py, (conn.clone_ref(py), r)))
        .and_then(|answer| self.ws_answer(answer.bind(py)));
        match answer {
            Ok(Answer::Accept(protocol, extra)) => {
                match handshake::check_choice(&request, protocol.as_deref(), &extra) {
                    Ok(()) => self.ws_accept(conn, &ws, &request, protocol.as_deref(), &extra),
                    Err(reason) => {
                        log::error!(
                            "pygev: on_handshake's answer for connection {} is invalid: {reason}",
                            conn.get().id_value()
                        );
                        self.ws_refuse(conn, 500, "Internal Server Error");
                    }
                }
            }
            Ok(Answer::Reject(status, reason)) => self.ws_refuse(conn, status, &reason),
            Err(err) => {
                self.report("on_handshake", conn, &err);
                self.ws_refuse(conn, 500, "Internal Server Error");
                self.maybe_stop(err);
            }
        }
    }

    /// What `on_handshake` returned: `None`, `pygev.Accept(...)` or `pygev.Reject(...)`.
    fn ws_answer(&self, answer: &Bound<'py, PyAny>) -> PyResult<Answer> {
        if answer.is_none() {
            return Ok(Answer::Accept(None, Vec::new()));
        }
        let module = self.py.import("pygev._websocket")?;
        if answer.is_instance(&module.getattr("Accept")?)? {
            let protocol: Option<String> = answer.getattr("subprotocol")?.extract()?;
            let headers: Vec<(String, String)> = answer.getattr("headers")?.extract()?;
            return Ok(Answer::Accept(protocol, headers));
        }
        if answer.is_instance(&module.getattr("Reject")?)? {
            let status: u16 = answer.getattr("status")?.extract()?;
            let reason: String = answer.getattr("reason")?.extract()?;
            if !(400..=599).contains(&status) || !handshake::header_safe(&reason) {
                return Err(PyValueError::new_err(format!(
                    "pygev: Reject needs a status of 400 to 599 and a one-line reason, got \
                     {status} {reason:?}"
                )));
            }
            return Ok(Answer::Reject(status, reason));
        }
        Err(PyTypeError::new_err(format!(
            "pygev: on_handshake must return None, pygev.Accept(...) or pygev.Reject(...), got {}",
            type_name(answer)
        )))
    }

    fn ws_accept(
        &mut self,
        conn: &Py<Connection>,
        ws: &pygev_core::websocket::WebSocket,
        request: &UpgradeRequest,
        protocol: Option<&str>,
        extra: &[(String, String)],
    ) {
        if conn.get().is_closed() {
            return; // the hook closed it: no handshake, no callbacks
        }
        let (response, agreed) = ws.answer(request, protocol, extra);
        // Posted now, not with the batch: once the connection is open, another thread may
        // send on it, and that must not overtake the 101.
        if conn.get().post_tagged_now(tag::ACCEPT, &response).is_err() {
            return; // the server stops
        }
        conn.get().set_ws_open(agreed.is_some());
        self.connected(conn);
    }

    fn ws_refuse(&mut self, conn: &Py<Connection>, status: u16, reason: &str) {
        let response = handshake::error_response(status, reason);
        let _ = conn
            .get()
            .post_frame(response.len(), |out| out.extend_from_slice(&response));
        conn.get().request_close();
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
        conn.get().close_ws(1011, "internal error");
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

/// How `on_handshake` answered.
enum Answer {
    /// The subprotocol and extra header fields.
    Accept(Option<String>, Vec<(String, String)>),
    /// The HTTP status and reason.
    Reject(u16, String),
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

//! The Python framing mode: a `pygev.Protocol` subclass splits each connection's bytes
//! into frames under the dispatcher, over a per-connection `RingBuffer`.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use crate::shared::Packer;
use pygev_core::CloseReason;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use super::{type_name, Dispatcher, Then};
use crate::bytes_like::packet;
use crate::connection::Connection;
use crate::ring_buffer::RingBuffer;

/// Part of a frame a connection's Python framing holds, timed by `frame_timeout`.
pub(crate) struct PartialFrame {
    since: Instant,
    conn: Py<Connection>,
    /// Its reading was seen paused (`pause_reading()`): the clock starts afresh once it is
    /// seen reading again.
    paused: bool,
}

impl PartialFrame {
    pub(super) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.conn)
    }

    fn due(&self, limit: Duration, now: Instant) -> Instant {
        if self.paused {
            now + limit // looked at again within `limit`, to notice the resume
        } else {
            self.since + limit
        }
    }
}

impl<'py> Dispatcher<'py> {
    /// Bytes arrived (`data`) or are left over from an earlier turn (`None`) for a server
    /// whose framing is a Python `pygev.Protocol`: append them to the connection's buffer,
    /// then call `unpacket` while it returns frames, handing each to `on_message`, at most
    /// `budget` times. Returns the handler calls made and whether frames may remain (the
    /// budget ran out, or an `on_message` awaits). The buffer is lent only for the
    /// `unpacket` call itself.
    pub(crate) fn on_bytes(
        &mut self,
        conn: &Py<Connection>,
        data: Option<Vec<u8>>,
        protocol: &Bound<'py, PyAny>,
        budget: usize,
    ) -> (usize, bool) {
        if conn.get().is_closed() {
            return (0, false);
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
                Err(err) => {
                    self.callback_failed("buffering input", conn, err);
                    return (0, false);
                }
            },
        };
        if let Some(data) = data {
            let held = buffer.get().append(&data);
            drop(data);
            if held > self.max_input_buffer {
                self.inputs.remove(&id);
                conn.get().abort(
                    CloseReason::Protocol,
                    Some(format!(
                    "pygev: connection {id} holds {held} bytes that Protocol.unpacket() has not \
                     taken, over max_input_buffer {}",
                    self.max_input_buffer
                )),
                );
                return (0, false);
            }
        }
        let mut calls = 0;
        while !conn.get().is_closed() {
            if calls == budget {
                // Frames wait for the next round: that wait is not the peer's either.
                self.partial_frames.remove(&id);
                return (calls, true);
            }
            let before = buffer.get().held();
            buffer.get().set_usable(true);
            self.enter_callback();
            let frame = protocol.call_method1("unpacket", (conn.bind(py), buffer.bind(py)));
            self.leave_callback("Protocol.unpacket()", Some(conn));
            buffer.get().set_usable(false);
            let frame = match frame {
                Ok(frame) if frame.is_none() => break,
                Ok(frame) => frame,
                Err(err) => {
                    self.protocol_failed("Protocol.unpacket()", conn, err);
                    return (calls, false);
                }
            };
            let Ok((ctx, payload)) = frame.extract::<(Bound<'py, PyAny>, Bound<'py, PyAny>)>()
            else {
                let err = PyTypeError::new_err(format!(
                    "pygev: {}.unpacket() must return (ctx, payload) or None, got {}",
                    type_name(protocol),
                    frame.repr().map(|r| r.to_string()).unwrap_or_default()
                ));
                self.protocol_failed("Protocol.unpacket()", conn, err);
                return (calls, false);
            };
            if buffer.get().held() == before {
                // Called again, it would return the same frame forever.
                let err = PyRuntimeError::new_err(format!(
                    "pygev: {}.unpacket() returned a frame but consumed no input (a virtual \
                     read needs virtual_flush())",
                    type_name(protocol)
                ));
                self.protocol_failed("Protocol.unpacket()", conn, err);
                return (calls, false);
            }
            if conn.get().is_closed() {
                return (calls, false); // unpacket closed it
            }
            calls += 1;
            self.enter_callback();
            let result = self.callbacks_of(conn.get()).on_message.bind(py).call1((
                conn.bind(py),
                ctx,
                payload,
            ));
            let Some(result) = self.settle(result, Some(conn), Then::Reply) else {
                // It awaits: the rest of the buffer waits for it (and the frame deadline
                // with it: the wait is not the peer's).
                self.partial_frames.remove(&id);
                return (calls, true);
            };
            match result {
                Ok(reply) if reply.is_none() => {}
                Ok(reply) => self.send_packed(conn, protocol, &reply),
                Err(err) => self.callback_failed("on_message", conn, err),
            }
        }
        self.track_partial(conn, buffer.get().held() > 0, calls > 0);
        (calls, false)
    }

    /// Sends what `on_message` returned, packed by the Python framing.
    pub(crate) fn send_packed(
        &mut self,
        conn: &Py<Connection>,
        protocol: &Bound<'_, PyAny>,
        reply: &Bound<'_, PyAny>,
    ) {
        if conn.get().is_over() {
            return; // dropped, as a send would be: no packet() for it
        }
        self.enter_callback();
        let packed = packet(protocol, conn.bind(self.py), reply);
        self.leave_callback("Protocol.packet()", Some(conn));
        match packed {
            Ok(Ok(wire)) => self.reply(conn, Cow::Owned(wire), Packer::RAW),
            Ok(Err(not_bytes)) => {
                let err: PyErr = not_bytes.into();
                self.protocol_failed("Protocol.packet()", conn, err);
            }
            Err(err) => self.protocol_failed("Protocol.packet()", conn, err),
        }
    }

    /// Runs the frame deadline for a Python framing: from the moment its buffer holds part
    /// of a frame (afresh once a frame completed) until it holds none.
    fn track_partial(&mut self, conn: &Py<Connection>, partial: bool, completed: bool) {
        if self.frame_timeout.is_none() {
            return;
        }
        let id = conn.get().id_value();
        if !partial {
            self.partial_frames.remove(&id);
        } else if completed || !self.partial_frames.contains_key(&id) {
            let partial = PartialFrame {
                since: Instant::now(),
                conn: conn.clone_ref(self.py),
                paused: false,
            };
            self.partial_frames.insert(id, partial);
        }
    }

    /// When the next partial frame may time out (`serve()` wakes for it).
    pub(super) fn next_frame_deadline(&self) -> Option<Instant> {
        let limit = self.frame_timeout?;
        let now = Instant::now();
        let partials = self.partial_frames.values();
        partials.map(|partial| partial.due(limit, now)).min()
    }

    /// Resets the connections whose Python framing has held part of a frame for longer
    /// than `frame_timeout`.
    pub(super) fn expire_partial_frames(&mut self) {
        let Some(limit) = self.frame_timeout else {
            return;
        };
        if self.partial_frames.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut expired = Vec::new();
        for (id, partial) in self.partial_frames.iter_mut() {
            // Not while the user keeps it from reading the rest, nor while its input waits
            // for the dispatcher; afresh after.
            let conn = partial.conn.get();
            let paused = !conn.is_reading() || conn.backlog.pending_dispatch() > 0;
            if paused || partial.paused {
                partial.paused = paused;
                partial.since = now;
            } else if now.duration_since(partial.since) >= limit {
                expired.push(*id);
            }
        }
        for id in expired {
            if let Some(PartialFrame { conn, .. }) = self.partial_frames.remove(&id) {
                self.inputs.remove(&id);
                conn.get().abort(
                    CloseReason::Timeout,
                    Some(format!(
                        "pygev: connection {id} sent part of a frame and not the rest within \
                     frame_timeout {limit:?}"
                    )),
                );
            }
        }
    }

    /// The Python framing failed on this connection: its input cannot be read on, so the
    /// connection is reset (logged once, with the traceback).
    fn protocol_failed(&mut self, what: &str, conn: &Py<Connection>, err: PyErr) {
        if self.interrupts(&err) {
            return;
        }
        let message = format!(
            "pygev: {what} raised; resetting connection {}",
            conn.get().id_value()
        );
        crate::logging::log_exception(self.py, &message, &err);
        self.inputs.remove(&conn.get().id_value());
        conn.get().abort(CloseReason::Abort, None);
        self.maybe_stop(err);
    }
}

//! A connection's life as the dispatcher sees it: opened (`on_connect`, a dial's future),
//! drained (`drain()` waiters), closed (`on_close`, at once or after a callback that
//! awaits), and the loops' own events (quiesced, exited, a dial that failed).

use pygev_core::{Command, Event};
use pyo3::exceptions::PyRuntimeError;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyTuple};

use super::{Dispatcher, LoopPhase, Then};
use crate::connection::Connection;
use crate::dial::{self, Dial};
use crate::errors;
use crate::logging;

impl<'py> Dispatcher<'py> {
    /// Handles an event other than a message.
    pub(super) fn handle(&mut self, event: Event) {
        let cost = event.dispatch_cost();
        match event {
            Event::Message { .. }
            | Event::Messages { .. }
            | Event::Signal { .. }
            | Event::PeerClosed { .. } => {
                unreachable!("a connection's input is handled in rounds")
            }
            Event::Connect {
                loop_index,
                token,
                info,
            } => {
                self.credit_loop(loop_index, cost);
                let id = info.id;
                let dial = if info.outgoing {
                    self.shared.dials.take(id)
                } else {
                    None
                };
                let mode = dial
                    .as_ref()
                    .and_then(|d| d.mode.clone())
                    .unwrap_or_else(|| self.shared.mode.clone());
                let python_framed = mode.is_python_framed();
                let conn = Connection::new(self.shared.clone(), mode, loop_index, token, *info);
                let conn = match Py::new(self.py, conn) {
                    Ok(conn) => conn,
                    Err(err) => {
                        logging::log_exception(self.py, "pygev: cannot create connection", &err);
                        if let Some(dial) = dial {
                            dial::fail(self.py, &dial, err);
                        }
                        let close = Command::Close { token, id };
                        self.shared.post(loop_index, close);
                        return;
                    }
                };
                if let Some(mut dial) = dial {
                    let greets = conn.get().mode().greets_at_open();
                    if greets && !dial::succeed(self.py, &dial, conn.bind(self.py).as_any()) {
                        // Cancelled while connecting: closed without any callback.
                        self.shared.post(loop_index, Command::Close { token, id });
                        return;
                    }
                    if let Some(callbacks) = dial.callbacks.take() {
                        self.own_callbacks.insert(id, *callbacks);
                    }
                    if !greets && dial::cancelled(self.py, &dial) {
                        // Cancelled while connecting: no upgrade for nobody.
                        self.own_callbacks.remove(&id);
                        self.shared.post(loop_index, Command::Close { token, id });
                        return;
                    }
                    if !greets {
                        // A WebSocket client's: its future waits for the handshake; a
                        // cancel meanwhile closes the connection at once.
                        self.close_on_cancel(&dial, loop_index, token, id);
                        self.shared.dials.hold(self.py, id, dial);
                    }
                }
                let slot = conn.clone_ref(self.py);
                let table = &mut self.conns[loop_index as usize];
                if table.len() <= token as usize {
                    table.resize_with(token as usize + 1, || None);
                }
                table[token as usize] = Some(slot);
                self.python_framed += usize::from(python_framed);
                if conn.get().mode().greets_at_open() {
                    self.connected(&conn);
                } // else once its handshake completes
                self.credit_connection(conn.get(), cost);
            }
            Event::Drained { loop_index, token } => {
                // Not held behind an awaiting callback: that callback may be the one
                // waiting in drain().
                self.credit_loop(loop_index, cost);
                if let Some(conn) = self.conn(loop_index, token) {
                    conn.get().drained(self.py);
                }
            }
            Event::Closed { loop_index, token } => {
                self.credit_loop(loop_index, cost);
                let slot = self.conns[loop_index as usize]
                    .get_mut(token as usize)
                    .and_then(Option::take);
                if let Some(conn) = slot {
                    self.loop_closed(conn);
                }
            }
            Event::ConnectFailed {
                loop_index,
                id,
                error,
            } => {
                self.handled_cost[loop_index as usize] += cost;
                let loops = self.shared.loops.get();
                self.shared.dials.failed(self.py, id, &error, loops);
            }
            Event::Quiesced { loop_index } => {
                self.handled_cost[loop_index as usize] += cost;
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
                        self.loop_closed(conn);
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

    /// A dialed connection held until its handshake completed has: its `connect()` future
    /// is claimed (the caller makes the connection ready, then resolves it with
    /// [`dial::resolve`]). `None` when that future was cancelled or failed already (the
    /// server ends): the connection is closed without callbacks.
    pub(crate) fn claim_dial(&mut self, conn: &Py<Connection>) -> Option<Dial> {
        let dial = self.shared.dials.take(conn.get().id_value());
        match dial {
            Some(dial) if dial::claim(self.py, &dial) => Some(dial),
            _ => {
                conn.get().request_close();
                None
            }
        }
    }

    /// Closes connection `id` (slot `token` of loop `loop_index`) if `dial`'s future is
    /// cancelled before it resolves (a done-callback: the cancel may come from any thread).
    fn close_on_cancel(&self, dial: &Dial, loop_index: u32, token: u32, id: u64) {
        let shared = Arc::downgrade(&self.shared);
        let close = move |args: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| {
            let cancelled = args.get_item(0)?.call_method0("cancelled")?.is_truthy()?;
            if let (true, Some(shared)) = (cancelled, shared.upgrade()) {
                shared.post(loop_index, Command::Close { token, id });
            }
            PyResult::Ok(())
        };
        let added = PyCFunction::new_closure(self.py, None, None, close).and_then(|callback| {
            dial.future
                .bind(self.py)
                .call_method1("add_done_callback", (callback,))
        });
        if let Err(err) = added {
            logging::log_exception(self.py, "pygev: cannot watch a connect future", &err);
        }
    }

    /// A dialed connection held until its handshake completed failed it: its `connect()`
    /// future fails with `error` (the loop closes the connection).
    pub(crate) fn dial_failed(&mut self, conn: &Py<Connection>, error: PyErr) {
        if let Some(dial) = self.shared.dials.take(conn.get().id_value()) {
            dial::fail(self.py, &dial, error);
        }
    }

    pub(crate) fn connected(&mut self, conn: &Py<Connection>) {
        let py = self.py;
        self.enter_callback();
        let result = (self.callbacks_of(conn.get()).on_connect.bind(py)).call1((conn.bind(py),));
        if let Some(Err(err)) = self.settle(result, Some(conn), Then::Connected) {
            self.callback_failed("on_connect", conn, err);
        }
    }

    /// The loop closed `conn` (taken out of the table): `on_close` now, or after the
    /// callback that awaits and the work held behind it; sends fail from now on, and so
    /// does `drain()` (which may be what that callback awaits).
    fn loop_closed(&mut self, conn: Py<Connection>) {
        if !self.awaits.holds(conn.get()) {
            return self.closed(conn);
        }
        conn.get().mark_gone();
        self.shared.drains.closed(self.py, conn.get().id_value());
        self.hold_close(conn);
    }

    /// The connection is gone: mark it and call `on_close` (exactly once: the caller took
    /// it out of the table; never for a WebSocket whose handshake did not complete).
    pub(super) fn closed(&mut self, conn: Py<Connection>) {
        conn.get().mark_closed();
        self.shared.drains.closed(self.py, conn.get().id_value());
        self.inputs.remove(&conn.get().id_value());
        if conn.get().mode().is_python_framed() {
            self.python_framed = self.python_framed.saturating_sub(1);
        }
        self.partial_frames.remove(&conn.get().id_value());
        if !conn.get().mode().farewell_due(conn.get()) {
            self.own_callbacks.remove(&conn.get().id_value());
            // A dialed WebSocket whose handshake did not complete, nor fail in words.
            if let Some(dial) = self.shared.dials.take(conn.get().id_value()) {
                if self.stopping {
                    dial::abort(self.py, &dial, "pygev: the server stopped");
                } else {
                    let reason = "the connection closed before the WebSocket handshake completed";
                    dial::fail(self.py, &dial, errors::handshake_closed(self.py, reason));
                }
            }
            return;
        }
        let py = self.py;
        self.enter_callback();
        let result = (self.callbacks_of(conn.get()).on_close.bind(py)).call1((conn.bind(py),));
        self.own_callbacks.remove(&conn.get().id_value());
        if let Some(Err(err)) = self.settle(result, Some(&conn), Then::Closed) {
            self.report("on_close", &conn, &err);
            self.maybe_stop(err);
        }
    }

    pub(super) fn conn(&self, loop_index: u32, token: u32) -> Option<Py<Connection>> {
        self.conns[loop_index as usize]
            .get(token as usize)
            .and_then(|slot| slot.as_ref())
            .map(|conn| conn.clone_ref(self.py))
    }
}

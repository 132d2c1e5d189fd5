//! Outgoing connections from Python: `Server.connect()`'s requests, until the loops answer.
//!
//! Each request gets a connection id and a `concurrent.futures.Future`. Before `start()`
//! requests wait here; from then on they go to the loops in turn. The dispatcher resolves
//! the future with the `Connection` when the loop reports it connected (just before
//! `on_connect`), or with the `OSError` it failed with. A request the loops never answered
//! (the server ended first) fails when the dispatcher ends.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use pyo3::prelude::*;

use pygev_core::{Address, Command, LoopHandle, TlsTarget};

use crate::dispatcher::Callbacks;
use crate::mode::SharedMode;

/// One request.
pub(crate) struct Dial {
    /// What `connect()` returned.
    pub(crate) future: Py<PyAny>,
    /// The connection's own handler, when not the server's.
    pub(crate) callbacks: Option<Box<Callbacks>>,
    /// The connection's own mode (a `protocol=` of its own), when not the server's.
    pub(crate) mode: Option<SharedMode>,
    /// Where to (the address being tried), for messages.
    pub(crate) address: Address,
    /// The host name's other addresses, tried in turn when this one fails (last first).
    pub(crate) fallbacks: Vec<Address>,
    /// How long each attempt may take (the TLS handshake included).
    pub(crate) timeout: Duration,
    /// Its TLS: the client configuration and the name the server must have.
    pub(crate) tls: Option<Box<TlsTarget>>,
}

/// The requests of one server.
#[derive(Default)]
pub(crate) struct Dials {
    /// Requests by connection id.
    pending: HashMap<u64, Dial>,
    /// Ids of requests not posted yet (the server has not started), in order, with their
    /// timeouts.
    waiting: Vec<u64>,
    /// The loop the next request goes to.
    next_loop: usize,
    /// The server ended (or was stopped before it started): requests are refused.
    closed: bool,
}

/// The requests, shared by `Server.connect()` (any thread) and the dispatcher.
#[derive(Default)]
pub(crate) struct DialTable(Mutex<Dials>);

impl DialTable {
    fn lock(&self) -> MutexGuard<'_, Dials> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a request and posts it when `loops` run; false when no loop took it (the
    /// server ended): the request is dropped and the caller fails it.
    pub(crate) fn add(
        &self,
        id: u64,
        dial: Dial,
        loops: Option<&Vec<std::sync::Arc<LoopHandle>>>,
    ) -> Result<(), Dial> {
        let mut dials = self.lock();
        if dials.closed {
            return Err(dial);
        }
        dials.pending.insert(id, dial);
        let Some(loops) = loops else {
            dials.waiting.push(id);
            return Ok(());
        };
        if post(&mut dials, loops, id) {
            return Ok(());
        }
        Err(dials.pending.remove(&id).expect("inserted above"))
    }

    /// Posts the requests made before the server started.
    pub(crate) fn post_waiting(&self, loops: &[std::sync::Arc<LoopHandle>]) {
        let mut dials = self.lock();
        for id in std::mem::take(&mut dials.waiting) {
            // A loop that cannot take it ended already: the request fails at the end.
            post(&mut dials, loops, id);
        }
    }

    /// A loop reports that connection `id` could not connect: its next address is tried
    /// when the host has one (and the error is not the server's end), else its future
    /// fails with `error`.
    pub(crate) fn failed(
        &self,
        py: Python<'_>,
        id: u64,
        error: &std::io::Error,
        loops: Option<&Vec<std::sync::Arc<LoopHandle>>>,
    ) {
        let Some(mut dial) = self.take(id) else {
            return;
        };
        if error.kind() != std::io::ErrorKind::ConnectionAborted {
            if let Some(next) = dial.fallbacks.pop() {
                dial.address = next;
                match self.add(id, dial, loops) {
                    Ok(()) => return,
                    Err(refused) => dial = refused, // the server ended meanwhile
                }
            }
        }
        fail(py, &dial, connect_error(&dial.address, error));
    }

    /// Keeps the request of connection `id`, which connected, until its handshake ends
    /// (a WebSocket client's future resolves only then); the server's end fails it.
    pub(crate) fn hold(&self, py: Python<'_>, id: u64, dial: Dial) {
        let mut dials = self.lock();
        if dials.closed {
            drop(dials);
            return abort(py, &dial, "pygev: the server stopped");
        }
        dials.pending.insert(id, dial);
    }

    /// Takes the request of connection `id` (its loop answered).
    pub(crate) fn take(&self, id: u64) -> Option<Dial> {
        self.lock().pending.remove(&id)
    }

    /// Fails every request still unanswered with `why` (ConnectionAbortedError) and refuses
    /// later ones: the server ended, or will not start.
    pub(crate) fn abort_all(&self, py: Python<'_>, why: &str) {
        for dial in self.take_all() {
            abort(py, &dial, why);
        }
    }

    /// Takes every request still unanswered and refuses later ones (the server ended).
    fn take_all(&self) -> Vec<Dial> {
        let mut dials = self.lock();
        dials.closed = true;
        dials.waiting.clear();
        dials.pending.drain().map(|(_, dial)| dial).collect()
    }

    /// Drops the Python references (the server is being collected).
    pub(crate) fn clear(&self) {
        drop(self.take_all());
    }

    /// Visits the Python references for the GC.
    pub(crate) fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        let Ok(dials) = self.0.try_lock() else {
            return Ok(());
        };
        for dial in dials.pending.values() {
            visit.call(&dial.future)?;
            if let Some(callbacks) = &dial.callbacks {
                callbacks.traverse(visit)?;
            }
            if let Some(mode) = &dial.mode {
                mode.traverse(visit)?;
            }
        }
        Ok(())
    }
}

/// Posts request `id` (pending) to the next loop; false when that loop ended.
fn post(dials: &mut Dials, loops: &[std::sync::Arc<LoopHandle>], id: u64) -> bool {
    let Some(dial) = dials.pending.get(&id) else {
        return true; // answered meanwhile
    };
    let command = Command::Connect {
        id,
        address: dial.address.clone(),
        timeout: dial.timeout,
        protocol: dial.mode.as_ref().map(|mode| mode.loop_protocol()),
        tls: dial.tls.as_deref().cloned(),
    };
    let index = dials.next_loop % loops.len();
    dials.next_loop = dials.next_loop.wrapping_add(1);
    match loops[index].post(command) {
        Ok(()) => true,
        // The loop ended: the command was dropped.
        Err(err) if err.kind() == std::io::ErrorKind::NotConnected => false,
        // Queued, but the wake-up failed: the loop still takes it when it next wakes.
        Err(err) => {
            log::error!("pygev: could not wake loop {index}: {err}");
            true
        }
    }
}

/// The exception a failed connect raises from its future: an `OSError` whose errno picks
/// the subclass (`ConnectionRefusedError`, `TimeoutError`, `ConnectionAbortedError` when
/// the server stopped first, ...).
pub(crate) fn connect_error(address: &Address, error: &std::io::Error) -> PyErr {
    use std::io::ErrorKind;
    let errno = error.raw_os_error().unwrap_or(match error.kind() {
        ErrorKind::TimedOut => libc::ETIMEDOUT,
        ErrorKind::ConnectionRefused => libc::ECONNREFUSED,
        ErrorKind::ConnectionAborted => libc::ECONNABORTED,
        ErrorKind::InvalidInput => libc::EINVAL,
        _ => libc::EIO,
    });
    crate::errors::Error::Os(
        Some(errno),
        format!("pygev: cannot connect to {address}: {error}"),
    )
    .into()
}

/// Fails `dial`'s future with ConnectionAbortedError: the server ended before it was
/// answered.
pub(crate) fn abort(py: Python<'_>, dial: &Dial, why: &str) {
    let ended = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, why);
    fail(py, dial, connect_error(&dial.address, &ended));
}

/// Fails `dial`'s future with `error` (unless it was cancelled).
pub(crate) fn fail(py: Python<'_>, dial: &Dial, error: PyErr) {
    if claim(py, dial) {
        let future = dial.future.bind(py);
        let _ = future.call_method1("set_exception", (error.into_value(py),));
    }
}

/// Resolves `dial`'s future with the connection; false when it was cancelled (then the
/// connection is to be closed without callbacks).
pub(crate) fn succeed(py: Python<'_>, dial: &Dial, conn: &Bound<'_, PyAny>) -> bool {
    claim(py, dial) && resolve(py, dial, conn)
}

/// Resolves `dial`'s future, claimed already, with the connection (done-callbacks and
/// waiting threads see it at once: it must be ready for use).
pub(crate) fn resolve(py: Python<'_>, dial: &Dial, conn: &Bound<'_, PyAny>) -> bool {
    let future = dial.future.bind(py);
    future.call_method1("set_result", (conn,)).is_ok()
}

/// Whether `dial`'s future was cancelled (it stays cancellable).
pub(crate) fn cancelled(py: Python<'_>, dial: &Dial) -> bool {
    let cancelled = dial.future.bind(py).call_method0("cancelled");
    cancelled.and_then(|c| c.is_truthy()).unwrap_or(false)
}

/// Marks `dial`'s future running, so that it can no longer be cancelled; false when it
/// was cancelled already.
pub(crate) fn claim(py: Python<'_>, dial: &Dial) -> bool {
    let running = dial
        .future
        .bind(py)
        .call_method0("set_running_or_notify_cancel")
        .and_then(|r| r.is_truthy());
    matches!(running, Ok(true))
}

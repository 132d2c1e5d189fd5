//! Who waits in `await conn.drain()`: per connection, asyncio futures that the dispatcher
//! resolves when the loop reports that unsent output fell to the connection's low-water
//! mark (`Event::Drained`), or fails with `ConnectionClosed` when the connection closes.
//! A future is resolved through its own loop's `call_soon_threadsafe`, so `drain()` may be
//! awaited in any loop and thread.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;

use crate::errors::ConnectionClosed;
use crate::logging;

/// One `drain()` waiting: its loop and future.
struct Waiter {
    event_loop: Py<PyAny>,
    future: Py<PyAny>,
}

/// The waiters, by connection id. Only the `Server` reports their references to the GC.
#[derive(Default)]
pub(crate) struct DrainTable {
    waiters: Mutex<HashMap<u64, Vec<Waiter>>>,
}

impl DrainTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Vec<Waiter>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a waiter for connection `id`; returns its future.
    pub(crate) fn wait(&self, py: Python<'_>, id: u64) -> PyResult<Py<PyAny>> {
        let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
        let future = event_loop.call_method0("create_future")?.unbind();
        let waiter = Waiter {
            event_loop: event_loop.unbind(),
            future: future.clone_ref(py),
        };
        self.lock().entry(id).or_default().push(waiter);
        Ok(future)
    }

    /// Whether anyone waits for connection `id`.
    pub(crate) fn waits(&self, id: u64) -> bool {
        let waiters = self.lock();
        !waiters.is_empty() && waiters.contains_key(&id)
    }

    /// Connection `id`'s output drained: its waiters go on.
    pub(crate) fn drained(&self, py: Python<'_>, id: u64) {
        let waiters = self.lock().remove(&id);
        for waiter in waiters.into_iter().flatten() {
            resolve(py, waiter, py.None());
        }
    }

    /// Connection `id` closed: its waiters get `ConnectionClosed`.
    pub(crate) fn closed(&self, py: Python<'_>, id: u64) {
        let waiters = self.lock().remove(&id);
        for waiter in waiters.into_iter().flatten() {
            let error = ConnectionClosed::new_err(format!(
                "pygev: connection {id} closed while drain() waited"
            ));
            resolve(py, waiter, error.into_value(py).into_any());
        }
    }

    /// The server stopped: every waiter gets `ConnectionClosed`.
    pub(crate) fn close_all(&self, py: Python<'_>) {
        let ids: Vec<u64> = self.lock().keys().copied().collect();
        for id in ids {
            self.closed(py, id);
        }
    }

    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(waiters) = self.waiters.try_lock() {
            for waiter in waiters.values().flatten() {
                visit.call(&waiter.event_loop)?;
                visit.call(&waiter.future)?;
            }
        }
        Ok(())
    }

    pub(crate) fn clear(&self) {
        let waiters = std::mem::take(&mut *self.lock());
        drop(waiters);
    }
}

/// Settles `waiter`'s future in its loop: with `None`, or with `outcome` when it is an
/// exception.
fn resolve(py: Python<'_>, waiter: Waiter, outcome: Py<PyAny>) {
    let wake = match crate::package::classes(py) {
        Ok(classes) => classes.wake.clone_ref(py),
        Err(err) => return logging::log_exception(py, "pygev: drain()", &err.into()),
    };
    let scheduled =
        waiter
            .event_loop
            .call_method1(py, "call_soon_threadsafe", (wake, waiter.future, outcome));
    // A loop closed meanwhile has no one left to wake.
    if let Err(err) = scheduled {
        log::debug!("pygev: a drain() waiter's loop is gone: {err}");
    }
}

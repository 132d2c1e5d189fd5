//! `pygev.Timer`: a handle to a `run_after` / `run_every` callback.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;

use crate::shared::Shared;

/// A scheduled callback; `cancel()` stops it. Returned by `Server.run_after` and
/// `Server.run_every`.
///
/// The timer owns its callback (the server's timer table holds the timer), so a handler
/// that keeps its timer and whose method is the callback forms a cycle the garbage
/// collector can see and break.
#[pyclass(module = "pygev._pygev", frozen)]
pub struct Timer {
    shared: Arc<Shared>,
    id: u64,
    interval: Option<Duration>,
    state: Mutex<TimerState>,
}

struct TimerState {
    /// `None` once cancelled or, for `run_after`, once run.
    callback: Option<Py<PyAny>>,
    deadline: Instant,
}

impl Timer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        id: u64,
        callback: Py<PyAny>,
        deadline: Instant,
        interval: Option<Duration>,
    ) -> Self {
        Timer {
            shared,
            id,
            interval,
            state: Mutex::new(TimerState {
                callback: Some(callback),
                deadline,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TimerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by the dispatcher when the timer is due: the callback to run now, after
    /// rescheduling a repeating timer (or retiring a one-shot one).
    pub(crate) fn fire(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let mut state = self.lock();
        let callback = state.callback.as_ref()?.clone_ref(py);
        match self.interval {
            Some(interval) => {
                let now = Instant::now();
                state.deadline += interval;
                if state.deadline <= now {
                    state.deadline = now + interval; // fell behind: do not burst
                }
                self.shared.queue.schedule_timer(state.deadline, self.id);
            }
            None => {
                let done = state.callback.take();
                drop(state);
                drop(done);
                self.shared.remove_timer(self.id);
            }
        }
        Some(callback)
    }
}

impl Timer {
    /// Drops the callback (the server is going away); the timer becomes inactive.
    pub(crate) fn release(&self) {
        let callback = self.lock().callback.take();
        drop(callback);
    }
}

#[pymethods]
impl Timer {
    /// Stops the timer: its callback will not run again. Thread-safe and idempotent.
    fn cancel(&self) {
        if self.lock().callback.is_some() {
            self.shared.queue.cancel_timer(self.id);
        }
        self.release();
        self.shared.remove_timer(self.id);
    }

    /// Whether the callback is still due to run (false once cancelled or, for
    /// `run_after`, once it ran).
    #[getter]
    fn active(&self) -> bool {
        self.lock().callback.is_some()
    }

    fn __repr__(&self) -> String {
        format!(
            "<pygev.Timer id={} {}>",
            self.id,
            if self.active() { "active" } else { "inactive" }
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(state) = self.state.try_lock() {
            visit.call(state.callback.as_ref())?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        self.release();
    }
}

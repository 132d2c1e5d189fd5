//! `pygev.Timer`: a handle to a `run_after` / `run_every` callback.

use std::sync::Arc;

use pyo3::prelude::*;

use crate::shared::Shared;

/// A scheduled callback; `cancel()` stops it. Returned by `Server.run_after` and
/// `Server.run_every`.
#[pyclass(module = "pygev._pygev", frozen)]
pub struct Timer {
    shared: Arc<Shared>,
    id: u64,
}

impl Timer {
    pub(crate) fn new(shared: Arc<Shared>, id: u64) -> Self {
        Timer { shared, id }
    }
}

#[pymethods]
impl Timer {
    /// Stops the timer: its callback will not run again. Thread-safe and idempotent.
    fn cancel(&self) {
        let entry = self.shared.lock_timers().remove(&self.id);
        drop(entry); // releases the callback outside the lock
    }

    /// Whether the callback is still due to run (false once cancelled or, for
    /// `run_after`, once it ran).
    #[getter]
    fn active(&self) -> bool {
        self.shared.lock_timers().contains_key(&self.id)
    }

    fn __repr__(&self) -> String {
        format!(
            "<pygev.Timer id={} {}>",
            self.id,
            if self.active() { "active" } else { "inactive" }
        )
    }
}

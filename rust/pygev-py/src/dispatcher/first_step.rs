//! What `asyncio.current_task()` returns during an `async def` callback's first step, which
//! the dispatcher runs before any task exists (see `awaiting.rs`). If the callback goes on
//! waiting, it goes on in a real task, and this object forwards to it: an
//! `asyncio.timeout()` entered in the first step cancels the task that came after. The
//! dispatcher uses one for step after step while no one else keeps it.
//!
//! It is not the task that follows (code that compares tasks across the first await sees
//! two), and it takes no weak references (a weak reference would not show in its count, so
//! it could not be known to be free).

use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::PyAttributeError;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;

/// Stands for the task of a callback's first step.
#[pyclass(module = "pygev._pygev", name = "FirstStep", frozen)]
pub(crate) struct FirstStep {
    state: Mutex<StepState>,
}

#[derive(Default)]
struct StepState {
    /// The task the callback went on in, once it waited.
    task: Option<Py<PyAny>>,
    /// `cancel(msg)` calls made before the task existed: passed on to it.
    cancels: Vec<Option<Py<PyAny>>>,
}

impl FirstStep {
    pub(crate) fn new() -> Self {
        FirstStep {
            state: Mutex::new(StepState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StepState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The callback goes on in `task`: forward to it, and pass on the cancels asked for.
    pub(crate) fn attach(&self, task: &Bound<'_, PyAny>) -> PyResult<()> {
        let cancels = {
            let mut state = self.lock();
            state.task = Some(task.clone().unbind());
            std::mem::take(&mut state.cancels)
        };
        for msg in cancels {
            task.call_method1("cancel", (msg,))?;
        }
        Ok(())
    }

    /// Whether it may stand for the next first step too: only its `holders` (the
    /// dispatcher, and asyncio while it is current) hold it, and nothing was asked of it.
    pub(crate) fn free(step: &Bound<'_, FirstStep>, holders: isize) -> bool {
        // SAFETY: `step` is a live object, held by the caller; reading its reference count
        // has no other effect.
        let held = unsafe { pyo3::ffi::Py_REFCNT(step.as_ptr()) };
        held == holders && step.get().lock().cancels.is_empty()
    }

    fn task(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.lock().task.as_ref().map(|t| t.clone_ref(py))
    }
}

#[pymethods]
impl FirstStep {
    #[pyo3(signature = (msg = None))]
    fn cancel(&self, py: Python<'_>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
        match self.task(py) {
            Some(task) => task.bind(py).call_method1("cancel", (msg,))?.extract(),
            None => {
                self.lock().cancels.push(msg);
                Ok(true)
            }
        }
    }

    fn cancelling(&self, py: Python<'_>) -> PyResult<usize> {
        match self.task(py) {
            Some(task) => task.bind(py).call_method0("cancelling")?.extract(),
            None => Ok(self.lock().cancels.len()),
        }
    }

    fn uncancel(&self, py: Python<'_>) -> PyResult<usize> {
        match self.task(py) {
            Some(task) => task.bind(py).call_method0("uncancel")?.extract(),
            None => {
                let mut state = self.lock();
                state.cancels.pop();
                Ok(state.cancels.len())
            }
        }
    }

    fn done(&self, py: Python<'_>) -> PyResult<bool> {
        match self.task(py) {
            Some(task) => task.bind(py).call_method0("done")?.extract(),
            None => Ok(false),
        }
    }

    fn __getattr__(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        match self.task(py) {
            Some(task) => Ok(task.bind(py).getattr(name)?.unbind()),
            None => Err(PyAttributeError::new_err(format!(
                "pygev: a callback's first step has no {name} (it has no task yet)"
            ))),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(match self.task(py) {
            Some(task) => format!("<pygev first step, going on in {}>", task.bind(py).repr()?),
            None => "<pygev first step>".into(),
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(state) = self.state.try_lock() {
            visit.call(state.task.as_ref())?;
            for msg in &state.cancels {
                visit.call(msg.as_ref())?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let state = std::mem::take(&mut *self.lock());
        drop(state);
    }
}

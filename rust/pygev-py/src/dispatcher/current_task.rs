//! The first steps' stand-in (`first_step.rs`) as asyncio's current task: made current
//! once per batch, before the first coroutine's first step, and no longer current when the
//! batch ends; renewed when a step keeps it or a task takes it over.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};

use super::first_step::FirstStep;
use super::Dispatcher;
use crate::logging;

/// How asyncio keeps the current task.
pub(super) enum CurrentTask {
    /// `asyncio.tasks._current_tasks`, a dict from loop to task (Python 3.8 to 3.13):
    /// what `_enter_task` / `_leave_task` do, without two calls per step.
    Dict(Py<PyDict>),
    /// `asyncio.tasks._enter_task` / `_leave_task` (newer Pythons keep it elsewhere).
    Calls { enter: Py<PyAny>, leave: Py<PyAny> },
    /// Neither: no current task during a first step.
    Missing,
}

impl CurrentTask {
    /// How `asyncio.tasks` keeps the current task, asked from inside a task of
    /// `event_loop` (the one that serves).
    pub(super) fn find(
        tasks: &Bound<'_, PyModule>,
        event_loop: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        // The dict only where asyncio's own `current_task()` reads it: Python 3.14 keeps
        // the current task in the thread's state, and its `_current_tasks` is left over.
        if let Ok(dict) = tasks.getattr("_current_tasks") {
            if let Ok(dict) = dict.cast_into::<PyDict>() {
                let current = tasks.call_method1("current_task", (event_loop,))?;
                let kept = dict.get_item(event_loop)?;
                if !current.is_none() && kept.is_some_and(|kept| kept.is(&current)) {
                    return Ok(CurrentTask::Dict(dict.unbind()));
                }
            }
        }
        Ok(match tasks.getattr("_enter_task") {
            Ok(enter) => CurrentTask::Calls {
                enter: enter.unbind(),
                leave: tasks.getattr("_leave_task")?.unbind(),
            },
            Err(_) => CurrentTask::Missing,
        })
    }
}

impl<'py> Dispatcher<'py> {
    /// Makes the first steps' stand-in the loop's current task until the batch ends
    /// ([`leave_first_steps`](Self::leave_first_steps)), when serving in a loop.
    ///
    /// NOTE: once per batch, not per step: making it current and no longer current cost a
    /// fifth of an awaited echo's instructions when done around each step. Plain callbacks
    /// later in the batch see it as the current task too.
    pub(super) fn enter_first_steps(&mut self) {
        if self.awaits.entered || self.awaits.asyncio.is_none() {
            return;
        }
        let py = self.py;
        let step = match &self.awaits.step {
            Some(step) => step.clone_ref(py),
            None => match Py::new(py, FirstStep::new()) {
                Ok(step) => step,
                Err(err) => return logging::log_exception(py, "pygev: first step", &err),
            },
        };
        let Some(asyncio) = self.awaits.asyncio.as_ref() else {
            return;
        };
        let event_loop = asyncio.event_loop.bind(py);
        self.awaits.entered = match &asyncio.current {
            // A task current already (a turn run from inside a task) stays current.
            CurrentTask::Dict(tasks) => {
                let tasks = tasks.bind(py);
                !tasks.contains(event_loop).unwrap_or(true)
                    && tasks.set_item(event_loop, &step).is_ok()
            }
            CurrentTask::Calls { enter, .. } => enter.call1(py, (event_loop, &step)).is_ok(),
            CurrentTask::Missing => false,
        };
        self.awaits.step = Some(step);
    }

    /// The batch ends: no task is current any more.
    pub(super) fn leave_first_steps(&mut self) {
        if !std::mem::take(&mut self.awaits.entered) {
            return;
        }
        let py = self.py;
        let (Some(asyncio), Some(step)) = (&self.awaits.asyncio, &self.awaits.step) else {
            return;
        };
        let event_loop = asyncio.event_loop.bind(py);
        let left = match &asyncio.current {
            CurrentTask::Dict(tasks) => tasks.bind(py).del_item(event_loop),
            CurrentTask::Calls { leave, .. } => leave.call1(py, (event_loop, step)).map(drop),
            CurrentTask::Missing => Ok(()),
        };
        if let Err(err) = left {
            logging::log_exception(py, "pygev: cannot reset asyncio's current task", &err);
        }
    }

    /// After a first step: the stand-in serves the next one too, unless the step kept it
    /// (or `taken`: it stands for a task now); then a fresh one becomes current.
    pub(super) fn renew_stand_in(&mut self, taken: bool) {
        let py = self.py;
        let Some(step) = &self.awaits.step else {
            return;
        };
        // Ours, and asyncio's while it is current.
        let holders = 1 + isize::from(self.awaits.entered);
        if !taken && FirstStep::free(step.bind(py), holders) {
            return;
        }
        if !self.awaits.entered {
            self.awaits.step = None; // made afresh when next needed
            return;
        }
        self.leave_first_steps();
        self.awaits.step = None;
        self.enter_first_steps();
    }
}

//! The two ways a `pygev.Server` is served: `start()` blocks the calling thread in the
//! dispatcher's own wait; `serve()` (`pygev/_server.py`) starts the loops, then runs one
//! turn per wake-up of its asyncio loop, keeping the dispatcher here between turns.

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::Instant;

use pygev_core::{Event, Found, Running};
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use super::{Server, RUNNING, STOPPED, STOPPED_BEFORE_START};
use crate::dispatcher::{DispatchState, Dispatcher};
use crate::errors::Error;
use crate::logging;

/// A server an asyncio loop drives: its loops, and the dispatcher between two turns.
pub(super) struct Serving {
    core: pygev_core::Server,
    running: Running,
    state: DispatchState,
    batch: Vec<Event>,
    due: Vec<u64>,
}

impl Serving {
    /// Visits the Python references the dispatcher keeps between turns, for the GC.
    pub(super) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.state.traverse(visit)
    }
}

impl Server {
    pub(super) fn lock_serving(&self) -> MutexGuard<'_, Option<Serving>> {
        self.serving.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bound core, taken to serve; `None` when `stop()` came first (a signal handler
    /// may call it before `start()` runs: a request not to serve, not an error).
    pub(super) fn take_core(&self) -> PyResult<Option<pygev_core::Server>> {
        let core = {
            let mut slot = self.lock_core();
            let core = slot.take();
            if core.is_some() {
                self.state.store(RUNNING, Ordering::Release);
            }
            core
        };
        if core.is_some() {
            return Ok(core);
        }
        let msg = match self.state.load(Ordering::Acquire) {
            STOPPED_BEFORE_START => return Ok(None),
            RUNNING => "pygev: server is already running",
            _ => "pygev: server was stopped; create a new one",
        };
        Err(Error::State(msg.into()).into())
    }

    /// Starts the loops and makes the dispatcher.
    fn begin<'py>(
        &self,
        py: Python<'py>,
        core: &mut pygev_core::Server,
    ) -> PyResult<(Running, Dispatcher<'py>)> {
        logging::install(py, &self.shared.queue)?;
        let callbacks = self.callbacks(py)?;
        let running = match core.start() {
            Ok(running) => running,
            Err(err) => {
                self.shared
                    .dials
                    .abort_all(py, "pygev: the server could not start");
                return Err(Error::from(err).into());
            }
        };
        // Connects requested before start() go to the loops now (see `set_loops`).
        self.shared.set_loops(running.loops().to_vec());
        let dispatcher = Dispatcher::new(
            py,
            self.shared.clone(),
            callbacks,
            &self.config,
            self.slow_callback_duration,
        )?;
        Ok((running, dispatcher))
    }

    /// The server has stopped serving.
    pub(super) fn ended(&self, py: Python<'_>) {
        self.state.store(STOPPED, Ordering::Release);
        self.shared.clear_timers();
        logging::emit_pending(py);
    }

    /// `start()`: serves until `stop()`, the calling thread running the dispatcher.
    pub(super) fn run_blocking(&self, py: Python<'_>) -> PyResult<()> {
        let Some(mut core) = self.take_core()? else {
            return Ok(()); // stop() came first
        };
        let result = self
            .begin(py, &mut core)
            .and_then(|(mut running, dispatcher)| dispatcher.run(&mut running));
        drop(core);
        self.ended(py);
        result
    }

    /// `serve()`'s first step: starts the loops; returns the dispatch queue's doorbell
    /// descriptor (`None` when `stop()` came first).
    pub(super) fn serve_start(&self, py: Python<'_>) -> PyResult<Option<i32>> {
        let Some(mut core) = self.take_core()? else {
            return Ok(None);
        };
        let begun = self
            .begin(py, &mut core)
            .and_then(|(running, mut dispatcher)| {
                dispatcher.use_running_loop()?;
                let fd = self.shared.queue.doorbell_fd().map_err(Error::Io)?;
                Ok((running, dispatcher, fd))
            });
        match begun {
            Ok((running, dispatcher, fd)) => {
                *self.lock_serving() = Some(Serving {
                    core,
                    running,
                    state: dispatcher.into_state(),
                    batch: Vec::new(),
                    due: Vec::new(),
                });
                Ok(Some(fd))
            }
            Err(err) => {
                drop(core);
                self.ended(py);
                Err(err)
            }
        }
    }

    /// One turn of `serve()` (see `_serve_turn`).
    pub(super) fn serve_turn(&self, py: Python<'_>) -> PyResult<Option<(bool, Option<f64>)>> {
        // NOTE: taken out for the turn, so that callbacks calling back into the server
        // (stop(), stats()) never wait for this lock.
        let Some(serving) = self.lock_serving().take() else {
            return Ok(None);
        };
        let Serving {
            core,
            mut running,
            state,
            mut batch,
            mut due,
        } = serving;
        let mut dispatcher = Dispatcher::resume(py, state);
        let found = dispatcher.turn(&mut running, &mut batch, &mut due);
        if dispatcher.finished() {
            let result = dispatcher.finish(&mut running);
            drop(core);
            self.ended(py);
            return result.map(|()| None);
        }
        *self.lock_serving() = Some(Serving {
            core,
            running,
            state: dispatcher.into_state(),
            batch,
            due,
        });
        Ok(Some(match found {
            Found::Work => (true, None),
            Found::Idle { next_timer } => {
                // The next turn comes by the next timer at the latest, and soon enough
                // for a changed log level to take effect.
                let now = Instant::now();
                let wait = next_timer
                    .map(|t| t.saturating_duration_since(now))
                    .map_or(logging::LEVEL_CHECK_INTERVAL, |wait| {
                        wait.min(logging::LEVEL_CHECK_INTERVAL)
                    });
                (false, Some(wait.as_secs_f64()))
            }
        }))
    }
}

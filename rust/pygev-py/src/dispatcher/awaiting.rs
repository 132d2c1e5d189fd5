//! Callbacks that await. Any callback may be an `async def`: the dispatcher runs its first
//! step itself, inside the batch, and most end there (nothing to wait for), costing little
//! more than a plain call and no task. One that waits goes on as an asyncio task in the
//! loop that serves (`await server.serve()`); until it ends, its connection's later work
//! is held here, in order, so that per connection a callback starts only once the one
//! before it ended, and `on_close` comes after them all. When the task ends, what the
//! callback returned is used as a plain callback's would be (`Then`), and the held work
//! runs. (Stepping a coroutine by hand is `coroutine.rs`; the stand-in that is the current
//! task during first steps, `current_task.rs`.)
//!
//! Held work counts against its connection's dispatch limit until it runs (the loop stops
//! reading that connection), but not against its loop's: one waiting connection never
//! slows another.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pygev_core::websocket::handshake::UpgradeRequest;
use pygev_core::websocket::http_request::HttpRequest;
use pygev_core::DispatchQueue;
use pyo3::exceptions::asyncio::CancelledError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};
use pyo3::{PyTraverseError, PyVisit};

use super::coroutine::{copy_context, send_none, Sent};
use super::current_task::CurrentTask;
use super::first_step::FirstStep;
use super::rounds::Work;
use super::Dispatcher;
use crate::connection::Connection;
use crate::errors::Error;
use crate::logging;

/// How long tasks cancelled at the stop (after `drain_timeout`) may take to end before the
/// server stops without them.
const CANCEL_GRACE: Duration = Duration::from_secs(1);

/// Which callback a coroutine is, and what is done with what it returns.
pub(crate) enum Then {
    /// `on_connect`: nothing to send.
    Connected,
    /// `on_message`: what it returns is sent (by the connection's mode).
    Reply,
    /// A WebSocket hook over the request it holds (see [`HookRequest`]).
    Hook(HookRequest),
    /// `on_close`: nothing follows it.
    Closed,
    /// A timer's callback: no connection.
    Timer,
}

/// A request a WebSocket connection holds while a hook answers it.
pub(crate) enum HookRequest {
    /// `on_handshake`'s: its answer accepts or refuses the upgrade.
    Upgrade(Box<UpgradeRequest>),
    /// `on_http_request`'s (a plain request): its answer goes out, then the close.
    Http(Box<HttpRequest>),
}

impl Then {
    fn what(&self) -> &'static str {
        match self {
            Then::Connected => "on_connect",
            Then::Reply => "on_message",
            Then::Hook(HookRequest::Upgrade(_)) => "on_handshake",
            Then::Hook(HookRequest::Http(_)) => "on_http_request",
            Then::Closed => "on_close",
            Then::Timer => "timer callback",
        }
    }

    /// Whether the connection's later work waits for it.
    fn holds(&self) -> bool {
        matches!(self, Then::Connected | Then::Reply | Then::Hook(_))
    }
}

/// What `serve()` brings: the running loop and asyncio's task bookkeeping.
pub(super) struct Asyncio {
    pub(super) event_loop: Py<PyAny>,
    create_task: Py<PyAny>,
    /// How the first step's stand-in becomes the loop's current task.
    pub(super) current: CurrentTask,
}

/// A callback going on as a task.
struct Pending {
    /// For the log, and for the work it holds (`Then::holds`).
    conn: Option<Py<Connection>>,
    then: Then,
    task: Py<PyAny>,
    /// What the task runs (`pygev._awaiting._Resumed`): keeps a `SystemExit` or
    /// `KeyboardInterrupt` the callback raised, which asyncio would not.
    resumed: Py<PyAny>,
}

/// What a connection whose callback awaits has waiting.
struct Awaiting {
    conn: Py<Connection>,
    held: VecDeque<Held>,
}

impl Awaiting {
    /// Whether the connection closed meanwhile.
    fn closed(&self) -> bool {
        self.held.iter().any(|held| matches!(held, Held::Closed))
    }
}

/// Work held behind a callback that awaits.
enum Held {
    Work(Work),
    /// The connection closed (out of the loop's table already): `on_close` is due.
    Closed,
}

/// The tasks' done-callback: notes the task and wakes the dispatcher.
#[pyclass(module = "pygev._pygev", frozen)]
pub(crate) struct Completions {
    done: Mutex<Vec<Py<PyAny>>>,
    queue: Arc<DispatchQueue>,
}

#[pymethods]
impl Completions {
    fn __call__(&self, task: Py<PyAny>) {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        self.queue.wake();
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(done) = self.done.try_lock() {
            for task in done.iter() {
                visit.call(task)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let done = std::mem::take(&mut *self.done.lock().unwrap_or_else(|e| e.into_inner()));
        drop(done);
    }
}

/// The dispatcher's part for callbacks that await.
pub(crate) struct Awaits {
    coroutine: Py<PyType>,
    pub(super) asyncio: Option<Asyncio>,
    /// The first steps' stand-in for a task, kept while no one else holds it.
    pub(super) step: Option<Py<FirstStep>>,
    /// The stand-in is asyncio's current task for the rest of the batch.
    pub(super) entered: bool,
    completions: Py<Completions>,
    /// By task (its address: the task is held here, so it is not reused).
    tasks: HashMap<usize, Pending>,
    /// By connection id.
    awaiting: HashMap<u64, Awaiting>,
    /// Connections whose callback ended but whose held work did not all fit in a batch's
    /// calls: it goes on in the next batch (still held, so later input waits behind it).
    ready: VecDeque<u64>,
    /// Handler calls the held work may still make in this batch.
    budget: usize,
    /// Since when the tasks left at the stop were cancelled.
    cancelled_at: Option<Instant>,
}

impl Awaits {
    pub(crate) fn new(py: Python<'_>, queue: Arc<DispatchQueue>) -> PyResult<Self> {
        let coroutine = py.import("types")?.getattr("CoroutineType")?;
        let completions = Completions {
            done: Mutex::new(Vec::new()),
            queue,
        };
        Ok(Awaits {
            coroutine: coroutine.cast_into::<PyType>()?.unbind(),
            asyncio: None,
            step: None,
            entered: false,
            completions: Py::new(py, completions)?,
            tasks: HashMap::new(),
            awaiting: HashMap::new(),
            ready: VecDeque::new(),
            budget: usize::MAX,
            cancelled_at: None,
        })
    }

    /// Callbacks that wait go on as tasks in the running asyncio loop (`serve()`).
    pub(crate) fn use_running_loop(&mut self, py: Python<'_>) -> PyResult<()> {
        let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
        let tasks = py.import("asyncio.tasks")?;
        self.asyncio = Some(Asyncio {
            create_task: event_loop.getattr("create_task")?.unbind(),
            current: CurrentTask::find(&tasks, &event_loop)?,
            event_loop: event_loop.unbind(),
        });
        Ok(())
    }

    /// Whether a callback of `conn` awaits (its later work waits).
    #[inline]
    pub(crate) fn holds(&self, conn: &Connection) -> bool {
        !self.awaiting.is_empty() && self.awaiting.contains_key(&conn.id_value())
    }

    /// Whether no callback goes on as a task and no held work waits for a batch.
    pub(crate) fn idle(&self) -> bool {
        self.tasks.is_empty() && self.ready.is_empty()
    }

    /// Whether the next batch has work here: a task ended that the dispatcher has not taken
    /// up yet, or held work goes on.
    pub(crate) fn has_work(&self) -> bool {
        !self.ready.is_empty()
            || (!self.tasks.is_empty()
                && !self
                    .completions
                    .get()
                    .done
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty())
    }

    /// When the stop must next look at the tasks left (cancel them, or give up on them).
    pub(crate) fn stop_deadline(&self, stopped_at: Instant, drain: Duration) -> Option<Instant> {
        if self.tasks.is_empty() {
            return None;
        }
        Some(match self.cancelled_at {
            None => stopped_at + drain,
            Some(at) => at + CANCEL_GRACE,
        })
    }

    /// Visits the Python references for the GC.
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.coroutine)?;
        visit.call(self.step.as_ref())?;
        visit.call(&self.completions)?;
        if let Some(asyncio) = &self.asyncio {
            visit.call(&asyncio.event_loop)?;
            visit.call(&asyncio.create_task)?;
            match &asyncio.current {
                CurrentTask::Dict(dict) => visit.call(dict)?,
                CurrentTask::Calls { enter, leave } => {
                    visit.call(enter)?;
                    visit.call(leave)?;
                }
                CurrentTask::Missing => {}
            }
        }
        for pending in self.tasks.values() {
            visit.call(&pending.task)?;
            visit.call(&pending.resumed)?;
            visit.call(pending.conn.as_ref())?;
        }
        for awaiting in self.awaiting.values() {
            visit.call(&awaiting.conn)?;
        }
        Ok(())
    }
}

impl<'py> Dispatcher<'py> {
    /// What a callback's call came to: its value, or `None` when it is a coroutine that
    /// waits, going on as a task (then `then` is done when it ends). A coroutine's first
    /// step runs here.
    #[inline]
    pub(crate) fn settle(
        &mut self,
        result: PyResult<Bound<'py, PyAny>>,
        conn: Option<&Py<Connection>>,
        then: Then,
    ) -> Option<PyResult<Bound<'py, PyAny>>> {
        let what = then.what();
        let settled = match result {
            Ok(value) if value.get_type().is(self.awaits.coroutine.bind(self.py)) => {
                self.first_step(value, conn, then)
            }
            result => Some(result),
        };
        // A coroutine's first step is part of its callback's run.
        self.leave_callback(what, conn);
        settled
    }

    fn first_step(
        &mut self,
        coro: Bound<'py, PyAny>,
        conn: Option<&Py<Connection>>,
        then: Then,
    ) -> Option<PyResult<Bound<'py, PyAny>>> {
        let context = match copy_context(self.py) {
            Ok(context) => context,
            Err(err) => return Some(Err(err)),
        };
        self.enter_first_steps();
        let sent = send_none(&context, &coro);
        match sent {
            Ok(Sent::Returned(value)) => {
                self.renew_stand_in(false);
                Some(Ok(value))
            }
            Err(err) => {
                self.renew_stand_in(false);
                Some(Err(err))
            }
            Ok(Sent::Waits(waiting)) => {
                let step =
                    (self.awaits.step.as_ref()).map(|s| s.clone_ref(self.py).into_bound(self.py));
                let went_on = self.go_on(&coro, waiting, step, &context, conn, then);
                // The stand-in now stands for that task: the next step gets another.
                self.renew_stand_in(true);
                match went_on {
                    Ok(()) => None,
                    Err(err) => {
                        let _ = coro.call_method0("close");
                        Some(Err(err))
                    }
                }
            }
        }
    }

    /// The first step waits for `waiting`: the coroutine goes on as a task.
    fn go_on(
        &mut self,
        coro: &Bound<'py, PyAny>,
        waiting: Bound<'py, PyAny>,
        step: Option<Bound<'py, FirstStep>>,
        context: &Bound<'py, PyAny>,
        conn: Option<&Py<Connection>>,
        then: Then,
    ) -> PyResult<()> {
        let py = self.py;
        let Some(asyncio) = &self.awaits.asyncio else {
            return Err(Error::State(format!(
                "pygev: {} awaited something that does not finish at once, which needs the \
                 server to be served in an asyncio loop (await server.serve()); start() \
                 without one can only finish coroutines that never wait",
                then.what()
            ))
            .into());
        };
        let resume = &crate::package::classes(py)?.resume;
        let resumed = resume.call1(py, (coro, waiting))?;
        let options = PyDict::new(py);
        options.set_item("context", context)?;
        let task = (asyncio.create_task.bind(py)).call((&resumed,), Some(&options))?;
        let task = task.unbind();
        task.call_method1(py, "add_done_callback", (&self.awaits.completions,))?;
        if let Some(step) = step {
            step.get().attach(task.bind(py))?;
        }
        if let (Some(conn), true) = (conn, then.holds()) {
            let id = conn.get().id_value();
            self.awaits.awaiting.entry(id).or_insert_with(|| Awaiting {
                conn: conn.clone_ref(py),
                held: VecDeque::new(),
            });
        }
        let key = task.as_ptr() as usize;
        let pending = Pending {
            conn: conn.map(|c| c.clone_ref(py)),
            then,
            task,
            resumed,
        };
        self.awaits.tasks.insert(key, pending);
        Ok(())
    }

    /// Holds `work` of `conn`, whose callback awaits. Its loop gets the credit now.
    pub(super) fn hold(&mut self, conn: &Py<Connection>, work: Work) {
        self.credit_loop(conn.get().loop_index, work.cost());
        self.hold_item(conn, Held::Work(work));
    }

    /// `conn` closed while its callback awaits (the caller took it out of the table).
    pub(super) fn hold_close(&mut self, conn: Py<Connection>) {
        self.hold_item(&conn, Held::Closed);
    }

    fn hold_item(&mut self, conn: &Py<Connection>, item: Held) {
        if let Some(awaiting) = self.awaits.awaiting.get_mut(&conn.get().id_value()) {
            awaiting.held.push_back(item);
        }
    }

    /// Takes up the tasks that ended: does what their callbacks' values call for, then
    /// runs the work their connections held, `budget` handler calls of it at most (the
    /// rest goes on in the next batch, before any task ended since). Returns the calls
    /// made.
    pub(super) fn resume_awaited(&mut self, budget: usize) -> usize {
        self.awaits.budget = budget;
        for _ in 0..self.awaits.ready.len() {
            let Some(id) = self.awaits.ready.pop_front() else {
                break;
            };
            if let Some(awaiting) = self.awaits.awaiting.remove(&id) {
                let conn = awaiting.conn.clone_ref(self.py);
                self.run_held(&conn, awaiting, false);
            }
        }
        let done = std::mem::take(
            &mut *self
                .awaits
                .completions
                .get()
                .done
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let count = done.len();
        self.awaits.budget = self.awaits.budget.saturating_sub(count);
        for task in done {
            // Unknown: given up on at the stop.
            if let Some(pending) = self.awaits.tasks.remove(&(task.as_ptr() as usize)) {
                let result = task.bind(self.py).call_method0("result");
                let escaped = pending.resumed.bind(self.py).getattr("escaped");
                let result = match escaped {
                    Ok(escaped) if !escaped.is_none() => Err(PyErr::from_value(escaped)),
                    _ => result,
                };
                self.ended(pending, result);
            }
        }
        let made = budget - self.awaits.budget;
        self.awaits.budget = usize::MAX;
        made
    }

    fn ended(&mut self, pending: Pending, result: PyResult<Bound<'py, PyAny>>) {
        let py = self.py;
        let Pending { conn, then, .. } = pending;
        let what = then.what();
        let Some(conn) = conn else {
            match result {
                Err(err) if !err.is_instance_of::<CancelledError>(py) => {
                    logging::log_exception(py, &format!("pygev: {what} raised"), &err);
                    self.maybe_stop(err);
                }
                _ => {}
            }
            return;
        };
        // Taken out first: what the callback's value leads to (an `on_connect` after an
        // accepted handshake) may await in turn, and the held work then waits for that.
        let held = match then.holds() {
            true => self.awaits.awaiting.remove(&conn.get().id_value()),
            false => None,
        };
        // Cancelled by the stop: what it held is dropped with it.
        let dropped = self.awaits.cancelled_at.is_some()
            && matches!(&result, Err(err) if err.is_instance_of::<CancelledError>(py));
        match (then, result) {
            (then, Err(err)) if err.is_instance_of::<CancelledError>(py) => {
                log::debug!(
                    "pygev: {what} of connection {} was cancelled",
                    conn.get().id_value()
                );
                if let Then::Hook(_) = then {
                    conn.get().request_close(); // never answered
                }
            }
            (Then::Closed, Err(err)) => {
                self.report(what, &conn, &err);
                self.maybe_stop(err);
            }
            (Then::Hook(_), _) if held.as_ref().is_some_and(Awaiting::closed) => {
                // Gone while the hook awaited: no answer, no callbacks.
            }
            (Then::Hook(request), result) => {
                conn.get().mode().answered(self, &conn, &request, result);
            }
            (_, Err(err)) => self.callback_failed(what, &conn, err),
            (Then::Reply, Ok(value)) if !value.is_none() && !conn.get().is_over() => {
                conn.get().mode().reply(self, &conn, value);
            }
            _ => {}
        }
        if let Some(held) = held {
            self.run_held(&conn, held, dropped);
        }
    }

    /// Runs what `conn` held, in order, until a callback awaits again (then the rest stays
    /// held behind it) or the batch's budget is spent (then it goes on in the next); with
    /// `drop_work`, only its `on_close` (the input is dropped).
    fn run_held(&mut self, conn: &Py<Connection>, mut awaiting: Awaiting, drop_work: bool) {
        let id = conn.get().id_value();
        let replaying = std::mem::replace(&mut self.replaying, true);
        loop {
            if let Some(again) = self.awaits.awaiting.get_mut(&id) {
                again.held.append(&mut awaiting.held);
                break;
            }
            if awaiting.held.is_empty() {
                break;
            }
            if self.awaits.budget == 0 {
                self.awaits.ready.push_back(id);
                self.awaits.awaiting.insert(id, awaiting);
                break;
            }
            let Some(held) = awaiting.held.pop_front() else {
                break;
            };
            let made = match held {
                Held::Closed => {
                    self.closed(conn.clone_ref(self.py));
                    1
                }
                Held::Work(work) if drop_work => {
                    self.credit_connection(conn.get(), work.cost());
                    0
                }
                Held::Work(work) => {
                    let (made, rest) = self.work_on(conn, work, self.awaits.budget);
                    if let Some(rest) = rest {
                        awaiting.held.push_front(Held::Work(rest));
                    }
                    made
                }
            };
            self.awaits.budget = self.awaits.budget.saturating_sub(made);
        }
        self.replaying = replaying;
    }

    /// Stopping with callbacks still awaiting: past `drain_timeout` they are cancelled;
    /// tasks that ignore their cancellation are given up on after `CANCEL_GRACE`.
    pub(super) fn expire_awaited(&mut self, stopped_at: Instant) {
        let now = Instant::now();
        match self.awaits.cancelled_at {
            _ if self.awaits.tasks.is_empty() => {}
            None if now >= stopped_at + self.drain_timeout => {
                log::warn!(
                    "pygev: {} callbacks still await {:?} after the stop; cancelling them",
                    self.awaits.tasks.len(),
                    self.drain_timeout
                );
                self.awaits.cancelled_at = Some(now);
                let tasks: Vec<Py<PyAny>> = (self.awaits.tasks.values())
                    .map(|p| p.task.clone_ref(self.py))
                    .collect();
                for task in tasks {
                    if let Err(err) = task.call_method0(self.py, "cancel") {
                        logging::log_exception(self.py, "pygev: cannot cancel a task", &err);
                    }
                }
            }
            Some(at) if now >= at + CANCEL_GRACE => {
                log::error!(
                    "pygev: {} callbacks did not end within {CANCEL_GRACE:?} of their \
                     cancellation; the server stops without them",
                    self.awaits.tasks.len()
                );
                for (_, pending) in std::mem::take(&mut self.awaits.tasks) {
                    // Once more: those that ignored it, and those never cancelled (an
                    // `on_close` started below by an earlier give-up).
                    let _ = pending.task.call_method0(self.py, "cancel");
                }
                // Their connections' `on_close`: one that awaits gets the grace to end,
                // then is given up on in turn.
                self.awaits.ready.clear();
                for (_, awaiting) in std::mem::take(&mut self.awaits.awaiting) {
                    let conn = awaiting.conn.clone_ref(self.py);
                    self.run_held(&conn, awaiting, true);
                }
                // Outside a batch: no first step's stand-in may stay asyncio's current task.
                self.leave_first_steps();
                self.awaits.cancelled_at = Some(now);
            }
            _ => {}
        }
    }
}

//! How the dispatcher is driven: `start()` waits for batches with the GIL released
//! (`run`), `serve()` takes them in turns from an asyncio loop (`turn`); both hand what they
//! took to the same steps, and both stop the same way (quiesce, drain, join).

use std::time::{Duration, Instant};

use pygev_core::{Event, Found, Running};
use pyo3::prelude::*;

use super::{DispatchState, Dispatcher, LoopPhase};
use crate::logging;

/// How long the dispatcher sleeps at most before looking at signals (Ctrl+C).
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// How long one `serve()` turn may go on taking batches before it gives the asyncio loop
/// back (a turn always handles at least one).
// NOTE: a round through asyncio's loop per batch (its select, the turn's scheduling) cost
// serve() about 6% of start()'s messages per CPU-second on the length-prefix echo (batches
// of about 800 messages); 1 ms keeps other coroutines' latency far under asyncio's own
// slow-callback threshold (100 ms).
const TURN_BUDGET: Duration = Duration::from_millis(1);

impl<'py> Dispatcher<'py> {
    /// Callbacks that await go on as tasks in the running asyncio loop (`serve()`).
    pub(crate) fn use_running_loop(&mut self) -> PyResult<()> {
        let py = self.py;
        self.awaits.use_running_loop(py)
    }

    /// Dispatches until the server is stopped and every loop has closed its connections
    /// (`start()`: the blocking driver).
    pub(crate) fn run(mut self, running: &mut Running) -> PyResult<()> {
        let queue = self.shared.queue.clone();
        let mut batch = Vec::new();
        let mut due = Vec::new();
        while !self.finished() {
            self.notice_stop(running);
            // With work left over, take what came meanwhile and go on without sleeping.
            let max_wait = if self.pending.is_empty() {
                SIGNAL_CHECK_INTERVAL
            } else {
                Duration::ZERO
            };
            self.py
                .detach(|| queue.wait(&mut batch, &mut due, max_wait));
            self.handle_taken(running, &mut batch, &mut due);
        }
        self.finish(running)
    }

    /// One turn for a driver that waits elsewhere (asyncio): takes what is queued without
    /// waiting and handles it. Returns `Found::Work` when it should be called again at once
    /// (it found work, or has work left over), else `Found::Idle` with the next timer's
    /// deadline (the queue's doorbell rings for anything else).
    ///
    /// A turn goes on with the next batch while there is one and it has run for less than
    /// [`TURN_BUDGET`], so that under load a batch costs no round through the event loop.
    pub(crate) fn turn(
        &mut self,
        running: &mut Running,
        batch: &mut Vec<Event>,
        due: &mut Vec<u64>,
    ) -> Found {
        let started = Instant::now();
        loop {
            let found = self.turn_once(running, batch, due);
            if found != Found::Work || self.finished() || started.elapsed() >= TURN_BUDGET {
                return found;
            }
        }
    }

    fn turn_once(
        &mut self,
        running: &mut Running,
        batch: &mut Vec<Event>,
        due: &mut Vec<u64>,
    ) -> Found {
        self.notice_stop(running);
        let queue = self.shared.queue.clone();
        queue.clear_doorbell();
        let found = queue.try_take(batch, due);
        self.handle_taken(running, batch, due);
        match found {
            Found::Idle { .. } if !self.pending.is_empty() || self.awaits.has_work() => Found::Work,
            Found::Idle { next_timer } => {
                // Stopping with callbacks awaiting: look again at the stop's deadline; and
                // at a Python framing's partial frames when they may time out.
                let stop = self
                    .stopped_at
                    .and_then(|at| self.awaits.stop_deadline(at, self.drain_timeout));
                let next_timer = [next_timer, stop, self.next_frame_deadline()]
                    .into_iter()
                    .flatten()
                    .min();
                Found::Idle { next_timer }
            }
            found => found,
        }
    }

    /// Whether every loop has exited and no work or callback is left: then
    /// [`Dispatcher::finish`].
    pub(crate) fn finished(&self) -> bool {
        self.phases.iter().all(|p| *p == LoopPhase::Exited)
            && self.pending.is_empty()
            // (`on_close` coroutines the drain started, bounded like the others.)
            && self.awaits.idle()
    }

    /// Starts stopping once a stop was requested: no more accepting, the loops quiesce.
    fn notice_stop(&mut self, running: &mut Running) {
        if !self.stopping && self.shared.queue.stop_requested() {
            self.stopping = true;
            self.stopped_at = Some(Instant::now());
            let open: usize = self.conns.iter().flatten().filter(|c| c.is_some()).count();
            log::info!("pygev: stopping; draining {open} open connections");
            self.py.detach(|| running.stop_accepting());
            running.quiesce();
        }
    }

    /// Handles what a wait or a take brought (and work left over), then what follows: log
    /// records, expired Python frames, and the drain once stopping has caught up.
    fn handle_taken(&mut self, running: &mut Running, batch: &mut Vec<Event>, due: &mut Vec<u64>) {
        if let Err(err) = self.py.check_signals() {
            self.on_interrupt(err);
        }
        if !batch.is_empty()
            || !due.is_empty()
            || !self.pending.is_empty()
            || self.awaits.has_work()
        {
            self.dispatch_batch(batch, due);
        }
        self.expire_partial_frames();
        if let Some(stopped_at) = self.stopped_at {
            self.expire_awaited(stopped_at);
        }
        logging::refresh_level(self.py);
        logging::emit_pending(self.py);
        // Callbacks still awaiting may send yet: the drain waits for them too.
        let caught_up = self.pending.is_empty() && self.awaits.idle();
        if self.stopping
            && !self.drain_sent
            && caught_up
            && !self.phases.contains(&LoopPhase::Serving)
        {
            self.say_going_away();
            // Every message read before the stop has been handled and its replies are
            // posted; now the loops may flush and close.
            running.drain(Instant::now() + self.drain_timeout);
            self.drain_sent = true;
        }
    }

    /// The loops have ended: joins them, fails the connects they never answered, and
    /// returns the error a callback stopped the server with, if any.
    pub(crate) fn finish(mut self, running: &mut Running) -> PyResult<()> {
        self.py.detach(|| running.join());
        self.shared.drains.close_all(self.py);
        // Connects the loops never answered (posted as they ended).
        self.shared
            .dials
            .abort_all(self.py, "pygev: the server stopped");
        logging::emit_pending(self.py);
        match self.pending_error.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Takes the dispatcher apart between a driver's turns (the GIL token stays behind).
    pub(crate) fn into_state(self) -> DispatchState {
        self.state
    }

    /// The dispatcher again, for a driver's next turn.
    pub(crate) fn resume(py: Python<'py>, state: DispatchState) -> Self {
        Dispatcher { py, state }
    }

    /// The server stops: every open WebSocket connection gets a close frame (1001) after
    /// what was already queued for it.
    fn say_going_away(&self) {
        for conn in self.conns.iter().flatten().flatten() {
            let conn = conn.get();
            if conn.mode().say_goodbye(conn, 1001, "server stopping") {
                conn.request_close();
            }
        }
    }
}

//! The queue that carries events from loop threads to the dispatcher, in batches.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::event::Event;

/// Events from every loop, plus the dispatcher's timers and stop flag.
///
/// Loop threads [`push`](Self::push) the events of one poll iteration at once; the
/// dispatcher [`wait`](Self::wait)s and takes everything queued in one swap, so one wake-up
/// (and, in the binding, one GIL acquisition) serves a whole batch. No lock is held while
/// events are handled.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use pygev_core::{DispatchQueue, Event};
///
/// let queue = DispatchQueue::new();
/// queue.push(&mut vec![Event::Quiesced { loop_index: 0 }]);
/// let mut batch = Vec::new();
/// let mut due = Vec::new();
/// queue.wait(&mut batch, &mut due, Duration::from_millis(10));
/// assert_eq!(batch.len(), 1);
/// ```
#[derive(Debug, Default)]
pub struct DispatchQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
    /// The wake-up as a descriptor, for a dispatcher driven by an event loop that waits on
    /// descriptors (asyncio); made when first asked for.
    doorbell: OnceLock<Doorbell>,
}

/// A socket pair: a byte written to `ring` makes `listen` readable.
#[derive(Debug)]
struct Doorbell {
    listen: UnixStream,
    ring: UnixStream,
}

/// What [`DispatchQueue::try_take`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Events or due timers were taken (or a stop was requested).
    Work,
    /// Nothing: the doorbell rings when something comes. `next_timer` is when the next
    /// timer falls due, which rings nothing: the caller wakes itself then.
    Idle {
        /// The earliest timer's deadline.
        next_timer: Option<Instant>,
    },
}

#[derive(Debug, Default)]
struct QueueState {
    events: Vec<Event>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Timers cancelled while still in the heap: skipped when due, and dropped from the
    /// heap once they are half of it.
    cancelled: HashSet<u64>,
    /// The dispatcher sleeps on `ready` and must be notified.
    waiting: bool,
    /// The dispatcher waits for the doorbell and it must be rung.
    armed: bool,
    /// A wake-up with no event (stop requested, or a timer scheduled).
    interrupted: bool,
    stop_requested: bool,
    /// [`DispatchQueue::try_take`] reported the stop request (it reports it once: a driver
    /// that stops waits for events again, not in a busy loop).
    stop_reported: bool,
}

impl DispatchQueue {
    /// Creates an empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves all of `events` to the queue (leaving `events` empty), waking the dispatcher if
    /// it sleeps.
    pub fn push(&self, events: &mut Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut state = self.lock();
        if state.events.is_empty() {
            std::mem::swap(&mut state.events, events);
        } else {
            state.events.append(events);
        }
        self.notify(state);
    }

    /// Wakes a waiting dispatcher. The lock is released first: a dispatcher woken on the
    /// same CPU would otherwise block on it at once and switch straight back.
    fn notify(&self, mut state: MutexGuard<'_, QueueState>) {
        let waiting = std::mem::replace(&mut state.waiting, false);
        let armed = std::mem::replace(&mut state.armed, false);
        drop(state);
        if waiting {
            self.ready.notify_one();
        }
        if armed {
            self.ring();
        }
    }

    fn ring(&self) {
        if let Some(doorbell) = self.doorbell.get() {
            // A full socket buffer (WouldBlock) means it rang already; nothing else fails.
            let _ = (&doorbell.ring).write(&[1]);
        }
    }

    /// The descriptor that becomes readable when [`try_take`](Self::try_take) has work
    /// again after it found none: for a dispatcher run by an event loop that waits on
    /// descriptors (asyncio's `add_reader`). Made on the first call; the queue owns it.
    pub fn doorbell_fd(&self) -> io::Result<RawFd> {
        if let Some(doorbell) = self.doorbell.get() {
            return Ok(doorbell.listen.as_raw_fd());
        }
        let (listen, ring) = UnixStream::pair()?;
        listen.set_nonblocking(true)?;
        ring.set_nonblocking(true)?;
        let _ = self.doorbell.set(Doorbell { listen, ring });
        Ok(self.doorbell.get().expect("set above").listen.as_raw_fd())
    }

    /// Takes the rings the doorbell has had (its descriptor is no longer readable).
    pub fn clear_doorbell(&self) {
        if let Some(doorbell) = self.doorbell.get() {
            let mut rings = [0; 64];
            // A short read took every ring (no second call to hear WouldBlock).
            while matches!((&doorbell.listen).read(&mut rings), Ok(n) if n == rings.len()) {}
        }
    }

    /// Takes what is queued (into `batch`, as [`wait`](Self::wait) does) and the due
    /// timers (onto `due`) without waiting. When there is nothing, arms the doorbell (see
    /// [`doorbell_fd`](Self::doorbell_fd)): the next push, timer scheduled or stop request
    /// rings it. A stop request counts as work once.
    pub fn try_take(&self, batch: &mut Vec<Event>, due: &mut Vec<u64>) -> Found {
        let mut state = self.lock();
        let now = Instant::now();
        take_due(&mut state, now, due);
        // A wake-up without events (a timer scheduled) only needs the deadline below.
        state.interrupted = false;
        let stop_news = state.stop_requested && !state.stop_reported;
        state.stop_reported |= stop_news;
        if !state.events.is_empty() || !due.is_empty() || stop_news {
            std::mem::swap(&mut state.events, batch);
            return Found::Work;
        }
        state.armed = true;
        Found::Idle {
            next_timer: state.timers.peek().map(|Reverse((deadline, _))| *deadline),
        }
    }

    /// Wakes the dispatcher without an event: it sleeps no longer (or its doorbell rings),
    /// for news it keeps itself (a Python callback that was awaiting has finished).
    pub fn wake(&self) {
        let mut state = self.lock();
        state.interrupted = true;
        self.notify(state);
    }

    /// Arranges for timer `id` to be reported as due at `deadline`.
    pub fn schedule_timer(&self, deadline: Instant, id: u64) {
        let mut state = self.lock();
        state.timers.push(Reverse((deadline, id)));
        // A sleeping dispatcher recomputes its timeout from the heap when woken.
        self.notify(state);
    }

    /// Forgets timer `id` (scheduled with [`schedule_timer`](Self::schedule_timer) and not
    /// yet reported): it will not be reported, and its entry does not stay in memory until
    /// its deadline.
    pub fn cancel_timer(&self, id: u64) {
        let mut state = self.lock();
        state.cancelled.insert(id);
        // NOTE: compacting once the cancelled are half the heap keeps cancelling O(1)
        // amortised and the heap at most twice the live timers (2 million cancels of
        // far-off timers held 45 MiB before).
        if state.cancelled.len() > 64 && state.cancelled.len() * 2 > state.timers.len() {
            let QueueState {
                timers, cancelled, ..
            } = &mut *state;
            timers.retain(|Reverse((_, id))| !cancelled.contains(id));
            cancelled.clear();
        }
    }

    /// Forgets every timer.
    pub fn clear_timers(&self) {
        let mut state = self.lock();
        state.timers.clear();
        state.cancelled.clear();
    }

    /// Events the loops queued that the dispatcher has not taken yet (it takes them all at
    /// once, so this is what arrived since its last take).
    pub fn queued_events(&self) -> usize {
        self.lock().events.len()
    }

    /// Timer entries held (live ones, and cancelled ones not yet dropped).
    pub fn timers_queued(&self) -> usize {
        self.lock().timers.len()
    }

    /// Asks the dispatcher to stop; it sees [`stop_requested`](Self::stop_requested) after
    /// its current wait.
    pub fn request_stop(&self) {
        let mut state = self.lock();
        state.stop_requested = true;
        state.interrupted = true;
        self.notify(state);
    }

    /// Whether [`request_stop`](Self::request_stop) was called.
    pub fn stop_requested(&self) -> bool {
        self.lock().stop_requested
    }

    /// Waits up to `max_wait` for events, a due timer or a stop request.
    ///
    /// Queued events are swapped into `batch` (which should be empty; its allocation is
    /// reused) and the ids of due timers appended to `due`, in deadline order.
    pub fn wait(&self, batch: &mut Vec<Event>, due: &mut Vec<u64>, max_wait: Duration) {
        let give_up = Instant::now() + max_wait;
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            take_due(&mut state, now, due);
            if !state.events.is_empty() || !due.is_empty() || state.interrupted || now >= give_up {
                state.interrupted = false;
                std::mem::swap(&mut state.events, batch);
                return;
            }
            let mut until = give_up;
            if let Some(Reverse((deadline, _))) = state.timers.peek() {
                until = until.min(*deadline);
            }
            state.waiting = true;
            state = self
                .ready
                .wait_timeout(state, until.saturating_duration_since(now))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            state.waiting = false;
        }
    }
}

/// Moves the ids of the timers due by `now` onto `due`, in deadline order (cancelled ones
/// dropped).
fn take_due(state: &mut QueueState, now: Instant, due: &mut Vec<u64>) {
    while let Some(Reverse((deadline, id))) = state.timers.peek().copied() {
        if deadline > now {
            break;
        }
        state.timers.pop();
        if !state.cancelled.remove(&id) {
            due.push(id);
        }
    }
}

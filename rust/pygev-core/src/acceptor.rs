//! The acceptor thread: accepts connections and hands them to loops.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};

use crate::address::Address;
use crate::config::Strategy;
use crate::event::Command;
use crate::listener::Listener;
use crate::loop_handle::LoopHandle;
use crate::transport::Transport;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connections accepted per readiness event before the loops are told.
const ACCEPT_BATCH: usize = 256;

/// How long accepting pauses after EMFILE and friends, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often the acceptor looks again while every loop's dispatch queue is full (new
/// connections wait in the kernel's backlog meanwhile).
const BACKLOGGED_RETRY: Duration = Duration::from_millis(10);

/// What to do after an accept round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptNext {
    /// The backlog is empty: wait for the next readiness event.
    Idle,
    /// The batch was full: accept again soon (edge-triggered: no new event will come).
    Again,
    /// Out of descriptors or memory: retry at this instant instead of spinning.
    RetryAt(Instant),
}

/// Accepting with a bounded batch and a backoff on resource errors; shared by the acceptor
/// thread and the loops that own a SO_REUSEPORT listener.
#[derive(Debug, Default)]
pub(crate) struct Accepting {
    paused_until: Option<Instant>,
    last_log: Option<Instant>,
}

impl Accepting {
    /// Accepts up to `max` connections (and `ACCEPT_BATCH` at most) into `out`.
    pub(crate) fn accept(
        &mut self,
        listener: &Listener,
        out: &mut Vec<(Transport, Address)>,
        max: usize,
        now: Instant,
    ) -> AcceptNext {
        if let Some(until) = self.paused_until {
            if now < until {
                return AcceptNext::RetryAt(until);
            }
            self.paused_until = None;
        }
        let max = max.min(ACCEPT_BATCH);
        while out.len() < max {
            match listener.accept() {
                Ok(accepted) => out.push(accepted),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return AcceptNext::Idle,
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    let until = now + ACCEPT_BACKOFF;
                    self.paused_until = Some(until);
                    if self
                        .last_log
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                    {
                        log::warn!("pygev: accept failed ({e}); pausing accepts for 100 ms");
                        self.last_log = Some(now);
                    }
                    return AcceptNext::RetryAt(until);
                }
            }
        }
        AcceptNext::Again
    }
}

/// Errors that concern one aborted connection only.
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) || err.raw_os_error() == Some(libc::EPROTO)
        || err.raw_os_error() == Some(libc::EPERM)
}

/// A running acceptor thread.
pub(crate) struct Acceptor {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    pub(crate) fn spawn(
        mut listener: Listener,
        loops: Vec<Arc<LoopHandle>>,
        strategy: Strategy,
        dispatch_high_water: usize,
    ) -> io::Result<Acceptor> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("pygev-acceptor".into())
            .spawn(move || {
                run(
                    poll,
                    listener,
                    loops,
                    strategy,
                    dispatch_high_water,
                    thread_stop,
                )
            })?;
        Ok(Acceptor {
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// Stops accepting and closes the listening socket; returns once the thread ended.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pick_loop(loops: &[Arc<LoopHandle>], strategy: Strategy, next: &mut usize) -> usize {
    match strategy {
        Strategy::RoundRobin => {
            let index = *next % loops.len();
            *next = next.wrapping_add(1);
            index
        }
        Strategy::LeastConnections => {
            let load = |h: &Arc<LoopHandle>| {
                h.assigned
                    .load(Ordering::Relaxed)
                    .saturating_sub(h.stats.closed.load(Ordering::Relaxed))
            };
            (0..loops.len())
                .min_by_key(|&i| load(&loops[i]))
                .unwrap_or(0)
        }
    }
}

fn run(
    mut poll: Poll,
    listener: Listener,
    loops: Vec<Arc<LoopHandle>>,
    strategy: Strategy,
    dispatch_high_water: usize,
    stop: Arc<AtomicBool>,
) {
    let mut events = Events::with_capacity(16);
    let mut accepting = Accepting::default();
    let mut accepted = Vec::new();
    let mut outboxes: Vec<Vec<Command>> = loops.iter().map(|_| Vec::new()).collect();
    let mut next = 0usize;
    let mut timeout: Option<Duration> = None;
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("pygev: acceptor poll failed: {e}");
                return;
            }
        }
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let now = Instant::now();
            // Connect events count toward dispatch backpressure: while Python is behind on
            // every loop, new connections wait in the kernel's backlog.
            let room: usize = loops
                .iter()
                .map(|h| h.dispatch_room(dispatch_high_water))
                .sum();
            if room == 0 {
                timeout = Some(BACKLOGGED_RETRY);
                break;
            }
            let outcome = accepting.accept(&listener, &mut accepted, room, now);
            for (transport, peer) in accepted.drain(..) {
                let mut index = pick_loop(&loops, strategy, &mut next);
                if loops[index].dispatch_room(dispatch_high_water) == 0 {
                    // That loop's queue is full: another that has room takes it.
                    index = (0..loops.len())
                        .find(|&i| loops[i].dispatch_room(dispatch_high_water) > 0)
                        .unwrap_or(index);
                }
                loops[index].assigned.fetch_add(1, Ordering::Relaxed);
                // Charged now, so that the room seen next time counts the connections on
                // their way to the loop (its Connect event carries this charge).
                loops[index].charge_dispatch(crate::event::EVENT_COST);
                outboxes[index].push(Command::Register { transport, peer });
            }
            for (handle, outbox) in loops.iter().zip(outboxes.iter_mut()) {
                if let Err(e) = handle.post_all(outbox) {
                    log::error!("pygev: could not wake loop {}: {e}", handle.index());
                }
            }
            match outcome {
                AcceptNext::Again => continue,
                AcceptNext::Idle => timeout = None,
                AcceptNext::RetryAt(until) => timeout = Some(until.saturating_duration_since(now)),
            }
            break;
        }
    }
}

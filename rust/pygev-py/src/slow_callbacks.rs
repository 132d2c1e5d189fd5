//! Slow callbacks made visible: a watchdog thread notices a Python callback that holds the
//! dispatcher longer than `slow_callback_duration`, and the dispatcher logs it when it
//! returns, naming the callback and its connection (as asyncio's debug mode does).
//!
//! The dispatcher only bumps a counter around each callback (odd while one runs: two plain
//! stores, no clock read); the watchdog looks at it every tenth of the threshold and
//! notes since when the same callback runs. It parks after a second without callbacks, so
//! an idle server costs one wake-up a second at most.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long the dispatcher may sit without callbacks before the watchdog parks.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// What the dispatcher and its watchdog share.
struct Watch {
    /// Callbacks begun and ended so far: odd while one runs. Written by the dispatcher only.
    seq: AtomicU64,
    /// The `seq` the watchdog found slow (0: none).
    slow_seq: AtomicU64,
    /// Since when the watchdog saw that callback run, in nanoseconds after `epoch`.
    slow_since: AtomicU64,
    parked: AtomicBool,
    stop: AtomicBool,
    epoch: Instant,
    threshold: Duration,
    tick: Duration,
}

/// The dispatcher's side: its callbacks are watched while this lives (when enabled).
pub(crate) struct SlowCallbacks {
    watch: Option<Arc<Watch>>,
    thread: Option<JoinHandle<()>>,
}

/// A callback that ran too long: for how long, about (within a tenth of the threshold).
pub(crate) struct Slow {
    pub(crate) took: Duration,
    pub(crate) threshold: Duration,
}

impl SlowCallbacks {
    /// Watches callbacks that run longer than `threshold`; `None` watches none.
    pub(crate) fn new(threshold: Option<Duration>) -> SlowCallbacks {
        let Some(threshold) = threshold else {
            return SlowCallbacks::off();
        };
        let watch = Arc::new(Watch {
            seq: AtomicU64::new(0),
            slow_seq: AtomicU64::new(0),
            slow_since: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            epoch: Instant::now(),
            threshold,
            tick: (threshold / 10).max(Duration::from_millis(1)),
        });
        let watcher = watch.clone();
        let thread = thread::Builder::new()
            .name("pygev-watchdog".into())
            .spawn(move || watcher.run());
        match thread {
            Ok(thread) => SlowCallbacks {
                watch: Some(watch),
                thread: Some(thread),
            },
            Err(err) => {
                log::warn!("pygev: slow callbacks go unreported: cannot start a thread: {err}");
                SlowCallbacks::off()
            }
        }
    }

    fn off() -> SlowCallbacks {
        SlowCallbacks {
            watch: None,
            thread: None,
        }
    }

    /// A callback begins (one inside another counts as part of it).
    #[inline]
    pub(crate) fn enter(&self) {
        let Some(watch) = &self.watch else { return };
        let seq = watch.seq.load(Ordering::Relaxed);
        if seq % 2 == 1 {
            return;
        }
        watch.seq.store(seq + 1, Ordering::Release);
        if watch.parked.load(Ordering::Relaxed) {
            self.wake();
        }
    }

    #[cold]
    fn wake(&self) {
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }

    /// The callback has returned: `Some` when it ran too long.
    #[inline]
    pub(crate) fn leave(&self) -> Option<Slow> {
        let watch = self.watch.as_ref()?;
        let seq = watch.seq.load(Ordering::Relaxed);
        if seq % 2 == 0 {
            return None;
        }
        watch.seq.store(seq + 1, Ordering::Release);
        if watch.slow_seq.load(Ordering::Acquire) != seq {
            return None;
        }
        Some(watch.slow())
    }
}

impl Drop for SlowCallbacks {
    fn drop(&mut self) {
        if let (Some(watch), Some(thread)) = (&self.watch, self.thread.take()) {
            watch.stop.store(true, Ordering::Release);
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Watch {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// How long the callback the watchdog found slow ran: from when it first saw it,
    /// plus half a tick for the time before (it began within a tick before that).
    #[cold]
    fn slow(&self) -> Slow {
        let since = Duration::from_nanos(self.slow_since.load(Ordering::Relaxed));
        Slow {
            took: Instant::now().saturating_duration_since(self.epoch + since) + self.tick / 2,
            threshold: self.threshold,
        }
    }

    /// The watchdog: until stopped, flags a callback seen running for the threshold.
    fn run(&self) {
        let mut seen = self.seq.load(Ordering::Acquire);
        let mut seen_at = Instant::now();
        let mut flagged = false;
        while !self.stop.load(Ordering::Acquire) {
            let seq = self.seq.load(Ordering::Acquire);
            let now = Instant::now();
            if seq != seen {
                (seen, seen_at, flagged) = (seq, now, false);
            } else if seq % 2 == 1 {
                if !flagged && now - seen_at + self.tick / 2 >= self.threshold {
                    self.slow_since
                        .store(self.nanos(seen_at), Ordering::Relaxed);
                    self.slow_seq.store(seq, Ordering::Release);
                    flagged = true;
                }
            } else if now - seen_at >= PARK_AFTER {
                self.park(seq);
                continue;
            }
            thread::sleep(self.tick);
        }
    }

    /// Sleeps until the dispatcher enters a callback (or for a second: it may have entered
    /// one just before it could see us parked).
    fn park(&self, seq: u64) {
        self.parked.store(true, Ordering::SeqCst);
        if self.seq.load(Ordering::SeqCst) == seq && !self.stop.load(Ordering::Acquire) {
            thread::park_timeout(PARK_AFTER);
        }
        self.parked.store(false, Ordering::Relaxed);
    }
}

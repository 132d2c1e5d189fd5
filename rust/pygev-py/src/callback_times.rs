//! How long Python callbacks hold the dispatcher, as a histogram, when asked for
//! (`server.time_callbacks = True`): fixed log-scale buckets of atomic counters that the
//! dispatcher fills and `server.stats()` reads from any thread.
//!
//! The clock is read once per callback, as it returns: a callback's time runs from the
//! return of the callback before it in the same batch (or from its own start, for a batch's
//! first), so it includes pygev's own work for that event (making the `bytes`, packing the
//! reply: well under a microsecond). Whether to time is read once per batch; off, a
//! callback costs one test of a flag on each side.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

/// Finite buckets: bucket `k` counts durations up to 2^k microseconds (1 µs to 8.4 s);
/// one more counts the longer ones.
pub(crate) const BUCKETS: usize = 24;

/// The histogram, shared by the server (which reads it) and its dispatcher (which alone
/// writes it).
#[derive(Default)]
pub(crate) struct CallbackTimes {
    enabled: AtomicBool,
    /// Durations per bucket (not cumulative); the last one is past every bound.
    counts: [AtomicU64; BUCKETS + 1],
    sum_nanos: AtomicU64,
}

/// What [`CallbackTimes::snapshot`] read.
pub(crate) struct Histogram {
    /// Per bucket: its upper bound in seconds (infinite for the last) and the count of
    /// durations up to it (cumulative).
    pub(crate) buckets: Vec<(f64, u64)>,
    pub(crate) sum_seconds: f64,
}

impl CallbackTimes {
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    pub(crate) fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Relaxed);
    }

    /// Counts one duration. Only the dispatcher writes, so a load and a store suffice (no
    /// locked read-modify-write).
    fn record(&self, nanos: u64) {
        let micros_above = nanos.saturating_sub(1) / 1000;
        // The smallest k with nanos <= 1000 * 2^k.
        let k = (u64::BITS - micros_above.leading_zeros()) as usize;
        let counter = &self.counts[k.min(BUCKETS)];
        counter.store(counter.load(Relaxed) + 1, Relaxed);
        self.sum_nanos
            .store(self.sum_nanos.load(Relaxed) + nanos, Relaxed);
    }

    /// Reads the histogram (while the dispatcher may be adding to it: the count of the
    /// last bucket is the total of those read).
    pub(crate) fn snapshot(&self) -> Histogram {
        let mut total = 0;
        let buckets = (0..=BUCKETS)
            .map(|k| {
                total += self.counts[k].load(Relaxed);
                let bound = if k < BUCKETS {
                    1e-6 * f64::from(1u32 << k)
                } else {
                    f64::INFINITY
                };
                (bound, total)
            })
            .collect();
        Histogram {
            buckets,
            sum_seconds: self.sum_nanos.load(Relaxed) as f64 * 1e-9,
        }
    }
}

/// The dispatcher's side: whether this batch is timed, and when the last callback returned.
///
/// NOTE: callgrind, `benches/icount.sh` (64 B echo, Ir per message, before -> off -> on):
/// length-prefix 1,563 -> 1,566 -> 1,698, WebSocket 1,587 -> 1,598 -> 1,730 (off, this
/// crate's own share was unchanged: 762 -> 760 on WebSocket). A first version that asked
/// the server's flag and the mark on each side cost 14 Ir per message off; reading the
/// flag once per batch and counting out of line leaves one test each side.
pub(crate) struct CallbackClock {
    times: Arc<CallbackTimes>,
    /// Timing this batch (the server's setting, read as the batch began).
    on: Cell<bool>,
    /// When the time of the next callback began (`None`: none began in this batch yet).
    mark: Cell<Option<Instant>>,
}

impl CallbackClock {
    pub(crate) fn new(times: Arc<CallbackTimes>) -> CallbackClock {
        CallbackClock {
            times,
            on: Cell::new(false),
            mark: Cell::new(None),
        }
    }

    /// A batch begins: its callbacks are timed if the server says so now.
    pub(crate) fn begin_batch(&self) {
        self.mark.set(None);
        self.on.set(self.times.enabled());
    }

    /// The batch ended: the wait for the next one is no callback's.
    pub(crate) fn end_batch(&self) {
        self.mark.set(None);
    }

    /// A callback begins: the clock starts, unless one returned earlier in this batch.
    #[inline(always)]
    pub(crate) fn enter(&self) {
        if self.on.get() && self.mark.get().is_none() {
            self.mark.set(Some(Instant::now()));
        }
    }

    /// A callback returned: its time is counted, and the next one's begins.
    #[inline(always)]
    pub(crate) fn leave(&self) {
        if self.on.get() {
            self.count();
        }
    }

    #[inline(never)]
    fn count(&self) {
        if let Some(began) = self.mark.get() {
            let now = Instant::now();
            let nanos = u64::try_from((now - began).as_nanos()).unwrap_or(u64::MAX);
            self.times.record(nanos);
            self.mark.set(Some(now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_smallest_bucket_that_holds_them() {
        let times = CallbackTimes::default();
        for nanos in [
            0,
            1000,
            1001,
            2000,
            2001,
            8_388_608_000,
            8_388_608_001,
            u64::MAX / 2,
        ] {
            times.record(nanos);
        }
        let counts: Vec<u64> = times.counts.iter().map(|c| c.load(Relaxed)).collect();
        assert_eq!(counts[0], 2, "0 and 1 µs");
        assert_eq!(counts[1], 2, "1.001 and 2 µs");
        assert_eq!(counts[2], 1, "2.001 µs");
        assert_eq!(counts[BUCKETS - 1], 1, "2^23 µs");
        assert_eq!(counts[BUCKETS], 2, "past every bound");
        let snapshot = times.snapshot();
        assert_eq!(snapshot.buckets.len(), BUCKETS + 1);
        assert_eq!(snapshot.buckets[0], (1e-6, 2));
        assert_eq!(snapshot.buckets[BUCKETS], (f64::INFINITY, 8));
    }

    #[test]
    fn a_clock_counts_only_while_enabled_and_within_a_batch() {
        let times = Arc::new(CallbackTimes::default());
        let clock = CallbackClock::new(times.clone());
        clock.begin_batch();
        clock.enter();
        clock.leave();
        clock.end_batch();
        assert_eq!(times.snapshot().buckets[BUCKETS].1, 0, "off");
        times.set_enabled(true);
        clock.enter();
        clock.leave();
        assert_eq!(
            times.snapshot().buckets[BUCKETS].1,
            0,
            "from the next batch on"
        );
        clock.begin_batch();
        for _ in 0..3 {
            clock.enter();
            clock.leave();
        }
        clock.end_batch();
        clock.leave(); // no callback began since the batch ended: nothing
        assert_eq!(times.snapshot().buckets[BUCKETS].1, 3);
    }
}

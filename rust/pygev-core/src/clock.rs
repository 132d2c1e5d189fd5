//! A loop's clock: milliseconds since the loop started, in eight bytes.

use std::time::{Duration, Instant};

/// A point in time, in milliseconds since its loop's [`Clock`] started.
///
/// NOTE: a connection keeps several times (last read, last progress, frame start, close
/// deadline, next wake-up); as `Instant`s they would take 16 bytes each. Eight bytes and a
/// millisecond's resolution are plenty for timeouts of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Millis(u64);

impl Millis {
    /// Never: later than any real time.
    pub(crate) const NEVER: Millis = Millis(u64::MAX);

    /// Whether this is [`Millis::NEVER`].
    pub(crate) fn is_never(self) -> bool {
        self == Millis::NEVER
    }

    /// `self` plus `duration` (saturating: never overflows into the past).
    pub(crate) fn after(self, duration: Duration) -> Millis {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Millis(self.0.saturating_add(ms))
    }

    /// `self` minus `duration` (saturating at the clock's start).
    pub(crate) fn before(self, duration: Duration) -> Millis {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Millis(self.0.saturating_sub(ms))
    }

    /// How long after `earlier` this is (zero if it is not later).
    pub(crate) fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Converts between `Instant`s and a loop's [`Millis`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose zero is `epoch`.
    pub(crate) fn new(epoch: Instant) -> Clock {
        Clock { epoch }
    }

    /// `instant` on this clock (instants before the epoch read as zero).
    pub(crate) fn millis(&self, instant: Instant) -> Millis {
        let ms = instant.saturating_duration_since(self.epoch).as_millis();
        Millis(u64::try_from(ms).unwrap_or(u64::MAX - 1))
    }

    /// `instant` on this clock, rounded up (a deadline is never seen as due early).
    pub(crate) fn millis_ceil(&self, instant: Instant) -> Millis {
        let since = instant.saturating_duration_since(self.epoch);
        let ms = since.as_millis() + u128::from(since.subsec_nanos() % 1_000_000 != 0);
        Millis(u64::try_from(ms).unwrap_or(u64::MAX - 1))
    }

    /// `millis` as an `Instant` ([`Millis::NEVER`] maps to far in the future).
    pub(crate) fn instant(&self, millis: Millis) -> Instant {
        let far = Duration::from_secs(1 << 32);
        let offset = Duration::from_millis(millis.0).min(far);
        self.epoch + offset
    }
}

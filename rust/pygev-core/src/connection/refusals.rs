//! Connections refused at accept, counted and said in the log once a second at most (a
//! scanner or a flood must not flood the log).

use std::time::Instant;

/// One kind of refusal's count since its last log line, and when that was.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    since_logged: u64,
    logged_at: Option<Instant>,
}

impl Refusals {
    /// Counts a refusal at `now`; returns how many to say in a log line now (this one
    /// included), or `None` within a second of the last line.
    pub(super) fn note(&mut self, now: Instant) -> Option<u64> {
        self.since_logged += 1;
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at).as_secs() < 1)
        {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.since_logged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn said_once_a_second_with_the_count_since() {
        let t0 = Instant::now();
        let mut refusals = Refusals::default();
        assert_eq!(refusals.note(t0), Some(1));
        assert_eq!(refusals.note(t0 + Duration::from_millis(10)), None);
        assert_eq!(refusals.note(t0 + Duration::from_millis(990)), None);
        assert_eq!(refusals.note(t0 + Duration::from_secs(1)), Some(3));
        assert_eq!(refusals.note(t0 + Duration::from_secs(5)), Some(1));
    }
}

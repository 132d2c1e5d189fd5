//! The loop's deadline heap: when each connection next needs the loop's attention.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::clock::Millis;

/// Wake-ups of a loop's connections, earliest first.
///
/// A connection is in the heap only while some deadline of its own is running (idle
/// timeout, frame deadline, keepalive, handshake, drain): an idle connection with none
/// costs the loop nothing. Entries are not removed when a deadline moves later (activity
/// only pushes deadlines later, and touching the heap per read would cost more than a
/// spurious wake-up); the connection keeps the time of its one live entry (`wake_at`), so
/// the loop skips stale entries as they come out, and [`Deadlines::compact`] drops them when
/// they outnumber the live ones.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    heap: BinaryHeap<Reverse<Entry>>,
}

/// One wake-up: when, and which connection (its slot and id, as slots are reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    pub(crate) at: Millis,
    pub(crate) token: usize,
    pub(crate) id: u64,
}

impl Deadlines {
    /// Adds a wake-up.
    pub(crate) fn push(&mut self, at: Millis, token: usize, id: u64) {
        self.heap.push(Reverse(Entry { at, token, id }));
    }

    /// The earliest wake-up, if any.
    pub(crate) fn next(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse(entry)| entry.at)
    }

    /// Takes the earliest wake-up if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Millis) -> Option<Entry> {
        match self.heap.peek() {
            Some(Reverse(entry)) if entry.at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Number of entries, stale ones included.
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Keeps only the entries `live` accepts.
    pub(crate) fn compact(&mut self, mut live: impl FnMut(&Entry) -> bool) {
        self.heap.retain(|Reverse(entry)| live(entry));
    }

    /// Gives back the room a burst of entries left (a ramp of WebSocket handshakes puts
    /// every new connection in for its handshake timeout): once under a quarter of it is
    /// used, the heap shrinks to twice what is (never under [`KEEP_ROOM`] entries).
    pub(crate) fn release_room(&mut self) {
        let (len, room) = (self.heap.len(), self.heap.capacity());
        if room > KEEP_ROOM && len < room / 4 {
            self.heap.shrink_to((2 * len).max(KEEP_ROOM));
        }
    }
}

/// Entries' room the heap keeps however few it holds (6 KiB).
const KEEP_ROOM: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_room_of_a_burst_is_given_back_once_it_has_passed() {
        let t0 =
            crate::clock::Clock::new(std::time::Instant::now()).millis(std::time::Instant::now());
        let mut deadlines = Deadlines::default();
        for token in 0..10_000 {
            deadlines.push(t0.after(Duration::from_millis(token as u64)), token, 0);
        }
        deadlines.release_room();
        assert!(deadlines.heap.capacity() >= 10_000, "all of it is in use");
        let now = t0.after(Duration::from_millis(8_999));
        while deadlines.pop_due(now).is_some() {}
        deadlines.release_room();
        assert_eq!(deadlines.len(), 1_000);
        assert!((2_000..4_000).contains(&deadlines.heap.capacity()));
        while deadlines
            .pop_due(t0.after(Duration::from_secs(60)))
            .is_some()
        {}
        deadlines.release_room();
        assert!(deadlines.heap.capacity() <= 2 * KEEP_ROOM);
        assert!(deadlines.heap.capacity() >= KEEP_ROOM);
    }

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let base = crate::clock::Clock::new(std::time::Instant::now());
        let t0 = base.millis(std::time::Instant::now());
        let mut deadlines = Deadlines::default();
        deadlines.push(t0.after(Duration::from_millis(30)), 3, 30);
        deadlines.push(t0.after(Duration::from_millis(10)), 1, 10);
        deadlines.push(t0.after(Duration::from_millis(20)), 2, 20);
        assert_eq!(deadlines.next(), Some(t0.after(Duration::from_millis(10))));
        assert!(deadlines.pop_due(t0).is_none());
        let now = t0.after(Duration::from_millis(25));
        let due: Vec<usize> = std::iter::from_fn(|| deadlines.pop_due(now))
            .map(|e| e.token)
            .collect();
        assert_eq!(due, vec![1, 2]);
        deadlines.compact(|e| e.token != 3);
        assert_eq!(deadlines.len(), 0);
    }
}

//! Bounded, fair rounds: the dispatcher makes at most `max_batch_events` handler calls per
//! batch, and connections with much queued take turns instead of the loudest going first.
//!
//! A round that fits the bound runs its events in arrival order, as they came. Past the
//! bound, the work (what arrived, after what was left over) runs in two passes: first every
//! connection gets up to `QUANTUM` calls, in arrival order; then what is left of the bound
//! goes in arrival order again. A connection's own events always keep their order (once
//! one of them waits, its later ones wait too), and so do a loop's events about itself. What
//! does not fit waits for the next round, after the batch's replies went out and the loops
//! got their credit: a bystander's message is handled within one round of arriving,
//! however much another connection has queued.

use std::collections::HashSet;

use pygev_core::{Event, Frames, EVENT_COST};

use pyo3::prelude::*;

use super::{Dispatcher, Frame};
use crate::connection::Connection;

/// Handler calls a connection may make in the first pass of a round past the bound.
const QUANTUM: usize = 64;

/// The slot of a loop's own events (not a connection's) in a work item's key.
const LOOP_SLOT: u32 = u32::MAX;

/// What the dispatcher has yet to do.
pub(crate) enum Work {
    /// An event not started yet.
    Event(Event),
    /// The frames of a `Messages` event, of which the first `next` were handled.
    Frames {
        loop_index: u32,
        token: u32,
        frames: Frames,
        next: usize,
        /// What is left of the event's dispatch cost to credit: each step credits the
        /// frames it handled, so that the loop reads the connection again before the
        /// dispatcher runs out of its frames; the last step credits the rest.
        cost: usize,
    },
    /// A Python framing's connection whose buffer may hold more frames.
    Unpack {
        loop_index: u32,
        token: u32,
        cost: usize,
    },
}

impl Work {
    /// Whose work it is: (loop, connection slot), or (loop, `LOOP_SLOT`).
    fn key(&self) -> (u32, u32) {
        match self {
            Work::Event(event) => match event.source() {
                (loop_index, Some(token)) => (loop_index, token),
                (loop_index, None) => (loop_index, LOOP_SLOT),
            },
            Work::Frames {
                loop_index, token, ..
            }
            | Work::Unpack {
                loop_index, token, ..
            } => (*loop_index, *token),
        }
    }

    /// The connection whose input it is: (loop, slot); `None` for the events that open
    /// and close connections, and a loop's own.
    fn input_of(&self) -> Option<(u32, u32)> {
        match self {
            Work::Event(
                Event::Message {
                    loop_index, token, ..
                }
                | Event::Messages {
                    loop_index, token, ..
                }
                | Event::Signal {
                    loop_index, token, ..
                }
                | Event::PeerClosed { loop_index, token },
            )
            | Work::Frames {
                loop_index, token, ..
            }
            | Work::Unpack {
                loop_index, token, ..
            } => Some((*loop_index, *token)),
            Work::Event(_) => None,
        }
    }

    /// What is left of its dispatch cost to credit.
    pub(super) fn cost(&self) -> usize {
        match self {
            Work::Event(event) => event.dispatch_cost(),
            Work::Frames { cost, .. } | Work::Unpack { cost, .. } => *cost,
        }
    }
}

/// Handler calls `event` makes with a native framing.
fn calls(event: &Event) -> usize {
    match event {
        Event::Messages { frames, .. } => frames.ends.len(),
        _ => 1,
    }
}

/// Connections (and loops) whose work waits for a later pass: their later work waits too.
#[derive(Default)]
struct Waiting {
    keys: HashSet<(u32, u32)>,
    loops: HashSet<u32>,
}

impl Waiting {
    fn add(&mut self, key: (u32, u32)) {
        self.keys.insert(key);
        self.loops.insert(key.0);
    }

    /// Whether work of `key` must wait behind earlier work.
    fn holds(&self, key: (u32, u32)) -> bool {
        self.keys.contains(&key) || (key.1 == LOOP_SLOT && self.loops.contains(&key.0))
    }
}

impl<'py> Dispatcher<'py> {
    /// Runs one round of at most `bound` handler calls over the work left over and `batch`
    /// (emptied); returns the calls made.
    pub(super) fn run_round(&mut self, batch: &mut Vec<Event>, bound: usize) -> usize {
        let native = self.python_framed == 0;
        if self.pending.is_empty() && native && batch.iter().map(calls).sum::<usize>() <= bound {
            // NOTE: the common case: everything fits, in arrival order, with no bookkeeping.
            let mut made = 0;
            let mut events = batch.drain(..);
            while let Some(event) = events.next() {
                made += self.work(Work::Event(event), usize::MAX).0;
                if self.python_framed > 0 {
                    // A connection framed in Python just opened: its calls cannot be counted
                    // ahead, so the rest waits for the bounded rounds.
                    self.pending.extend(events.map(Work::Event));
                    return made;
                }
            }
            return made;
        }
        self.pending.extend(batch.drain(..).map(Work::Event));
        let mut left = bound;
        // First pass: every connection gets its quantum.
        let mut used = std::collections::HashMap::<(u32, u32), usize>::new();
        let mut waiting = Waiting::default();
        let mut later = std::collections::VecDeque::with_capacity(self.pending.len());
        while let Some(item) = self.pending.pop_front() {
            let key = item.key();
            let spent = used.get(&key).copied().unwrap_or(0);
            let allow = left.min(QUANTUM.saturating_sub(spent));
            if allow == 0 || waiting.holds(key) {
                waiting.add(key);
                later.push_back(item);
                continue;
            }
            let (made, rest) = self.work(item, allow);
            left -= made.min(left);
            *used.entry(key).or_default() += made;
            if let Some(rest) = rest {
                waiting.add(key);
                later.push_back(rest);
            }
        }
        // Second pass: the rest of the bound, in arrival order.
        let mut waiting = Waiting::default();
        while let Some(item) = later.pop_front() {
            let key = item.key();
            if left == 0 || waiting.holds(key) {
                waiting.add(key);
                self.pending.push_back(item);
                continue;
            }
            let (made, rest) = self.work(item, left);
            left -= made.min(left);
            if let Some(rest) = rest {
                waiting.add(key);
                self.pending.push_back(rest);
            }
        }
        bound - left
    }

    /// Does up to `allow` handler calls of `item`; returns the calls made (at least one for
    /// any item, so that rounds always progress) and what is left of it.
    fn work(&mut self, item: Work, allow: usize) -> (usize, Option<Work>) {
        let Some((loop_index, token)) = item.input_of() else {
            let Work::Event(event) = item else {
                unreachable!("frames and buffers are a connection's input")
            };
            self.handle(event);
            return (1, None);
        };
        let Some(conn) = self.conn(loop_index, token) else {
            // Closed meanwhile: nothing to call.
            self.credit_loop(loop_index, item.cost());
            return (1, None);
        };
        if self.awaits.holds(conn.get()) {
            self.hold(&conn, item);
            return (1, None);
        }
        self.work_on(&conn, item, allow)
    }

    /// [`work`](Self::work) for input of `conn` (found in the table, or held for it).
    pub(super) fn work_on(
        &mut self,
        conn: &Py<Connection>,
        item: Work,
        allow: usize,
    ) -> (usize, Option<Work>) {
        let cost = item.cost();
        let python_framed = self.python_framed > 0 && conn.get().mode().is_python_framed();
        match item {
            Work::Event(Event::Message {
                loop_index,
                data,
                kind,
                ..
            }) => {
                if python_framed {
                    return self.unpack(conn, loop_index, Some(data), cost, allow);
                }
                conn.get()
                    .mode()
                    .on_message(self, conn, Frame::Owned(data), kind);
                self.credit(loop_index, Some(conn), cost);
                (1, None)
            }
            Work::Event(Event::Messages {
                loop_index, frames, ..
            }) => {
                if python_framed {
                    return self.unpack(conn, loop_index, Some(frames.data), cost, allow);
                }
                self.frames(conn, loop_index, frames, 0, cost, allow)
            }
            Work::Event(Event::Signal {
                loop_index, signal, ..
            }) => {
                conn.get().mode().on_signal(self, conn, signal);
                self.credit(loop_index, Some(conn), cost);
                (1, None)
            }
            Work::Event(Event::PeerClosed { loop_index, .. }) => {
                self.credit_loop(loop_index, cost);
                // Replies to the messages before the EOF are already in the outbox: close
                // after them.
                conn.get().request_close();
                (1, None)
            }
            Work::Event(_) => unreachable!("not a connection's input"),
            Work::Frames {
                loop_index,
                frames,
                next,
                cost,
                ..
            } => self.frames(conn, loop_index, frames, next, cost, allow),
            Work::Unpack {
                loop_index, cost, ..
            } => self.unpack(conn, loop_index, None, cost, allow),
        }
    }

    /// Frames `next..` of one read, `allow` of them at most; the rest is held when a
    /// callback awaits.
    fn frames(
        &mut self,
        conn: &Py<Connection>,
        loop_index: u32,
        frames: Frames,
        next: usize,
        cost: usize,
        allow: usize,
    ) -> (usize, Option<Work>) {
        let total = frames.ends.len();
        let end = next.saturating_add(allow).min(total);
        // (A closed connection's frames are dropped by the mode, which looks first.)
        let reached = conn.get().mode().on_frames(self, conn, &frames, next..end);
        let made = (reached - next).max(1);
        if reached == total || conn.get().is_closed() {
            self.credit(loop_index, Some(conn), cost);
            self.give_back(loop_index, frames.data);
            return (made, None);
        }
        let handled_bytes =
            frames.ends[reached - 1] - if next == 0 { 0 } else { frames.ends[next - 1] };
        let step = ((reached - next) * EVENT_COST + handled_bytes).min(cost);
        self.credit(loop_index, Some(conn), step);
        let rest = Work::Frames {
            loop_index,
            token: conn.get().token,
            frames,
            next: reached,
            cost: cost - step,
        };
        if reached < end {
            // A callback awaits: the rest waits for it.
            self.hold(conn, rest);
            return (made, None);
        }
        (made, Some(rest))
    }

    /// Bytes for a Python framing (`data`), or what its buffer still holds (`None`); what
    /// is left is held when a callback awaits.
    fn unpack(
        &mut self,
        conn: &Py<Connection>,
        loop_index: u32,
        data: Option<Vec<u8>>,
        cost: usize,
        allow: usize,
    ) -> (usize, Option<Work>) {
        let Some(protocol) = conn.get().mode().python_framing(self.py) else {
            self.credit(loop_index, Some(conn), cost);
            return (1, None);
        };
        let (made, more) = self.on_bytes(conn, data, protocol.bind(self.py), allow);
        if more {
            let rest = Work::Unpack {
                loop_index,
                token: conn.get().token,
                cost,
            };
            if self.awaits.holds(conn.get()) {
                self.hold(conn, rest);
                return (made.max(1), None);
            }
            return (made.max(1), Some(rest));
        }
        self.credit(loop_index, Some(conn), cost);
        (made.max(1), None)
    }
}

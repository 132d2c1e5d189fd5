//! Counters kept by loop threads and read from any thread.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::close_reason::CloseReason;

/// A loop's counters; written by its thread, read by `Server::stats()`.
#[derive(Debug, Default)]
pub struct LoopStats {
    pub(crate) accepted: AtomicU64,
    pub(crate) dialed: AtomicU64,
    pub(crate) connect_failed: AtomicU64,
    pub(crate) closed: AtomicU64,
    /// `closed`, by [`CloseReason::index`].
    pub(crate) closed_by_reason: [AtomicU64; CloseReason::COUNT],
    /// Connections refused before they counted as accepted: not from a trusted proxy
    /// (`proxy_protocol`), and past `tls_max_handshakes`.
    pub(crate) refused_untrusted: AtomicU64,
    pub(crate) refused_handshakes: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) wakeups: AtomicU64,
    pub(crate) read_pauses: AtomicU64,
    pub(crate) input_pauses: AtomicU64,
    pub(crate) write_buffered: AtomicU64,
}

/// A copy of a loop's counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoopStatsSnapshot {
    /// Connections accepted by the loop (or handed to it by the acceptor).
    pub accepted: u64,
    /// Outgoing connections the loop dialed that connected.
    pub dialed: u64,
    /// Outgoing connections that failed to connect.
    pub connect_failed: u64,
    /// Connections closed by the loop.
    pub closed: u64,
    /// `closed` by why, indexed by [`CloseReason::index`] (they add up to `closed`).
    pub closed_by_reason: [u64; CloseReason::COUNT],
    /// Connections refused (reset) before they counted as accepted because they did not
    /// come from a trusted proxy while `proxy_protocol` is on.
    pub refused_untrusted: u64,
    /// The same, because `tls_max_handshakes` handshakes were going on.
    pub refused_handshakes: u64,
    /// Bytes read from sockets.
    pub bytes_in: u64,
    /// Bytes written to sockets.
    pub bytes_out: u64,
    /// Messages handed to the dispatcher.
    pub messages_in: u64,
    /// Times the loop's poll returned (a spinning loop shows here).
    pub wakeups: u64,
    /// Times a connection stopped reading because its output passed the high-water mark.
    pub read_pauses: u64,
    /// Times a connection stopped reading because its input waiting for Python passed
    /// `conn_dispatch_high_water` (a slow or awaiting handler).
    pub input_pauses: u64,
    /// Bytes currently queued for writing, over all connections of the loop.
    pub write_buffered: u64,
}

impl LoopStatsSnapshot {
    /// Connections currently open.
    pub fn open(&self) -> u64 {
        (self.accepted + self.dialed).saturating_sub(self.closed)
    }

    /// Adds `other`'s counters to these (the totals over loops).
    pub fn add(&mut self, other: &LoopStatsSnapshot) {
        self.accepted += other.accepted;
        self.dialed += other.dialed;
        self.connect_failed += other.connect_failed;
        self.closed += other.closed;
        for (total, n) in self.closed_by_reason.iter_mut().zip(other.closed_by_reason) {
            *total += n;
        }
        self.refused_untrusted += other.refused_untrusted;
        self.refused_handshakes += other.refused_handshakes;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.messages_in += other.messages_in;
        self.wakeups += other.wakeups;
        self.read_pauses += other.read_pauses;
        self.input_pauses += other.input_pauses;
        self.write_buffered += other.write_buffered;
    }
}

impl LoopStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Counts a closed connection, and why it closed.
    pub(crate) fn closed(&self, reason: CloseReason) {
        Self::add(&self.closed, 1);
        Self::add(&self.closed_by_reason[reason.index()], 1);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> LoopStatsSnapshot {
        LoopStatsSnapshot {
            accepted: self.accepted.load(Relaxed),
            dialed: self.dialed.load(Relaxed),
            connect_failed: self.connect_failed.load(Relaxed),
            closed: self.closed.load(Relaxed),
            closed_by_reason: self.closed_by_reason.each_ref().map(|n| n.load(Relaxed)),
            refused_untrusted: self.refused_untrusted.load(Relaxed),
            refused_handshakes: self.refused_handshakes.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            messages_in: self.messages_in.load(Relaxed),
            wakeups: self.wakeups.load(Relaxed),
            read_pauses: self.read_pauses.load(Relaxed),
            input_pauses: self.input_pauses.load(Relaxed),
            write_buffered: self.write_buffered.load(Relaxed),
        }
    }
}

//! What is queued for one connection in each direction, shared by its loop and the
//! dispatcher.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

/// A connection's queues as counters: what waits for Python, and what waits to be written.
///
/// The loop and the dispatcher each see one end of each queue, so both keep the counters:
/// the loop charges what it queues for Python and the dispatcher credits what it handled;
/// senders charge what they post and the loop credits what it takes, publishing what its
/// output buffer holds. Limits are checked against these at once, on either side: a
/// connection that has much waiting for Python is not read (others are), and a send that
/// would take unsent output past its limit fails at the call.
///
/// # Examples
///
/// ```
/// use pygev_core::Backlog;
///
/// let backlog = Backlog::default();
/// backlog.charge_dispatch(300);
/// assert!(backlog.throttle(256));            // over the limit: the loop stops reading
/// assert!(backlog.dispatched(200, 256));      // under half: reading resumes
/// ```
#[derive(Debug, Default)]
pub struct Backlog {
    /// Dispatch cost of this connection's messages queued for Python (see
    /// [`Event::dispatch_cost`](crate::Event::dispatch_cost)).
    to_python: AtomicUsize,
    /// The loop stopped reading the connection because `to_python` passed its limit.
    throttled: AtomicBool,
    /// Bytes of sends charged from anywhere but the dispatcher's batches (this and the next
    /// two are running counts modulo 2^32, only ever subtracted: what is posted and not
    /// taken stays under `max_write_buffer`, which is validated to be under 2 GiB; u32
    /// keeps every connection's backlog in a 64-byte allocation).
    posted: AtomicU32,
    /// Bytes of sends charged by the dispatcher within its batches: that one thread alone
    /// writes it, so it needs no atomic read-modify-write (a locked instruction per send).
    posted_in_batch: AtomicU32,
    /// Bytes of posted sends the loop took: the loop alone writes it.
    taken: AtomicU32,
    /// Bytes in the loop's output buffer, not yet written to the socket.
    buffered: AtomicUsize,
    /// Output past which the loop stops reading the connection (its write high-water
    /// mark; u32: limits are validated to fit, and every connection has these).
    high_water: AtomicU32,
    /// Output at or under which reading resumes and `drain()` waiters go on.
    low_water: AtomicU32,
    /// Someone waits for output to reach the low-water mark: the loop reports it then.
    drain_wanted: AtomicBool,
}

impl Backlog {
    /// The loop queued messages of this dispatch cost for Python.
    pub fn charge_dispatch(&self, cost: usize) {
        self.to_python.fetch_add(cost, Ordering::AcqRel);
    }

    /// Dispatch cost of the messages Python has not handled yet.
    pub fn pending_dispatch(&self) -> usize {
        self.to_python.load(Ordering::Acquire)
    }

    /// Called by the loop before reading: whether the connection must wait because more
    /// than `limit` is queued for Python. When it must, the dispatcher's
    /// [`Backlog::dispatched`] reports the moment it may go on.
    pub fn throttle(&self, limit: usize) -> bool {
        if self.to_python.load(Ordering::Acquire) <= limit {
            return false;
        }
        self.throttled.store(true, Ordering::SeqCst);
        // The dispatcher may have credited in between and missed the flag: look again.
        !(self.to_python.load(Ordering::SeqCst) <= limit / 2
            && self.throttled.swap(false, Ordering::SeqCst))
    }

    /// Called by the dispatcher once it has handled messages of this dispatch cost: true
    /// when the loop throttled the connection and should now resume reading it.
    pub fn dispatched(&self, cost: usize, limit: usize) -> bool {
        let left = self.to_python.fetch_sub(cost, Ordering::SeqCst) - cost;
        // NOTE: the load first: a swap on every handled message would be an atomic
        // read-modify-write each time. SeqCst on both sides (here and in `throttle`) keeps
        // the flag from being missed: either this load sees it, or the loop's second look
        // sees the count this fetch_sub left.
        left <= limit / 2
            && self.throttled.load(Ordering::SeqCst)
            && self.throttled.swap(false, Ordering::SeqCst)
    }

    /// Adds `bytes` posted for writing, from any thread.
    #[inline]
    pub fn charge_send(&self, bytes: usize) {
        self.posted.fetch_add(bytes as u32, Ordering::Release); // (modulo 2^32)
    }

    /// Adds `bytes` posted for writing by the dispatcher within a batch. Only one thread
    /// may ever call this for a given backlog (the dispatcher's); others use
    /// [`Backlog::charge_send`].
    #[inline]
    pub fn charge_send_in_batch(&self, bytes: usize) {
        let charged = self.posted_in_batch.load(Ordering::Relaxed);
        self.posted_in_batch
            .store(charged.wrapping_add(bytes as u32), Ordering::Release);
    }

    /// Called by the loop (the only writer) when it takes a posted send of `bytes`.
    pub(crate) fn took_send(&self, bytes: usize) {
        let taken = self.taken.load(Ordering::Relaxed);
        self.taken
            .store(taken.wrapping_add(bytes as u32), Ordering::Release);
    }

    /// Called by the loop when its output buffer for the connection changed size.
    pub(crate) fn set_buffered(&self, bytes: usize) {
        if self.buffered.load(Ordering::Relaxed) != bytes {
            self.buffered.store(bytes, Ordering::Release);
        }
    }

    /// Sets the write high- and low-water marks (`low <= high`, both clamped to u32).
    pub fn set_write_limits(&self, high: usize, low: usize) {
        let clamp = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        self.high_water.store(clamp(high), Ordering::Relaxed);
        self.low_water
            .store(clamp(low.min(high)), Ordering::Relaxed);
    }

    /// The write high- and low-water marks.
    #[inline]
    pub fn write_limits(&self) -> (usize, usize) {
        (
            self.high_water.load(Ordering::Relaxed) as usize,
            self.low_water.load(Ordering::Relaxed) as usize,
        )
    }

    /// Asks for [`Backlog::drained`] to report when unsent output reaches the low-water
    /// mark. The caller looks at [`Backlog::unsent`] again after this (the loop may have
    /// written it all in between) and posts [`Command::WantDrain`](crate::Command) for the
    /// loop to look too.
    ///
    /// ```
    /// use pygev_core::Backlog;
    ///
    /// let backlog = Backlog::default();
    /// backlog.set_write_limits(1000, 100);
    /// backlog.charge_send(500);
    /// assert!(!backlog.drained(), "nobody asked");
    /// backlog.want_drain();
    /// assert!(!backlog.drained(), "500 unsent: over the low-water mark");
    /// ```
    pub fn want_drain(&self) {
        self.drain_wanted.store(true, Ordering::SeqCst);
    }

    /// Called by the loop after writing: true once (per [`Backlog::want_drain`]) when
    /// someone waits and unsent output is at or under the low-water mark.
    pub fn drained(&self) -> bool {
        // NOTE: the plain load first (a swap per flush would be a locked instruction). The
        // loop may read the flag before its own latest store to the output's size is seen
        // elsewhere, and the waiter the size before its flag is seen here: both would miss
        // (a lost wake-up). So the waiter also posts `Command::WantDrain`, which the loop
        // handles after the flag is stored and looks again; no fence on every flush.
        self.drain_wanted.load(Ordering::SeqCst)
            && self.unsent() <= self.write_limits().1
            && self.drain_wanted.swap(false, Ordering::SeqCst)
    }

    /// Output not yet written to the socket: posted sends plus the loop's buffer.
    #[inline]
    pub fn unsent(&self) -> usize {
        // NOTE: `taken` first: the loop takes only sends charged before they were posted,
        // so the charges read after it cover what it counts (the difference never wraps).
        let taken = self.taken.load(Ordering::Acquire);
        let posted = self
            .posted
            .load(Ordering::Acquire)
            .wrapping_add(self.posted_in_batch.load(Ordering::Acquire));
        posted.wrapping_sub(taken) as usize + self.buffered.load(Ordering::Acquire)
    }
}

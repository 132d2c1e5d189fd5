//! The part of a loop that other threads hold: its mailbox, waker and counters.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use mio::Waker;

use crate::event::Command;
use crate::stats::LoopStats;

/// A handle to one loop thread, shared by the acceptor, the dispatcher and any thread that
/// sends.
///
/// Posting is thread-safe and never blocks on the loop. Only a loop that is about to sleep,
/// or sleeps, in `poll` is woken, and only once until it wakes: a loop that is running
/// anyway empties its mailbox at its next iteration without a wake-up.
#[derive(Debug)]
pub struct LoopHandle {
    index: u32,
    mailbox: Mutex<Mailbox>,
    pub(crate) stats: LoopStats,
    /// Dispatch cost of the events queued for the dispatcher and not yet handled.
    pub(crate) pending_dispatch: AtomicUsize,
    /// The loop stopped reading because `pending_dispatch` passed the high-water mark.
    pub(crate) dispatch_paused: AtomicBool,
    /// Connections handed to this loop by the acceptor (for least-connections).
    pub(crate) assigned: AtomicU64,
    /// Large send buffers the loop has written out, for the dispatcher to fill again.
    spares: Mutex<Spares>,
}

/// Send buffers worth recycling: large enough that malloc would hand out fresh pages (a
/// page fault per 4 KiB on first touch), small enough not to hold much memory.
const SPARE_MIN: usize = 8 << 10;
const SPARE_MAX: usize = 128 << 10;
/// At most this many spare buffers per loop, holding at most `SPARE_BYTES`.
const SPARES: usize = 64;
const SPARE_BYTES: usize = 4 << 20;

/// A loop's spare send buffers.
#[derive(Debug, Default)]
struct Spares {
    buffers: Vec<Vec<u8>>,
    /// Their capacities, summed.
    bytes: usize,
    /// One was taken since the last trim.
    taken: bool,
}

/// Commands for a loop, and whether the loop sleeps (or is about to) in `poll`.
#[derive(Debug)]
struct Mailbox {
    commands: Vec<Command>,
    sleeping: bool,
    /// Wakes the loop's `poll`; dropped (its descriptor closed) when the loop ends.
    waker: Option<Waker>,
}

impl LoopHandle {
    pub(crate) fn new(index: u32, waker: Waker) -> Self {
        LoopHandle {
            index,
            mailbox: Mutex::new(Mailbox {
                commands: Vec::new(),
                sleeping: false,
                waker: Some(waker),
            }),
            stats: LoopStats::default(),
            pending_dispatch: AtomicUsize::new(0),
            dispatch_paused: AtomicBool::new(false),
            assigned: AtomicU64::new(0),
            spares: Mutex::new(Spares::default()),
        }
    }

    /// The loop's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The loop's counters.
    pub fn stats(&self) -> &LoopStats {
        &self.stats
    }

    fn lock(&self) -> MutexGuard<'_, Mailbox> {
        self.mailbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `command` for the loop and wakes it if it sleeps. Fails with
    /// `ErrorKind::NotConnected` once the loop has ended (the command is dropped).
    pub fn post(&self, command: Command) -> io::Result<()> {
        let mut mailbox = self.lock();
        if mailbox.waker.is_none() {
            return Err(self.ended());
        }
        mailbox.commands.push(command);
        Self::wake(&mut mailbox)
    }

    /// Queues all of `commands` (leaving it empty) with at most one wake-up; fails like
    /// [`LoopHandle::post`] (the commands are dropped).
    pub fn post_all(&self, commands: &mut Vec<Command>) -> io::Result<()> {
        if commands.is_empty() {
            return Ok(());
        }
        let mut mailbox = self.lock();
        if mailbox.waker.is_none() {
            commands.clear();
            return Err(self.ended());
        }
        if mailbox.commands.is_empty() {
            std::mem::swap(&mut mailbox.commands, commands);
        } else {
            mailbox.commands.append(commands);
        }
        Self::wake(&mut mailbox)
    }

    /// Wakes the loop if it sleeps (under the mailbox lock: the waker goes with the loop).
    fn wake(mailbox: &mut Mailbox) -> io::Result<()> {
        if std::mem::take(&mut mailbox.sleeping) {
            if let Some(waker) = &mailbox.waker {
                waker.wake()?;
            }
        }
        Ok(())
    }

    fn ended(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotConnected,
            format!("pygev: loop {} has ended", self.index),
        )
    }

    /// Whether the loop has ended (posting fails).
    pub fn is_closed(&self) -> bool {
        self.lock().waker.is_none()
    }

    /// Called by the loop as it ends: closes the waker's descriptor, drops commands still
    /// queued and refuses new ones, frees the spare buffers.
    pub(crate) fn close(&self) {
        let (waker, commands) = {
            let mut mailbox = self.lock();
            (mailbox.waker.take(), std::mem::take(&mut mailbox.commands))
        };
        drop(waker);
        drop(commands);
        self.drop_spares();
    }

    /// Called by the loop before it polls with a timeout: marks it as sleeping unless
    /// commands are waiting (then it should not sleep, and gets `false`).
    pub(crate) fn may_sleep(&self) -> bool {
        let mut mailbox = self.lock();
        mailbox.sleeping = mailbox.commands.is_empty();
        mailbox.sleeping
    }

    /// Called by the loop after each poll: marks it awake and takes the waiting commands.
    pub(crate) fn take(&self, into: &mut Vec<Command>) {
        let mut mailbox = self.lock();
        mailbox.sleeping = false;
        std::mem::swap(&mut mailbox.commands, into);
    }

    /// A written-out send buffer of at least `capacity` bytes, emptied, if one is spare.
    ///
    /// NOTE: the dispatcher fills a buffer per connection per batch and the loop frees it
    /// after writing; with buffers of tens of KiB glibc gave the memory back to the kernel
    /// and the next batch faulted every page in again (15% of the dispatcher's CPU on
    /// 16 KiB WebSocket echo). Handing them back avoids both.
    pub fn spare_buffer(&self, capacity: usize) -> Option<Vec<u8>> {
        if !(SPARE_MIN..=SPARE_MAX).contains(&capacity) {
            return None;
        }
        let mut spares = self.lock_spares();
        let at = spares
            .buffers
            .iter()
            .rposition(|b| b.capacity() >= capacity)?;
        let buffer = spares.buffers.swap_remove(at);
        spares.bytes -= buffer.capacity();
        spares.taken = true;
        Some(buffer)
    }

    fn lock_spares(&self) -> MutexGuard<'_, Spares> {
        self.spares.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a buffer the dispatcher is done with (a batch of frames it handled) for
    /// [`LoopHandle::spare_buffer`], when it fits among the spares.
    pub fn give_back(&self, buffer: Vec<u8>) {
        if (SPARE_MIN..=SPARE_MAX).contains(&buffer.capacity()) {
            keep(&mut self.lock_spares(), buffer);
        }
    }

    /// Keeps written-out send buffers (emptied) for [`LoopHandle::spare_buffer`].
    pub(crate) fn recycle(&self, buffers: &mut Vec<Vec<u8>>) {
        if buffers.is_empty() {
            return;
        }
        let mut spares = self.lock_spares();
        for buffer in buffers.drain(..) {
            keep(&mut spares, buffer);
        }
    }

    /// Frees the spare buffers if none was taken since the last call (the loop calls this
    /// every sweep: spares outlive a burst of traffic by a quarter of a second at most).
    pub(crate) fn trim_spares(&self) {
        let mut spares = self.lock_spares();
        if !std::mem::take(&mut spares.taken) && !spares.buffers.is_empty() {
            let buffers = std::mem::take(&mut *spares);
            drop(spares);
            drop(buffers);
        }
    }

    /// Whether spare buffers are held.
    pub(crate) fn has_spares(&self) -> bool {
        !self.lock_spares().buffers.is_empty()
    }

    /// Frees the spare buffers (the loop ends).
    fn drop_spares(&self) {
        let spares = std::mem::take(&mut *self.lock_spares());
        drop(spares);
    }

    /// The dispatch cost (bytes, plus [`EVENT_COST`](crate::EVENT_COST) per event) of what
    /// the loop handed to the dispatcher and Python has not handled yet: past the server's
    /// dispatch high-water mark, the loop stops reading.
    pub fn dispatch_pending(&self) -> usize {
        self.pending_dispatch.load(Ordering::Relaxed)
    }

    /// Whether more than `high_water` of dispatch cost waits for the dispatcher.
    pub(crate) fn dispatch_backlogged(&self, high_water: usize) -> bool {
        self.dispatch_room(high_water) == 0
    }

    /// Takes back a charge for an event that will not come.
    pub(crate) fn dispatched_quietly(&self, cost: usize) {
        self.pending_dispatch.fetch_sub(cost, Ordering::SeqCst);
    }

    /// Adds to the dispatch cost queued (an event on its way).
    pub(crate) fn charge_dispatch(&self, cost: usize) {
        self.pending_dispatch.fetch_add(cost, Ordering::SeqCst);
    }

    /// How many more events (at [`EVENT_COST`](crate::EVENT_COST) each) fit under
    /// `high_water` before the loop is backlogged (at least one while it is not).
    pub(crate) fn dispatch_room(&self, high_water: usize) -> usize {
        let pending = self.pending_dispatch.load(Ordering::SeqCst);
        if pending > high_water {
            return 0;
        }
        (high_water - pending) / crate::event::EVENT_COST + 1
    }

    /// Dispatch cost of this loop's events not yet handled.
    pub fn pending_dispatch(&self) -> usize {
        self.pending_dispatch.load(Ordering::SeqCst)
    }

    /// Called by the dispatcher once it has handled events of this dispatch cost; wakes the
    /// loop if it was paused and the queue has drained below half the high-water mark.
    pub fn dispatched(&self, cost: usize, high_water: usize) -> io::Result<()> {
        if cost == 0 {
            return Ok(());
        }
        let left = self.pending_dispatch.fetch_sub(cost, Ordering::AcqRel) - cost;
        if left <= high_water / 2 && self.dispatch_paused.swap(false, Ordering::AcqRel) {
            self.post(Command::Resume)?;
        }
        Ok(())
    }
}

/// Keeps `buffer` (emptied) among the spares if it is of a size worth keeping and they have
/// room.
fn keep(spares: &mut Spares, mut buffer: Vec<u8>) {
    let capacity = buffer.capacity();
    let fits = spares.buffers.len() < SPARES && spares.bytes + capacity <= SPARE_BYTES;
    if fits && (SPARE_MIN..=SPARE_MAX).contains(&capacity) {
        buffer.clear();
        spares.bytes += capacity;
        spares.buffers.push(buffer);
    }
}

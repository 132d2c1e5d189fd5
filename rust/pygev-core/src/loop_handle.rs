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
/// Posting is thread-safe and never blocks on the loop; a loop is woken at most once until
/// it has emptied its mailbox, so a batch of replies costs one wake-up.
#[derive(Debug)]
pub struct LoopHandle {
    index: u32,
    mailbox: Mutex<Vec<Command>>,
    /// Set when a wake-up is in flight; cleared by the loop before it empties the mailbox.
    notified: AtomicBool,
    waker: Waker,
    pub(crate) stats: LoopStats,
    /// Message bytes queued for the dispatcher and not yet handled.
    pub(crate) pending_dispatch: AtomicUsize,
    /// The loop stopped reading because `pending_dispatch` passed the high-water mark.
    pub(crate) dispatch_paused: AtomicBool,
    /// Connections handed to this loop by the acceptor (for least-connections).
    pub(crate) assigned: AtomicU64,
}

impl LoopHandle {
    pub(crate) fn new(index: u32, waker: Waker) -> Self {
        LoopHandle {
            index,
            mailbox: Mutex::new(Vec::new()),
            notified: AtomicBool::new(false),
            waker,
            stats: LoopStats::default(),
            pending_dispatch: AtomicUsize::new(0),
            dispatch_paused: AtomicBool::new(false),
            assigned: AtomicU64::new(0),
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

    fn lock(&self) -> MutexGuard<'_, Vec<Command>> {
        self.mailbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Posts one command and wakes the loop if no wake-up is pending.
    pub fn post(&self, command: Command) -> io::Result<()> {
        self.lock().push(command);
        self.wake()
    }

    /// Posts every command of `commands` (leaving it empty) with at most one wake-up.
    pub fn post_all(&self, commands: &mut Vec<Command>) -> io::Result<()> {
        if commands.is_empty() {
            return Ok(());
        }
        {
            let mut mailbox = self.lock();
            if mailbox.is_empty() {
                std::mem::swap(&mut *mailbox, commands);
            } else {
                mailbox.append(commands);
            }
        }
        self.wake()
    }

    fn wake(&self) -> io::Result<()> {
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.waker.wake()?;
        }
        Ok(())
    }

    /// Called by the loop: takes the posted commands into `into` (which should be empty).
    pub(crate) fn take(&self, into: &mut Vec<Command>) {
        self.notified.store(false, Ordering::Release);
        std::mem::swap(&mut *self.lock(), into);
    }

    /// Called by the dispatcher once it has handled `bytes` of this loop's messages; wakes
    /// the loop if it was paused and the queue has drained below half the high-water mark.
    pub fn dispatched(&self, bytes: usize, high_water: usize) -> io::Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let left = self.pending_dispatch.fetch_sub(bytes, Ordering::AcqRel) - bytes;
        if left <= high_water / 2 && self.dispatch_paused.swap(false, Ordering::AcqRel) {
            self.post(Command::Resume)?;
        }
        Ok(())
    }
}

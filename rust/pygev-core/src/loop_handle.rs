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
    waker: Waker,
    pub(crate) stats: LoopStats,
    /// Message bytes queued for the dispatcher and not yet handled.
    pub(crate) pending_dispatch: AtomicUsize,
    /// The loop stopped reading because `pending_dispatch` passed the high-water mark.
    pub(crate) dispatch_paused: AtomicBool,
    /// Connections handed to this loop by the acceptor (for least-connections).
    pub(crate) assigned: AtomicU64,
}

/// Commands for a loop, and whether the loop sleeps (or is about to) in `poll`.
#[derive(Debug, Default)]
struct Mailbox {
    commands: Vec<Command>,
    sleeping: bool,
}

impl LoopHandle {
    pub(crate) fn new(index: u32, waker: Waker) -> Self {
        LoopHandle {
            index,
            mailbox: Mutex::new(Mailbox::default()),
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

    fn lock(&self) -> MutexGuard<'_, Mailbox> {
        self.mailbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `command` for the loop and wakes it if it sleeps.
    pub fn post(&self, command: Command) -> io::Result<()> {
        let wake = {
            let mut mailbox = self.lock();
            mailbox.commands.push(command);
            std::mem::take(&mut mailbox.sleeping)
        };
        self.wake_if(wake)
    }

    /// Queues all of `commands` (leaving it empty) with at most one wake-up.
    pub fn post_all(&self, commands: &mut Vec<Command>) -> io::Result<()> {
        if commands.is_empty() {
            return Ok(());
        }
        let wake = {
            let mut mailbox = self.lock();
            if mailbox.commands.is_empty() {
                std::mem::swap(&mut mailbox.commands, commands);
            } else {
                mailbox.commands.append(commands);
            }
            std::mem::take(&mut mailbox.sleeping)
        };
        self.wake_if(wake)
    }

    fn wake_if(&self, wake: bool) -> io::Result<()> {
        if wake {
            self.waker.wake()?;
        }
        Ok(())
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

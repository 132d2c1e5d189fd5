//! The acceptor thread: accepts connections and hands them to loops.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::config::Strategy;
use crate::event::Command;
use crate::loop_handle::LoopHandle;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connections accepted per readiness event before the loops are told.
const ACCEPT_BATCH: usize = 256;

pub(crate) enum AcceptOutcome {
    /// The backlog is empty (or the batch is full); wait for the next readiness event.
    Drained,
    /// Out of descriptors or memory: retry after a pause instead of spinning.
    Backoff(io::Error),
}

/// Accepts until the backlog is empty (or `ACCEPT_BATCH`), setting TCP_NODELAY on each.
pub(crate) fn accept_batch(
    listener: &TcpListener,
    out: &mut Vec<(TcpStream, SocketAddr)>,
) -> AcceptOutcome {
    while out.len() < ACCEPT_BATCH {
        match listener.accept() {
            Ok((stream, peer)) => {
                // NOTE: request/response traffic needs Nagle off; failure only costs latency.
                let _ = stream.set_nodelay(true);
                out.push((stream, peer));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return AcceptOutcome::Drained,
            Err(e) if is_transient(&e) => {}
            Err(e) => return AcceptOutcome::Backoff(e),
        }
    }
    AcceptOutcome::Drained
}

/// Errors that concern one aborted connection only.
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) || err.raw_os_error() == Some(libc::EPROTO)
        || err.raw_os_error() == Some(libc::EPERM)
}

/// A running acceptor thread.
pub(crate) struct Acceptor {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    pub(crate) fn spawn(
        listener: std::net::TcpListener,
        loops: Vec<Arc<LoopHandle>>,
        strategy: Strategy,
    ) -> io::Result<Acceptor> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("pygev-acceptor".into())
            .spawn(move || run(poll, listener, loops, strategy, thread_stop))?;
        Ok(Acceptor {
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// Stops accepting and closes the listening socket; returns once the thread ended.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pick_loop(loops: &[Arc<LoopHandle>], strategy: Strategy, next: &mut usize) -> usize {
    match strategy {
        Strategy::RoundRobin => {
            let index = *next % loops.len();
            *next = next.wrapping_add(1);
            index
        }
        Strategy::LeastConnections => {
            let load = |h: &Arc<LoopHandle>| {
                h.assigned
                    .load(Ordering::Relaxed)
                    .saturating_sub(h.stats.closed.load(Ordering::Relaxed))
            };
            (0..loops.len())
                .min_by_key(|&i| load(&loops[i]))
                .unwrap_or(0)
        }
    }
}

fn run(
    mut poll: Poll,
    listener: TcpListener,
    loops: Vec<Arc<LoopHandle>>,
    strategy: Strategy,
    stop: Arc<AtomicBool>,
) {
    let mut events = Events::with_capacity(16);
    let mut accepted = Vec::new();
    let mut outboxes: Vec<Vec<Command>> = loops.iter().map(|_| Vec::new()).collect();
    let mut next = 0usize;
    let mut backoff: Option<Duration> = None;
    let mut last_log: Option<std::time::Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = poll.poll(&mut events, backoff) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("pygev: acceptor poll failed: {e}");
                return;
            }
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        loop {
            let outcome = accept_batch(&listener, &mut accepted);
            let full = accepted.len() >= ACCEPT_BATCH;
            for (stream, peer) in accepted.drain(..) {
                let index = pick_loop(&loops, strategy, &mut next);
                loops[index].assigned.fetch_add(1, Ordering::Relaxed);
                outboxes[index].push(Command::Register { stream, peer });
            }
            for (handle, outbox) in loops.iter().zip(outboxes.iter_mut()) {
                if let Err(e) = handle.post_all(outbox) {
                    log::error!("pygev: could not wake loop {}: {e}", handle.index());
                }
            }
            match outcome {
                AcceptOutcome::Drained if full => continue,
                AcceptOutcome::Drained => {
                    backoff = None;
                }
                AcceptOutcome::Backoff(err) => {
                    backoff = Some(Duration::from_millis(100));
                    let now = std::time::Instant::now();
                    if last_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                        log::warn!("pygev: accept failed ({err}); pausing accepts for 100 ms");
                        last_log = Some(now);
                    }
                }
            }
            break;
        }
    }
}

//! What loop threads tell the dispatcher (`Event`) and what they are told (`Command`).

use std::sync::Arc;
use std::time::Instant;

use crate::address::Address;
use crate::backlog::Backlog;
use crate::close_reason::CloseReason;
use crate::protocols::{Control, MessageKind, Protocol, Signal};
use crate::tls::{TlsInfo, TlsTarget};
use crate::transport::{Credentials, Transport};

/// What every event costs in dispatch backpressure on top of the bytes it holds: a handler
/// call costs the dispatcher time whatever its size, so a flood of empty frames fills the
/// queue as surely as a flood of large ones.
pub const EVENT_COST: usize = 128;

/// Addresses of a newly accepted connection, and its counters.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    /// Server-unique connection id.
    pub id: u64,
    /// The remote end.
    pub peer: Address,
    /// Our end: shared by the connections with the same one (a server's accepted
    /// connections mostly have one), 8 bytes each instead of a copy.
    pub local: Arc<Address>,
    /// The peer process, on a Unix socket.
    pub credentials: Option<Credentials>,
    /// We dialed it ([`Command::Connect`], whose id is `id`); accepted otherwise.
    pub outgoing: bool,
    /// What is queued each way, shared with the loop.
    pub backlog: Arc<Backlog>,
    /// What its TLS handshake negotiated (`None`: plain).
    pub tls: Option<Box<TlsInfo>>,
}

/// One thing that happened in a loop thread, for the dispatcher to hand to Python.
///
/// Events of one loop reach the dispatcher in the order the loop produced them, so a
/// connection's `Connect` precedes its `Message`s, which precede its `Closed`; a token is
/// only reused after its `Closed`.
#[derive(Debug)]
pub enum Event {
    /// A connection was accepted, or a dialed one connected, and registered under `token`.
    Connect {
        /// Index of the loop that owns the connection.
        loop_index: u32,
        /// The connection's slot in that loop.
        token: u32,
        /// Its addresses (boxed: events stay small on the hot path).
        info: Box<ConnectInfo>,
    },
    /// One whole message (for the raw protocol: one read's worth of bytes).
    Message {
        /// Index of the loop that owns the connection.
        loop_index: u32,
        /// The connection's slot in that loop.
        token: u32,
        /// The payload.
        data: Vec<u8>,
        /// What it is (WebSocket: text or binary).
        kind: MessageKind,
    },
    /// Several whole messages of one connection, in order, from one read: one buffer for
    /// all (many small frames cost one allocation).
    Messages {
        /// Index of the loop that owns the connection.
        loop_index: u32,
        /// The connection's slot in that loop.
        token: u32,
        /// The payloads.
        frames: crate::protocols::Frames,
    },
    /// The connection's framing has news for the dispatcher (a WebSocket handshake's
    /// outcome, its end), in order with the connection's messages.
    Signal {
        /// Index of the loop that owns the connection.
        loop_index: u32,
        /// The connection's slot in that loop.
        token: u32,
        /// The news.
        signal: Signal,
    },
    /// The peer finished sending (EOF). The loop keeps the connection open so that replies
    /// to messages already dispatched can still be written; the dispatcher answers with
    /// [`Command::Close`] once those messages have been handled.
    PeerClosed {
        /// Index of the loop that owns the connection.
        loop_index: u32,
        /// The connection's slot in that loop.
        token: u32,
    },
    /// Unsent output fell to the connection's low-water mark, which someone waits for
    /// (see [`Backlog::want_drain`](crate::Backlog::want_drain)).
    Drained {
        /// Index of the loop that owns the connection.
        loop_index: u32,
        /// The connection's slot in that loop.
        token: u32,
    },
    /// The connection's socket has been closed; its token may be reused after this.
    Closed {
        /// Index of the loop that owned the connection.
        loop_index: u32,
        /// The connection's slot in that loop.
        token: u32,
    },
    /// A [`Command::Connect`] failed (refused, timed out, unreachable, or the loop is
    /// stopping); no other event concerns it.
    ConnectFailed {
        /// Index of the loop that dialed.
        loop_index: u32,
        /// The id the command gave.
        id: u64,
        /// Why.
        error: std::io::Error,
    },
    /// The loop answered [`Command::Quiesce`]: it reads and accepts nothing more, and every
    /// event it produced before this one is already queued.
    Quiesced {
        /// Index of the loop.
        loop_index: u32,
    },
    /// The loop closed its last connection after [`Command::Drain`] and its thread ends.
    LoopExited {
        /// Index of the loop.
        loop_index: u32,
    },
}

impl Event {
    /// What the event counts for in dispatch backpressure: the memory it holds plus
    /// [`EVENT_COST`] per handler call it will cause. The loop adds it when it queues the
    /// event, the dispatcher takes it off once handled.
    pub fn dispatch_cost(&self) -> usize {
        match self {
            Event::Message { data, .. } => data.capacity() + EVENT_COST,
            Event::Messages { frames, .. } => frames.held_bytes() + frames.ends.len() * EVENT_COST,
            Event::Signal { signal, .. } => signal.held_bytes() + EVENT_COST,
            _ => EVENT_COST,
        }
    }

    /// The loop the event comes from, and the connection's slot (`None` for the loop's own
    /// events).
    pub fn source(&self) -> (u32, Option<u32>) {
        match self {
            Event::Connect {
                loop_index, token, ..
            }
            | Event::Message {
                loop_index, token, ..
            }
            | Event::Messages {
                loop_index, token, ..
            }
            | Event::Signal {
                loop_index, token, ..
            }
            | Event::PeerClosed { loop_index, token }
            | Event::Drained { loop_index, token }
            | Event::Closed { loop_index, token } => (*loop_index, Some(*token)),
            Event::Quiesced { loop_index }
            | Event::LoopExited { loop_index }
            | Event::ConnectFailed { loop_index, .. } => (*loop_index, None),
        }
    }

    /// Whether this is a message event or a signal, counted per connection as well as
    /// per loop (the dispatcher credits the connection once it handled it).
    pub fn is_message(&self) -> bool {
        matches!(
            self,
            Event::Message { .. } | Event::Messages { .. } | Event::Signal { .. }
        )
    }
}

/// An instruction posted to a loop's mailbox.
#[derive(Debug)]
pub enum Command {
    /// Take over an accepted connection.
    Register {
        /// The accepted socket (non-blocking, TCP_NODELAY set on TCP).
        transport: Transport,
        /// The remote address accept(2) reported.
        peer: Address,
    },
    /// Dial `address`: a non-blocking connect, given up after `timeout`. Answered with an
    /// [`Event::Connect`] whose connection has id `id` (then it is like an accepted one),
    /// or an [`Event::ConnectFailed`].
    Connect {
        /// The connection's id, taken from [`Running::next_id`](crate::Running::next_id).
        id: u64,
        /// Where to.
        address: Address,
        /// How long the connect may take.
        timeout: std::time::Duration,
        /// Its framing; `None`: the server's.
        protocol: Option<Arc<dyn Protocol>>,
        /// Its TLS (`None`: plain); the handshake counts within `timeout`.
        tls: Option<TlsTarget>,
    },
    /// Pack `data` with the connection's protocol and write it.
    Send {
        /// The connection's slot.
        token: u32,
        /// The connection's id, so a reused slot never receives a stale command.
        id: u64,
        /// The payload: before packing, or already in wire form when `packed`.
        data: Vec<u8>,
        /// `data` was packed by the sender (stateless protocols pack a batch of replies in
        /// the dispatcher, merged into one buffer per connection).
        packed: bool,
        /// What the message is (WebSocket: text or binary), when not `packed`.
        kind: MessageKind,
    },
    /// Hand `control` to the connection's framing (WebSocket: accept the upgrade, send a
    /// close frame), in order with the connection's sends.
    Control {
        /// The connection's slot.
        token: u32,
        /// The connection's id.
        id: u64,
        /// What to do.
        control: Control,
    },
    /// Flush pending output, then shut down the write side (the peer sees EOF).
    ShutdownWrite {
        /// The connection's slot.
        token: u32,
        /// The connection's id.
        id: u64,
    },
    /// Stop reading, flush pending output (bounded by the drain timeout), then close.
    Close {
        /// The connection's slot.
        token: u32,
        /// The connection's id.
        id: u64,
    },
    /// Close at once with a reset, dropping pending output.
    Abort {
        /// The connection's slot.
        token: u32,
        /// The connection's id.
        id: u64,
        /// What went wrong (a limit, a protocol error), for the loop to log; `None` when
        /// the sender logged it already.
        reason: Option<String>,
        /// Why, as the loop counts the close.
        counted_as: CloseReason,
    },
    /// The dispatcher caught up: resume reading connections paused for dispatch backpressure.
    Resume,
    /// The dispatcher caught up with one connection (see [`Backlog::dispatched`]): read it
    /// again.
    Unthrottle {
        /// The connection's slot.
        token: u32,
        /// The connection's id.
        id: u64,
    },
    /// Someone waits for the connection's output to fall to its low-water mark
    /// ([`Backlog::want_drain`](crate::Backlog::want_drain) was called): the loop looks
    /// now, and reports [`Event::Drained`] when it is.
    WantDrain {
        /// The connection's slot.
        token: u32,
        /// The connection's id.
        id: u64,
    },
    /// Stop reading one connection until [`Command::ResumeReading`] (the handler's
    /// `pause_reading()`).
    PauseReading {
        /// The connection's slot.
        token: u32,
        /// The connection's id.
        id: u64,
    },
    /// Read the connection again after [`Command::PauseReading`].
    ResumeReading {
        /// The connection's slot.
        token: u32,
        /// The connection's id.
        id: u64,
    },
    /// Stop accepting and reading; answer with [`Event::Quiesced`].
    Quiesce,
    /// Flush and close every connection (forcibly at `deadline`), then end the thread.
    Drain {
        /// When connections still holding output are closed anyway.
        deadline: Instant,
    },
}

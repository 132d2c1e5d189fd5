//! A connection as its loop holds it: socket, buffers, framing state, times and flags
//! (this file), and the paths every connection goes through, one concern each: `read.rs`
//! (reading, framing, dispatch backpressure), `write.rs` (packing and writing), `close.rs`
//! (graceful, linger, reset), `timeouts.rs` (the deadlines a connection may have running),
//! `dial.rs` (connecting), `proxy.rs` (a PROXY protocol header before anything else),
//! `tls.rs` (the TLS handshake and record layer), over the loop's
//! set of connections (`set.rs`), their framings (`protocols.rs`) and their buffers
//! (`buffer.rs`).

use std::sync::Arc;

use crate::backlog::Backlog;
use crate::clock::Millis;
use crate::close_reason::CloseReason;
use crate::protocols::ProtocolState;
use crate::tls::TlsSession;
use crate::transport::Transport;
use buffer::Buffer;

mod buffer;
mod close;
mod dial;
mod protocols;
mod proxy;
mod read;
mod refusals;
mod set;
mod timeouts;
mod tls;
mod write;

pub(crate) use set::{Connections, FIRST_LOOP_TOKEN};

/// Connection state bits.
pub(crate) mod flag {
    /// The socket may have unread bytes (edge-triggered: remembered until WouldBlock).
    pub(crate) const READ_READY: u32 = 1;
    /// The last write hit WouldBlock; wait for a writable event.
    pub(crate) const WRITE_BLOCKED: u32 = 1 << 1;
    /// Output passed the high-water mark: not reading until it drains.
    pub(crate) const OUTPUT_FULL: u32 = 1 << 2;
    /// The peer sent EOF; nothing more to read.
    pub(crate) const PEER_EOF: u32 = 1 << 3;
    /// Closing: flush output, then close.
    pub(crate) const CLOSING: u32 = 1 << 4;
    /// Shut down the write side once output is flushed.
    pub(crate) const SHUTDOWN_PENDING: u32 = 1 << 5;
    /// The write side is shut down.
    pub(crate) const WRITE_SHUT: u32 = 1 << 6;
    /// Waiting in the deferred-read list (the loop's whole dispatch queue is full).
    pub(crate) const DEFERRED: u32 = 1 << 7;
    /// Waiting in the more-to-read list (read budget spent).
    pub(crate) const MORE_TO_READ: u32 = 1 << 8;
    /// epoll reported the peer's FIN (or an error): read on to EOF, even after short reads.
    pub(crate) const HANGUP_SEEN: u32 = 1 << 9;
    /// Output flushed and write side shut; discarding input until the peer's EOF, so that
    /// closing with unread input (which sends RST) cannot destroy what we sent.
    pub(crate) const LINGERING: u32 = 1 << 10;
    /// The protocol stopped reading; the dispatcher ends the connection (WebSocket close).
    pub(crate) const READ_STOPPED: u32 = 1 << 11;
    /// Not read because this connection has much queued for Python (others still are).
    pub(crate) const THROTTLED: u32 = 1 << 12;
    /// The protocol has more to do with the input held (bounded steps): unpack again
    /// before reading more.
    pub(crate) const UNPACK_AGAIN: u32 = 1 << 13;
    /// Dialed and not connected yet: only the connect timeout runs (in `close_deadline`).
    pub(crate) const CONNECTING: u32 = 1 << 14;
    /// The handler paused reading (`conn.pause_reading()`).
    pub(crate) const PAUSED_BY_USER: u32 = 1 << 15;
    /// Its TLS handshake is going on: the dispatcher does not know it yet, and only the
    /// handshake timeout runs (in `close_deadline`).
    pub(crate) const HANDSHAKING: u32 = 1 << 16;
    /// We dialed it (a failure before it is announced is the connect's).
    pub(crate) const DIALED: u32 = 1 << 17;
    /// The peer's TLS close_notify came while the protocol still works through input it
    /// holds (`UNPACK_AGAIN`): its EOF is taken up once that is done.
    pub(crate) const EOF_PENDING: u32 = 1 << 18;
    /// Dialed with a framing that reads on while its output is past the high-water mark
    /// (`Protocol::reads_while_output_full`: a WebSocket client's).
    pub(crate) const KEEPS_READING: u32 = 1 << 19;
    /// Accepted with `proxy_protocol` on, its PROXY header not read yet: the dispatcher
    /// does not know it, and only the header's deadline runs (in `close_deadline`).
    pub(crate) const PROXY_HEADER: u32 = 1 << 20;

    /// Not announced to the dispatcher yet (its close is not told either).
    pub(crate) const UNANNOUNCED: u32 = HANDSHAKING | PROXY_HEADER;

    /// The loop stopped reading this connection for reasons of ours (Python is behind, or
    /// the handler paused it): time spent so is not the peer's silence.
    pub(crate) const PAUSED_BY_US: u32 = DEFERRED | THROTTLED | PAUSED_BY_USER;
    /// Reading (and a protocol's held work) waits while any of these is set.
    pub(crate) const NOT_READING: u32 =
        OUTPUT_FULL | CLOSING | READ_STOPPED | THROTTLED | CONNECTING | PAUSED_BY_USER;
}

/// A connection owned by a loop, in its slab.
pub(crate) struct Conn {
    pub(crate) transport: Transport,
    /// Its TLS record layer (`None`: plain): what is read is opened before framing, what
    /// is written sealed first (`tls.rs`).
    pub(crate) tls: Option<Box<TlsSession>>,
    pub(crate) id: u64,
    pub(crate) flags: u32,
    /// Its framing's index in the loop's protocol table.
    pub(crate) protocol: u16,
    /// Why its close began (`None`: not closing, or closed at once for the cause given).
    pub(crate) close_reason: Option<CloseReason>,
    /// Bytes the kernel's send queue held at the last look (0: empty, or not looked at);
    /// see `Connections::kernel_queue`.
    pub(crate) kernel_queued: u32,
    pub(crate) input: Buffer,
    pub(crate) output: Buffer,
    pub(crate) state: ProtocolState,
    /// Counters shared with the dispatcher's `Connection`.
    pub(crate) backlog: Arc<Backlog>,
    /// Last progress either way (bytes read, or written to the socket).
    pub(crate) last_active: Millis,
    /// Last time bytes arrived (a peer that sent recently may still be sending).
    pub(crate) last_read: Millis,
    /// Last sign that the peer is there: bytes arrived, or it took output we had queued.
    pub(crate) last_heard: Millis,
    /// When the frame now arriving started (NEVER between frames).
    pub(crate) frame_started: Millis,
    /// Closing: when to give up on flushing. Before that, after the peer's EOF: how long
    /// Python may take to answer the messages that came before it.
    pub(crate) close_deadline: Millis,
    /// The time of this connection's live entry in the deadline heap (NEVER: none).
    pub(crate) wake_at: Millis,
}

impl Conn {
    pub(crate) fn new(
        transport: Transport,
        id: u64,
        state: ProtocolState,
        backlog: Arc<Backlog>,
        now: Millis,
    ) -> Conn {
        Conn {
            transport,
            tls: None,
            id,
            flags: 0,
            protocol: 0,
            close_reason: None,
            kernel_queued: 0,
            input: Buffer::default(),
            output: Buffer::default(),
            state,
            backlog,
            last_active: now,
            last_read: now,
            last_heard: now,
            frame_started: Millis::NEVER,
            close_deadline: Millis::NEVER,
            wake_at: Millis::NEVER,
        }
    }

    pub(crate) fn has(&self, bits: u32) -> bool {
        self.flags & bits != 0
    }

    /// Records why the connection is being closed, unless a cause came first.
    pub(crate) fn note_close(&mut self, reason: CloseReason) {
        self.close_reason.get_or_insert(reason);
    }

    /// The peer's address for a log line (the dispatcher may not know the connection yet).
    pub(crate) fn peer_text(&self) -> String {
        self.transport
            .peer_addr()
            .map_or_else(|_| "a peer that left".to_string(), |a| a.to_string())
    }

    pub(crate) fn can_read(&self) -> bool {
        !self.has(flag::NOT_READING | flag::PEER_EOF)
    }

    /// Whether anything of the connection is still on its way: a message in Python (whose
    /// handler may reply), a reply charged but not written, output, or protocol work held.
    pub(crate) fn owes_anything(&self) -> bool {
        self.backlog.pending_dispatch() > 0
            || self.backlog.unsent() > 0
            || !self.output.is_empty()
            || self.has(flag::UNPACK_AGAIN)
    }
}

/// Why a connection is closed right away.
pub(crate) enum CloseCause {
    /// Normal end: flushed, peer gone, or stop; nothing is lost.
    Done,
    /// The socket failed (the log says how); nothing more can be sent anyway.
    Failed(String),
    /// A limit, a timeout or a protocol error ends the connection with data unsent or
    /// unread: the peer gets a reset (SO_LINGER 0), never a FIN that would make a cut-off
    /// stream look complete. The reason is logged once.
    Abort(String),
    /// The same, already logged by whoever asked for it.
    Reset,
    /// A TLS handshake failed or timed out: the connection was never announced, and a
    /// client's failure is not the server's, so the reason is logged at info level (a
    /// scanner must not flood the log with warnings). An orderly close: the alert that
    /// says why went out first.
    Refused(String),
}

impl CloseCause {
    /// The reason counted for a connection closed for this cause, when no other was noted.
    fn reason(&self) -> CloseReason {
        match self {
            CloseCause::Done => CloseReason::Peer,
            CloseCause::Failed(_) => CloseReason::Error,
            CloseCause::Abort(_) | CloseCause::Reset => CloseReason::Abort,
            CloseCause::Refused(_) => CloseReason::Tls,
        }
    }
}

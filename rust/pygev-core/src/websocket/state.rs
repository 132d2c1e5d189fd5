//! A WebSocket connection's state in the loop: where it is in its life ([`Phase`]), its
//! frame reader and compression codec (made when used, parked when quiet), its keepalive,
//! and the delivery of what the reader finds into the frame sink.
//!
//! The loop keeps it in the connection's [`ProtocolState`] slot, boxed only while there is
//! something to keep: an open server connection that holds nothing (no compression, no
//! message on the way, no ping out, no buffer) is all defaults, [`State::quiet`], and its
//! slot is empty. [`with_state`] and [`peek`] make it again, on the stack, when needed.

use std::time::{Duration, Instant};

use super::deflate::{Agreed, Codec};
use super::frames::{self, opcode, Message};
use super::masking::{next_key, write_masked_frame};
use super::reader::{Deliver, Reader};
use crate::protocols::{FrameSink, MessageKind, ProtocolState};

/// Where a connection is in its life.
#[derive(Debug)]
pub(super) enum Phase {
    /// Reading the upgrade request.
    Handshake,
    /// The request went to the hook; input waits for its answer.
    Pending(Option<Agreed>),
    /// Exchanging messages.
    Open,
    /// The peer's close was read (or the peer failed): replies to earlier messages may
    /// still go out, then our close frame.
    CloseReceived,
    /// We sent a close frame; the peer's close ends the connection.
    CloseSent,
    /// Done: both close frames went, or the connection was refused.
    Closed,
}

/// Delivers a reader's messages straight into the frame sink, answers pings, and
/// keeps the peer's close for the protocol to handle after the messages before it.
pub(super) struct Delivery<'a> {
    pub(super) sink: &'a mut FrameSink,
    pub(super) closes: Vec<Option<(u16, String)>>,
    /// On a client's side: its pongs are masked.
    pub(super) masked: bool,
}

impl Deliver for Delivery<'_> {
    fn data(&mut self, text: bool, payload: &[u8]) {
        let kind = if text {
            MessageKind::Text
        } else {
            MessageKind::Binary
        };
        self.sink.push_kind(kind, payload);
    }

    fn masked(&mut self, payload: &[u8], mask: [u8; 4]) {
        self.sink.push_with(MessageKind::Binary, |out| {
            frames::unmask_into(out, payload, mask)
        });
    }

    fn control(&mut self, message: Message) {
        match message {
            Message::Ping(data) if self.masked => {
                let key = next_key();
                write_masked_frame(self.sink.reply(), opcode::PONG, true, false, &data, key);
            }
            Message::Ping(data) => {
                frames::write_frame(self.sink.reply(), opcode::PONG, true, false, &data);
            }
            Message::Close(received) => self.closes.push(received),
            _ => {} // pongs only show the peer is alive
        }
    }
}

/// One connection's state.
#[derive(Debug)]
pub(super) struct State {
    pub(super) phase: Phase,
    pub(super) reader: Reader,
    /// What permessage-deflate settings were agreed, if any.
    pub(super) agreed: Option<Agreed>,
    /// Made at the first compressed message either way; parked (zlib state freed) once the
    /// connection's messages stop for `PARK_AFTER`.
    pub(super) codec: Option<Box<Codec>>,
    /// Set while the codec or the reader holds memory a quiet connection does not need:
    /// when it was last used (the park deadline runs from there).
    pub(super) held_since: Option<Instant>,
    /// A deadline (the park, or the keepalive's once open) the loop must take into its heap.
    pub(super) reschedule: bool,
    /// When the keepalive ping went out, until anything arrives.
    pub(super) ping_sent: Option<Instant>,
    /// When the connection was accepted, or its request sent (for the handshake timeout);
    /// `None` once open.
    pub(super) started: Option<Instant>,
    /// On a client's side: what only a client has (boxed: servers hold the many); its
    /// frames are masked.
    pub(super) client: Option<Box<ClientSide>>,
}

/// What only a client's connection has.
#[derive(Debug)]
pub(super) struct ClientSide {
    /// Its `Sec-WebSocket-Key`.
    pub(super) ws_key: String,
}

/// Output one inflation step produces at most: a large compressed message is inflated a
/// step per loop turn, never holding the loop for long.
pub(super) const INFLATE_STEP: usize = 256 << 10;

/// How long a connection's compression state and reassembly buffer outlive its last
/// message that used them.
pub(super) const PARK_AFTER: Duration = Duration::from_secs(1);

impl State {
    /// A connection in `phase`, from the start: nothing agreed, read or held yet.
    pub(super) fn new(phase: Phase, reader: Reader, started: Option<Instant>) -> State {
        State {
            phase,
            reader,
            agreed: None,
            codec: None,
            held_since: None,
            reschedule: false,
            ping_sent: None,
            started,
            client: None,
        }
    }

    /// An open server connection that holds nothing: what an empty slot stands for.
    pub(super) fn quiet(max_message_size: usize) -> State {
        State::new(Phase::Open, Reader::new(max_message_size, false), None)
    }

    /// Whether this is [`State::quiet`] (what the loop must keep is nothing).
    fn is_quiet(&self) -> bool {
        self.client.is_none()
            && self.agreed.is_none()
            && matches!(self.phase, Phase::Open)
            && self.reader.is_fresh()
            && self.started.is_none()
            && self.codec.is_none()
            && self.held_since.is_none()
            && !self.reschedule
            && self.ping_sent.is_none()
    }

    pub(super) fn codec(&mut self, threshold: usize) -> Option<&mut Codec> {
        let agreed = self.agreed?;
        self.used_memory();
        Some(
            self.codec
                .get_or_insert_with(|| Box::new(Codec::new(agreed, threshold))),
        )
    }

    /// The codec or the reader's buffer was used: they stay for `PARK_AFTER` from now.
    pub(super) fn used_memory(&mut self) {
        if self.held_since.replace(Instant::now()).is_none() {
            self.reschedule = true;
        }
    }

    pub(super) fn park_deadline(&self) -> Option<Instant> {
        self.held_since.map(|since| since + PARK_AFTER)
    }

    /// Frees what a quiet connection does not need: zlib state (keeping the client's
    /// window) and the reassembly buffer. Not while a message is being inflated in steps
    /// (the loop paused the connection between two): its decompressor is mid-stream; the
    /// park waits another `PARK_AFTER`.
    pub(super) fn park(&mut self) {
        if self.reader.is_inflating() {
            self.held_since = Some(Instant::now());
            return;
        }
        if let Some(codec) = self.codec.as_mut() {
            codec.park();
        }
        self.reader.release_buffer();
        self.held_since = None;
    }
}

/// Runs `f` on the connection's state and keeps what it leaves: a quiet connection's state
/// is made on the stack and boxed only if `f` leaves it holding something; a boxed state
/// that `f` leaves quiet is freed. (Only a server's state is ever quiet: a client's is
/// boxed from `new_state` to the end, so an empty slot always stands for a server's.)
pub(super) fn with_state<R>(
    slot: &mut ProtocolState,
    max_message_size: usize,
    f: impl FnOnce(&mut State) -> R,
) -> R {
    let Some(boxed) = slot else {
        let mut state = State::quiet(max_message_size);
        let result = f(&mut state);
        if !state.is_quiet() {
            *slot = Some(Box::new(state));
        }
        return result;
    };
    let state = boxed
        .downcast_mut::<State>()
        .expect("the WebSocket state is made by new_state");
    let result = f(state);
    if state.is_quiet() {
        *slot = None;
    }
    result
}

/// Looks at the connection's state (a quiet connection's made on the stack).
pub(super) fn peek<R>(
    slot: &ProtocolState,
    max_message_size: usize,
    f: impl FnOnce(&State) -> R,
) -> R {
    match slot {
        Some(boxed) => f(boxed
            .downcast_ref::<State>()
            .expect("the WebSocket state is made by new_state")),
        None => f(&State::quiet(max_message_size)),
    }
}

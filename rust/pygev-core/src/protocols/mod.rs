//! Framing: the `Protocol` trait every native framing implements, and the built-in
//! framings (raw, length-prefix, delimited).

use std::any::Any;
use std::fmt;

mod delimited;
mod length_prefix;
mod signal;

pub use delimited::{Delimited, MAX_DELIMITER};
pub use length_prefix::{ByteOrder, LengthPrefix};
pub use signal::{Control, MessageKind, Signal};

/// Per-connection state a protocol may keep between calls (`None` for stateless framings).
pub type ProtocolState = Option<Box<dyn Any + Send>>;

/// Why a protocol refused a connection's input; the connection is closed with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    message: String,
}

impl ProtocolError {
    /// Creates an error; the message should start with `pygev:` and name the limit it broke.
    pub fn new(message: impl Into<String>) -> Self {
        ProtocolError {
            message: message.into(),
        }
    }

    /// The message logged when the connection is closed.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProtocolError {}

/// Collects the whole frames a protocol finds in its input.
///
/// Frames are copied out of the input as they are pushed, so the protocol may report the
/// input consumed right away. They are kept back to back in one buffer, so many small
/// frames cost one allocation, not one each.
#[derive(Debug, Default)]
pub struct FrameSink {
    /// The frames' bytes, back to back.
    data: Vec<u8>,
    /// Where each frame ends in `data`.
    ends: Vec<usize>,
    /// Each frame's kind, once a frame was not `Binary` (empty: all are).
    kinds: Vec<MessageKind>,
    /// Signals, each after the frames pushed before it (their count).
    signals: Vec<(usize, Signal)>,
    /// A large raw read handed over whole (only ever alone in the sink).
    owned: Option<Vec<u8>>,
    /// Bytes the protocol writes back to the peer itself (a pong, a close frame, a
    /// handshake response), after the frames are queued.
    reply: Vec<u8>,
    /// The protocol asked to close the connection once `reply` is flushed; with a log line
    /// when the peer was at fault.
    close: Option<Option<String>>,
    /// The protocol asked the loop to stop reading (see [`FrameSink::stop_reading`]).
    stop: Option<Option<String>>,
    /// The protocol has more to do with the input it holds (see [`FrameSink::call_again`]).
    again: bool,
}

/// The frames taken from a [`FrameSink`] at once: one buffer and where each frame ends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Frames {
    /// The frames' bytes, back to back.
    pub data: Vec<u8>,
    /// Where each frame ends in `data` (the first starts at 0).
    pub ends: Vec<usize>,
    /// Each frame's kind; empty when all are `Binary`.
    pub kinds: Vec<MessageKind>,
}

/// What a [`FrameSink`] held, in order: whole messages and signals.
#[derive(Debug)]
pub enum Item {
    /// A whole message.
    Message {
        /// Its kind.
        kind: MessageKind,
        /// Its payload.
        data: Vec<u8>,
    },
    /// A signal, after the messages before it.
    Signal(Signal),
}

/// The messages taken from a [`FrameSink`] at once (see [`FrameSink::take`]).
#[derive(Debug)]
pub enum Taken {
    /// A single message, in its own buffer.
    One {
        /// Its kind.
        kind: MessageKind,
        /// Its payload.
        data: Vec<u8>,
    },
    /// Several, in one buffer.
    Many(Frames),
}

impl Frames {
    /// The frames, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let frame = &self.data[start..end];
            start = end;
            frame
        })
    }

    /// The kind of frame `index`.
    pub fn kind(&self, index: usize) -> MessageKind {
        self.kinds.get(index).copied().unwrap_or_default()
    }

    /// The memory the batch holds (what dispatch backpressure counts).
    pub fn held_bytes(&self) -> usize {
        self.data.capacity()
            + self.ends.capacity() * std::mem::size_of::<usize>()
            + self.kinds.capacity()
    }
}

impl FrameSink {
    /// Creates an empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one whole frame's payload.
    pub fn push(&mut self, payload: &[u8]) {
        self.data.extend_from_slice(payload);
        self.ends.push(self.data.len());
    }

    /// Records one whole message of `kind` (WebSocket's text or binary).
    pub fn push_kind(&mut self, kind: MessageKind, payload: &[u8]) {
        self.push_with(kind, |data| data.extend_from_slice(payload));
    }

    /// Records one whole message of `kind` made of what `write` appends (which must only
    /// append): a payload transformed as it is copied in, such as unmasked.
    pub fn push_with(&mut self, kind: MessageKind, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.data);
        self.ends.push(self.data.len());
        if kind != MessageKind::Binary || !self.kinds.is_empty() {
            self.kinds.resize(self.ends.len() - 1, MessageKind::Binary);
            self.kinds.push(kind);
        }
    }

    /// Records a signal for the dispatcher, after the frames pushed so far.
    pub fn signal(&mut self, signal: Signal) {
        let before = self.ends.len() + usize::from(self.owned.is_some());
        self.signals.push((before, signal));
    }

    /// Whether signals were recorded since the last drain (then take them in order with
    /// [`FrameSink::drain_items`]).
    pub fn has_signals(&self) -> bool {
        !self.signals.is_empty()
    }

    /// Bytes to write back to the peer at once, in order, ahead of anything sent later.
    pub fn reply(&mut self) -> &mut Vec<u8> {
        &mut self.reply
    }

    /// Asks the loop to close the connection once the reply is flushed (reading stops
    /// now). `error` is logged: it says what the peer did wrong.
    pub fn close_after_reply(&mut self, error: Option<String>) {
        self.close = Some(error);
    }

    /// Asks the loop to stop reading the connection and leave it open: the protocol
    /// signalled the dispatcher how to end it (WebSocket's closing handshake,
    /// whose close frame must follow the replies to the messages before it). `error` is
    /// logged: it says what the peer did wrong.
    pub fn stop_reading(&mut self, error: Option<String>) {
        self.stop = Some(error);
    }

    /// Asks the loop to call `unpack` again in its next turn, with the input held, before
    /// reading more: the protocol stopped part-way through work it does in bounded steps
    /// (inflating a large WebSocket message).
    pub fn call_again(&mut self) {
        self.again = true;
    }

    /// Takes the call-again request.
    pub fn take_again(&mut self) -> bool {
        std::mem::take(&mut self.again)
    }

    /// Takes the stop-reading request, if any.
    pub fn take_stop(&mut self) -> Option<Option<String>> {
        self.stop.take()
    }

    /// Takes what the protocol asked the loop to do itself: the reply bytes (possibly
    /// empty) and the close request, if any.
    pub fn take_actions(&mut self) -> (Vec<u8>, Option<Option<String>>) {
        (std::mem::take(&mut self.reply), self.close.take())
    }

    /// Whether the protocol asked for a reply or a close.
    pub fn has_actions(&self) -> bool {
        !self.reply.is_empty() || self.close.is_some() || self.stop.is_some()
    }

    /// Records one whole frame's payload, taking ownership of it (a large read handed over
    /// without a copy). It must be the only frame of its batch.
    pub fn push_owned(&mut self, payload: Vec<u8>) {
        debug_assert!(self.is_empty());
        self.owned = Some(payload);
    }

    /// Number of frames recorded since the last drain.
    pub fn len(&self) -> usize {
        self.ends.len() + usize::from(self.owned.is_some())
    }

    /// Whether no frame has been recorded since the last drain.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the recorded frames' payloads one by one, in order (one allocation each);
    /// signals are dropped.
    pub fn drain(&mut self) -> std::vec::IntoIter<Vec<u8>> {
        let frames: Vec<Vec<u8>> = self
            .drain_items()
            .into_iter()
            .filter_map(|item| match item {
                Item::Message { data, .. } => Some(data),
                Item::Signal(_) => None,
            })
            .collect();
        frames.into_iter()
    }

    /// Takes everything recorded, messages (one allocation each) and signals, in order.
    pub fn drain_items(&mut self) -> Vec<Item> {
        let mut signals = std::mem::take(&mut self.signals).into_iter().peekable();
        let mut items = Vec::with_capacity(self.len() + signals.len());
        let mut emit_signals = |items: &mut Vec<Item>, before: usize| {
            while let Some((_, signal)) = signals.next_if(|(at, _)| *at <= before) {
                items.push(Item::Signal(signal));
            }
        };
        if let Some(data) = self.owned.take() {
            emit_signals(&mut items, 0);
            let kind = MessageKind::Binary;
            items.push(Item::Message { kind, data });
        }
        let mut start = 0;
        for (index, &end) in self.ends.iter().enumerate() {
            emit_signals(&mut items, index);
            let kind = self.kinds.get(index).copied().unwrap_or_default();
            let data = self.data[start..end].to_vec();
            items.push(Item::Message { kind, data });
            start = end;
        }
        emit_signals(&mut items, usize::MAX);
        self.data.clear();
        self.ends.clear();
        self.kinds.clear();
        items
    }

    /// Takes a single recorded frame as its own buffer, or several frames as one
    /// [`Frames`] batch; `None` when empty. Only without signals (see
    /// [`FrameSink::has_signals`]).
    pub fn take(&mut self) -> Option<Taken> {
        debug_assert!(self.signals.is_empty());
        if let Some(data) = self.owned.take() {
            let kind = MessageKind::Binary;
            return Some(Taken::One { kind, data });
        }
        match self.ends.len() {
            0 => None,
            1 => {
                self.ends.clear();
                let kind = self.kinds.pop().unwrap_or_default();
                let data = std::mem::take(&mut self.data);
                Some(Taken::One { kind, data })
            }
            _ => {
                // NOTE: the sink's buffers go with the batch; new ones of a similar size
                // (capped) are made at once, not grown frame by frame.
                const REUSE_CAP: usize = 64 << 10;
                let data_cap = self.data.capacity().min(REUSE_CAP);
                let ends_cap = self.ends.capacity().min(REUSE_CAP / 8);
                Some(Taken::Many(Frames {
                    data: std::mem::replace(&mut self.data, Vec::with_capacity(data_cap)),
                    ends: std::mem::replace(&mut self.ends, Vec::with_capacity(ends_cap)),
                    kinds: std::mem::take(&mut self.kinds),
                }))
            }
        }
    }
}

/// A framing run by the loop threads: it splits input bytes into whole frames and wraps
/// outgoing payloads.
///
/// The trait is deliberately narrow (byte slices in, byte slices out, an opaque state per
/// connection, an error string) so that it can be carried through a C ABI: a third-party
/// plugin has exactly the same powers as the built-in protocols. Each method maps onto one
/// C function pointer:
///
/// | method | C shape |
/// |---|---|
/// | `new_state` / drop of the state | `void *create(void)`, `void free(void *state)` |
/// | `unpack` | `int unpack(void *state, const u8 *in, size_t len, sink_fn push, void *sink, size_t *used, err_buf *err)` |
/// | `check_payload` | `int check(const u8 *payload, size_t len, err_buf *err)` |
/// | `pack` | `int pack(void *state, const u8 *payload, size_t len, out_fn append, void *out)` |
/// | `pack_is_identity`, `pack_is_stateless`, `is_passthrough` | flags in the table |
///
/// The built-in framings ([`LengthPrefix`], [`Delimited`], [`Raw`]) use nothing beyond
/// that: their state is an opaque box and their frames go through [`FrameSink::push`].
///
/// # Examples
///
/// ```
/// use pygev_core::{FrameSink, Protocol, Raw};
///
/// let raw = Raw;
/// let mut state = raw.new_state();
/// let mut sink = FrameSink::new();
/// let consumed = raw.unpack(&mut state, b"ping", &mut sink).unwrap();
/// assert_eq!(consumed, 4);
/// assert_eq!(sink.drain().collect::<Vec<_>>(), vec![b"ping".to_vec()]);
/// ```
pub trait Protocol: Send + Sync {
    /// A short name used in log lines.
    fn name(&self) -> &str;

    /// Creates the state for a new connection.
    fn new_state(&self) -> ProtocolState {
        None
    }

    /// Pushes every whole frame found at the start of `input` into `frames` and returns how
    /// many bytes of `input` those frames used; the rest is kept and offered again, with more
    /// bytes after it, on the next call.
    ///
    /// An `Err` closes the connection; a protocol must refuse a declared length over its
    /// limit before asking for more input, so that no buffer grows past the limit.
    fn unpack(
        &self,
        state: &mut ProtocolState,
        input: &[u8],
        frames: &mut FrameSink,
    ) -> Result<usize, ProtocolError>;

    /// Checks that `payload` can be sent (for example that its length fits in a header);
    /// the error is raised to the caller of `send` instead of packing the payload.
    fn check_payload(&self, _payload: &[u8]) -> Result<(), ProtocolError> {
        Ok(())
    }

    /// Appends the wire form of `payload` (already accepted by `check_payload`) to `out`.
    /// An `Err` (a plugin that failed or panicked) closes the connection; `out` may then
    /// hold part of a frame, which is discarded.
    fn pack(
        &self,
        state: &mut ProtocolState,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError>;

    /// The most unparsed input a connection may have to hold to complete one frame this
    /// protocol accepts (0 if unbounded); the server raises `max_input_buffer` to it.
    fn max_buffered_input(&self) -> usize {
        0
    }

    /// Whether `pack` ignores the connection's state, so that payloads may be packed away
    /// from the loop (the dispatcher packs a batch of replies into one buffer).
    fn pack_is_stateless(&self) -> bool {
        false
    }

    /// Whether `pack` returns the payload unchanged, letting the write path skip a copy.
    fn pack_is_identity(&self) -> bool {
        false
    }

    /// Whether `unpack` always takes its whole (non-empty) input as one frame and `pack` is
    /// the identity, letting the read path hand a large read over without copying it.
    fn is_passthrough(&self) -> bool {
        false
    }

    /// Appends the wire form of a message of `kind` (already accepted by `check_payload`)
    /// to `out`. Framings without kinds of messages pack every message as `pack` does.
    fn pack_kind(
        &self,
        state: &mut ProtocolState,
        _kind: MessageKind,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        self.pack(state, payload, out)
    }

    /// Carries out `control` for a connection, appending what it writes to `out`; returns
    /// whether input the framing held back may now be read on (WebSocket: the hook
    /// accepted the upgrade). Framings without controls refuse, which closes the
    /// connection.
    fn control(
        &self,
        _state: &mut ProtocolState,
        control: Control,
        _out: &mut Vec<u8>,
    ) -> Result<bool, ProtocolError> {
        Err(ProtocolError::new(format!(
            "pygev: protocol {} takes no {} control",
            self.name(),
            control.name()
        )))
    }

    /// Whether bytes packed by the sender (see `pack_is_stateless`) may still be written on
    /// a connection in this state (WebSocket: not after our close frame).
    fn allows_packed(&self, _state: &ProtocolState) -> bool {
        true
    }

    /// Whether a connection holding `buffered` bytes of unparsed input is in the middle of a
    /// frame (or message): the loop then runs the frame deadline, so a peer cannot hold a
    /// connection open by trickling a frame that never ends.
    fn has_partial_frame(&self, _state: &ProtocolState, buffered: usize) -> bool {
        buffered > 0
    }

    /// When the loop should next call [`Protocol::tick`] for this connection, given the
    /// last time the peer was heard from (bytes arrived, or it took output we had queued);
    /// `None` for never. The loop keeps the answer in its deadline heap, so a protocol that
    /// needs no ticks costs idle connections nothing.
    fn next_tick(
        &self,
        _state: &ProtocolState,
        _last_heard: std::time::Instant,
    ) -> Option<std::time::Instant> {
        None
    }

    /// Whether this protocol ever has ticks (see [`Protocol::next_tick`]): the loop skips
    /// asking for them, per read, when it has none.
    fn has_ticks(&self) -> bool {
        false
    }

    /// Whether the time [`Protocol::next_tick`] gives moved earlier since the loop last
    /// asked (a WebSocket codec came to life and will be parked when idle); the loop asks
    /// after each read and each send it packs, and clears it.
    fn take_reschedule(&self, _state: &mut ProtocolState) -> bool {
        false
    }

    /// Called once the time [`Protocol::next_tick`] gave has come (a WebSocket handshake
    /// timeout, a keepalive ping); may append bytes to write to `out`. An `Err` closes the
    /// connection. It may be called early and must then do nothing.
    fn tick(
        &self,
        _state: &mut ProtocolState,
        _now: std::time::Instant,
        _last_heard: std::time::Instant,
        _out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        Ok(())
    }
}

impl fmt::Debug for dyn Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protocol({})", self.name())
    }
}

/// The default protocol: every chunk of bytes read is one message, sent bytes go out as they
/// are.
#[derive(Debug, Default, Clone, Copy)]
pub struct Raw;

impl Protocol for Raw {
    fn name(&self) -> &str {
        "raw"
    }

    fn unpack(
        &self,
        _state: &mut ProtocolState,
        input: &[u8],
        frames: &mut FrameSink,
    ) -> Result<usize, ProtocolError> {
        if !input.is_empty() {
            frames.push(input);
        }
        Ok(input.len())
    }

    fn pack(
        &self,
        _state: &mut ProtocolState,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        out.extend_from_slice(payload);
        Ok(())
    }

    fn pack_is_identity(&self) -> bool {
        true
    }

    fn pack_is_stateless(&self) -> bool {
        true
    }

    fn is_passthrough(&self) -> bool {
        true
    }
}

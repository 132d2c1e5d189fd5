//! Framing: the `Protocol` trait every native framing implements, and the built-in
//! framings (raw, length-prefix, delimited).

use std::any::Any;
use std::fmt;

mod delimited;
mod length_prefix;
mod signal;
mod sink;

pub use delimited::{Delimited, MAX_DELIMITER};
pub use length_prefix::{ByteOrder, LengthPrefix};
pub use signal::{Control, MessageKind, Signal};
pub use sink::{FrameSink, Frames, Item, Taken};

/// Per-connection state a protocol may keep between calls: `None` for stateless framings,
/// or whatever else the protocol makes it mean (WebSocket: an open connection that holds
/// nothing, so that a million quiet ones cost no allocation each).
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

    /// What this side sends first, as soon as a connection it frames is open (a WebSocket
    /// client's upgrade request); nothing by default. An error closes the connection.
    fn opening(&self, _state: &mut ProtocolState, _out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        Ok(())
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
    /// protocol accepts (0 if unbounded); the loops raise `max_input_buffer` to it for each
    /// connection framed by it.
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

    /// Whether a connection dialed with this framing keeps reading while its unsent output
    /// is past the write high-water mark (normally reading stops until it drains). A
    /// WebSocket client's does: its server may itself read again only once its own output
    /// drained, and both waiting would be a deadlock; its output stays bounded by
    /// `max_write_buffer`.
    fn reads_while_output_full(&self) -> bool {
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
    /// timeout, a keepalive ping); may write bytes with `sink.reply()`, signal the
    /// dispatcher and ask for a close, as `unpack` does (it pushes no messages). An `Err`
    /// closes the connection. It may be called early and must then do nothing.
    fn tick(
        &self,
        _state: &mut ProtocolState,
        _now: std::time::Instant,
        _last_heard: std::time::Instant,
        _sink: &mut FrameSink,
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

//! WebSocket as a framing the loops run: the handshake, then frames, per connection.
//!
//! The loop threads do every byte-level job: they parse the upgrade request and answer it
//! (or hand it to a Python hook and hold the connection until the hook answers), read and
//! check frames, reassemble and inflate messages, answer pings and the close handshake, and
//! send keepalive pings. Only whole messages go to the dispatcher, each with its kind (text
//! or binary); the handshake's outcome and the connection's end go as typed [`Signal`]s,
//! and the dispatcher's answers come back as [`Control`]s.

use std::time::{Duration, Instant};

use super::deflate::{self, Agreed};
use super::handshake::{self, Limits, UpgradeRequest};
use super::http_request;
use super::reader::Reader;
use super::session;
use super::state::{self, Phase, State};
use crate::protocols::{
    Control, FrameSink, MessageKind, Protocol, ProtocolError, ProtocolState, Signal,
};

/// A WebSocket server's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The largest message accepted, after reassembly and decompression (1009 past it).
    pub max_message_size: usize,
    /// Limits on the upgrade request.
    pub limits: Limits,
    /// permessage-deflate.
    pub deflate: deflate::Settings,
    /// Whether a hook in the dispatcher answers each upgrade request.
    pub handshake_hook: bool,
    /// Whether a hook in the dispatcher answers plain HTTP requests (not upgrades), such
    /// as a load balancer's health check; without it they are refused (400 or 426).
    pub http_hook: bool,
    /// Close a connection whose upgrade request is not complete and answered by then.
    pub handshake_timeout: Duration,
    /// Ping a peer silent for this long...
    pub ping_interval: Option<Duration>,
    /// ...and close the connection if nothing arrives this long after the ping.
    pub ping_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_message_size: 16 << 20,
            limits: Limits::default(),
            deflate: deflate::Settings::default(),
            handshake_hook: false,
            http_hook: false,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: None,
            ping_timeout: Duration::from_secs(20),
        }
    }
}

/// The WebSocket framing (server side).
#[derive(Debug, Clone, Default)]
pub struct WebSocket {
    settings: Settings,
}

impl WebSocket {
    /// Runs `f` on a connection's state (see [`state::with_state`]).
    fn with<R>(&self, slot: &mut ProtocolState, f: impl FnOnce(&mut State) -> R) -> R {
        state::with_state(slot, self.settings.max_message_size, f)
    }

    /// Looks at a connection's state (see [`state::peek`]).
    fn peek<R>(&self, slot: &ProtocolState, f: impl FnOnce(&State) -> R) -> R {
        state::peek(slot, self.settings.max_message_size, f)
    }

    fn timing(&self) -> session::Timing {
        session::Timing {
            handshake_timeout: self.settings.handshake_timeout,
            ping_interval: self.settings.ping_interval,
            ping_timeout: self.settings.ping_timeout,
        }
    }

    /// A WebSocket framing with these settings.
    pub fn new(settings: Settings) -> Self {
        WebSocket { settings }
    }

    /// Its settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The 101 response accepting `request` with the chosen subprotocol and extra header
    /// fields (checked with [`handshake::check_choice`] first), and what was agreed for
    /// compression. The loop and a hook in the dispatcher both answer through this.
    pub fn answer(
        &self,
        request: &UpgradeRequest,
        protocol: Option<&str>,
        extra: &[(String, String)],
    ) -> (Vec<u8>, Option<Agreed>) {
        let negotiated = deflate::negotiate(&request.extensions, &self.settings.deflate);
        let extensions = negotiated.as_ref().map(|(_, text)| text.as_str());
        let response = handshake::accept_response(request, protocol, extensions, extra);
        (response, negotiated.map(|(agreed, _)| agreed))
    }

    fn handshake(
        &self,
        state: &mut State,
        input: &[u8],
        sink: &mut FrameSink,
    ) -> Result<usize, ProtocolError> {
        let (request, used) = match handshake::parse(input, &self.settings.limits) {
            Ok(None) => return Ok(0),
            Ok(Some(parsed)) => parsed,
            Err(refusal) => {
                if self.settings.http_hook {
                    let limits = &self.settings.limits;
                    if let Some((request, used)) =
                        http_request::parse(input, limits, refusal.clone())
                    {
                        // Held for the hook (the handshake timeout runs); it answers and
                        // closes.
                        state.phase = Phase::Pending(None);
                        sink.signal(Signal::HttpRequest(Box::new(request)));
                        return Ok(used);
                    }
                }
                sink.reply().extend_from_slice(&refusal.response());
                sink.close_after_reply(Some(format!(
                    "pygev: WebSocket handshake refused with {}: {}",
                    refusal.status, refusal.reason
                )));
                state.phase = Phase::Closed;
                return Ok(input.len());
            }
        };
        if self.settings.handshake_hook {
            let negotiated = deflate::negotiate(&request.extensions, &self.settings.deflate);
            state.phase = Phase::Pending(negotiated.map(|(agreed, _)| agreed));
            sink.signal(Signal::Upgrade(Box::new(request)));
            return Ok(used);
        }
        let (response, agreed) = self.answer(&request, None, &[]);
        sink.reply().extend_from_slice(&response);
        self.open(state, agreed);
        let compressed = agreed.is_some();
        sink.signal(Signal::Opened {
            compressed,
            answer: None,
        });
        Ok(used + self.frames(state, &input[used..], sink)?)
    }

    fn open(&self, state: &mut State, agreed: Option<Agreed>) {
        state.phase = Phase::Open;
        state.started = None;
        state.reschedule = true; // the keepalive's deadline replaces the handshake's
        state.agreed = agreed;
        state.reader = Reader::new(self.settings.max_message_size, agreed.is_some());
    }

    fn frames(
        &self,
        state: &mut State,
        input: &[u8],
        sink: &mut FrameSink,
    ) -> Result<usize, ProtocolError> {
        let (max, threshold) = (
            self.settings.max_message_size,
            self.settings.deflate.threshold,
        );
        session::read_frames(state, input, sink, max, threshold)
    }

    fn unpack_state(
        &self,
        state: &mut State,
        input: &[u8],
        sink: &mut FrameSink,
    ) -> Result<usize, ProtocolError> {
        match state.phase {
            Phase::Handshake => self.handshake(state, input, sink),
            // Clients must wait for the 101; what they send meanwhile is held, up to the
            // size of a request.
            Phase::Pending(_) if input.len() > self.settings.limits.max_request_size => {
                Err(ProtocolError::new(format!(
                    "pygev: {} bytes arrived before the WebSocket handshake was answered, over \
                     max_request_size {}",
                    input.len(),
                    self.settings.limits.max_request_size
                )))
            }
            Phase::Pending(_) => Ok(0),
            Phase::Open | Phase::CloseSent => self.frames(state, input, sink),
            Phase::CloseReceived | Phase::Closed => Ok(input.len()),
        }
    }

    fn control_state(
        &self,
        state: &mut State,
        control: Control,
        out: &mut Vec<u8>,
    ) -> Result<bool, ProtocolError> {
        match (control, &state.phase) {
            (Control::Accept(response), Phase::Pending(agreed)) => {
                let agreed = *agreed;
                out.extend_from_slice(&response);
                self.open(state, agreed);
                return Ok(true);
            }
            (Control::Close(payload), _) => session::write_close(state, &payload, out)?,
            _ => {} // an accept for a connection not held: nothing
        }
        Ok(false)
    }
}

impl Protocol for WebSocket {
    fn name(&self) -> &str {
        "websocket"
    }

    fn new_state(&self) -> ProtocolState {
        let reader = Reader::new(self.settings.max_message_size, false);
        let state = State::new(Phase::Handshake, reader, Some(Instant::now()));
        Some(Box::new(state))
    }

    fn unpack(
        &self,
        state: &mut ProtocolState,
        input: &[u8],
        sink: &mut FrameSink,
    ) -> Result<usize, ProtocolError> {
        self.with(state, |state| self.unpack_state(state, input, sink))
    }

    fn pack(
        &self,
        state: &mut ProtocolState,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        self.pack_kind(state, MessageKind::Binary, payload, out)
    }

    fn pack_kind(
        &self,
        state: &mut ProtocolState,
        kind: MessageKind,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        let threshold = self.settings.deflate.threshold;
        self.with(state, |state| {
            session::write_message(state, kind, payload, threshold, out)
        });
        Ok(())
    }

    fn control(
        &self,
        state: &mut ProtocolState,
        control: Control,
        out: &mut Vec<u8>,
    ) -> Result<bool, ProtocolError> {
        self.with(state, |state| self.control_state(state, control, out))
    }

    fn max_buffered_input(&self) -> usize {
        // One whole frame (header up to 14 bytes), or the upgrade request.
        self.settings
            .max_message_size
            .saturating_add(14)
            .max(self.settings.limits.max_request_size)
    }

    fn allows_packed(&self, state: &ProtocolState) -> bool {
        self.peek(state, session::allows_packed)
    }

    fn has_partial_frame(&self, state: &ProtocolState, buffered: usize) -> bool {
        self.peek(state, |state| session::has_partial_frame(state, buffered))
    }

    fn has_ticks(&self) -> bool {
        true
    }

    fn take_reschedule(&self, state: &mut ProtocolState) -> bool {
        self.with(state, |state| std::mem::take(&mut state.reschedule))
    }

    fn next_tick(&self, state: &ProtocolState, last_heard: Instant) -> Option<Instant> {
        self.peek(state, |state| {
            session::next_tick(state, last_heard, &self.timing())
        })
    }

    fn tick(
        &self,
        state: &mut ProtocolState,
        now: Instant,
        last_heard: Instant,
        sink: &mut FrameSink,
    ) -> Result<(), ProtocolError> {
        self.with(state, |state| {
            session::tick(state, now, last_heard, sink.reply(), &self.timing())
        })
    }
}

//! WebSocket as a client's framing (a dialed connection): the upgrade request as the
//! connection opens ([`Protocol::opening`]), the server's answer checked as it arrives
//! (`client_handshake.rs`), then the open connection as the server side runs it
//! (`session.rs`), with our frames masked with a fresh key each and the server's required
//! unmasked; permessage-deflate with the roles of the server's codec swapped.
//!
//! A handshake that fails (another status than 101, a wrong answer, none in time) is
//! reported with [`Signal::HandshakeFailed`] and the connection closed in order: whoever
//! dialed learns why, and the log stays quiet (the server's refusal is not our fault).

use std::time::{Duration, Instant};

use super::client_handshake::{parse_response, request, Answer, HandshakeFailure, Offer};
use super::client_handshake::{MAX_BODY, MAX_HEAD};
use super::deflate::Agreed;
use super::masking::fill_random;
use super::reader::Reader;
use super::session;
use super::state::{self, ClientSide, Phase, State};
use crate::protocols::{
    Control, FrameSink, MessageKind, Protocol, ProtocolError, ProtocolState, Signal,
};

/// A WebSocket client's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// What the upgrade request asks for (its key is replaced by a fresh one per
    /// connection).
    pub offer: Offer,
    /// The largest message accepted, after reassembly and decompression (1009 past it).
    pub max_message_size: usize,
    /// The server must answer the upgrade within this long.
    pub handshake_timeout: Duration,
    /// Messages shorter than this go out uncompressed.
    pub threshold: usize,
    /// The largest window we compress with (9 to 15), below what the server allows when
    /// that is more: a smaller window costs less memory per connection.
    pub own_window_bits: u8,
    /// Ping a server silent for this long (`None`: never)...
    pub ping_interval: Option<Duration>,
    /// ...and close the connection (1011) if nothing arrives this long after the ping.
    pub ping_timeout: Duration,
}

/// The WebSocket framing, client side.
#[derive(Debug, Clone)]
pub struct WebSocketClient {
    settings: ClientSettings,
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes (the system's entropy), base64.
fn fresh_key() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The agreement as the shared codec reads it, for our side: roles swapped (its "server"
/// is the side that compresses, us, with at most `own_bits` of window).
fn as_client(agreed: Agreed, own_bits: u8) -> Agreed {
    Agreed {
        server_no_context_takeover: agreed.client_no_context_takeover,
        client_no_context_takeover: agreed.server_no_context_takeover,
        server_max_window_bits: agreed.client_max_window_bits.min(own_bits),
        client_max_window_bits: agreed.server_max_window_bits,
    }
}

impl WebSocketClient {
    /// Runs `f` on a connection's state (see [`state::with_state`]).
    fn with<R>(&self, slot: &mut ProtocolState, f: impl FnOnce(&mut State) -> R) -> R {
        debug_assert!(slot.is_some(), "a client's state is never quiet: it masks");
        state::with_state(slot, self.settings.max_message_size, f)
    }

    /// Looks at a connection's state (see [`state::peek`]).
    fn peek<R>(&self, slot: &ProtocolState, f: impl FnOnce(&State) -> R) -> R {
        state::peek(slot, self.settings.max_message_size, f)
    }

    /// A client framing with these settings; `Err` names what cannot go into the upgrade
    /// request (checked once here, so that no connection fails for it later).
    pub fn new(settings: ClientSettings) -> Result<Self, String> {
        let probe = Offer {
            key: fresh_key(),
            ..settings.offer.clone()
        };
        request(&probe)?;
        Ok(WebSocketClient { settings })
    }

    /// Its settings.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The handshake's deadline and the keepalive.
    fn timing(&self) -> session::Timing {
        session::Timing {
            handshake_timeout: self.settings.handshake_timeout,
            ping_interval: self.settings.ping_interval,
            ping_timeout: self.settings.ping_timeout,
        }
    }

    fn offer(&self, state: &State) -> Offer {
        let key = (state.client.as_ref()).map_or_else(String::new, |c| c.ws_key.clone());
        Offer {
            key,
            ..self.settings.offer.clone()
        }
    }

    fn answer(
        &self,
        state: &mut State,
        input: &[u8],
        sink: &mut FrameSink,
    ) -> Result<usize, ProtocolError> {
        let failure = match parse_response(input, &self.offer(state)) {
            Ok(None) => return Ok(0),
            Ok(Some(Answer::Accepted(accepted, used))) => {
                state.phase = Phase::Open;
                state.started = None;
                state.reschedule = true;
                let own_bits = self.settings.own_window_bits;
                state.agreed = accepted.deflate.map(|a| as_client(a, own_bits));
                let compressed = state.agreed.is_some();
                state.reader = Reader::for_client(self.settings.max_message_size, compressed);
                sink.signal(Signal::Opened {
                    compressed,
                    answer: Some(Box::new(accepted)),
                });
                return Ok(used + self.frames(state, &input[used..], sink)?);
            }
            Ok(Some(Answer::Refused(refused, used))) => {
                let Some(body) = refused.body(&input[used..]) else {
                    return Ok(0); // the rest of the body is on its way
                };
                let body = body.to_vec();
                HandshakeFailure::Refused { refused, body }
            }
            Err(reason) => HandshakeFailure::Invalid(reason),
        };
        fail(state, sink, failure);
        Ok(input.len())
    }

    fn frames(
        &self,
        state: &mut State,
        input: &[u8],
        sink: &mut FrameSink,
    ) -> Result<usize, ProtocolError> {
        let (max, threshold) = (self.settings.max_message_size, self.settings.threshold);
        session::read_frames(state, input, sink, max, threshold)
    }
}

/// Reports a failed handshake and closes the connection in order (nothing to log: the
/// dialer learns why).
fn fail(state: &mut State, sink: &mut FrameSink, failure: HandshakeFailure) {
    state.phase = Phase::Closed;
    sink.signal(Signal::HandshakeFailed(Box::new(failure)));
    sink.close_after_reply(None);
}

impl Protocol for WebSocketClient {
    fn name(&self) -> &str {
        "websocket-client"
    }

    fn new_state(&self) -> ProtocolState {
        let reader = Reader::for_client(self.settings.max_message_size, false);
        let mut state = State::new(Phase::Handshake, reader, Some(Instant::now()));
        state.client = Some(Box::new(ClientSide {
            ws_key: fresh_key(),
        }));
        Some(Box::new(state))
    }

    fn opening(&self, state: &mut ProtocolState, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        self.with(state, |state| {
            state.started = Some(Instant::now());
            out.extend_from_slice(&request(&self.offer(state)).map_err(ProtocolError::new)?);
            Ok(())
        })
    }

    fn unpack(
        &self,
        state: &mut ProtocolState,
        input: &[u8],
        sink: &mut FrameSink,
    ) -> Result<usize, ProtocolError> {
        self.with(state, |state| match state.phase {
            Phase::Handshake | Phase::Pending(_) => self.answer(state, input, sink),
            Phase::Open | Phase::CloseSent => self.frames(state, input, sink),
            Phase::CloseReceived | Phase::Closed => Ok(input.len()),
        })
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
        let threshold = self.settings.threshold;
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
        if let Control::Close(payload) = control {
            self.with(state, |state| session::write_close(state, &payload, out))?;
        }
        Ok(false)
    }

    fn reads_while_output_full(&self) -> bool {
        true // see the trait: two peers with 16 MiB messages in flight deadlocked
    }

    fn max_buffered_input(&self) -> usize {
        // A refusal's head and the part of its body kept fit, whatever the message size.
        (self.settings.max_message_size)
            .saturating_add(14)
            .max(MAX_HEAD + MAX_BODY)
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
        let timing = self.timing();
        self.with(state, |state| {
            if matches!(state.phase, Phase::Handshake)
                && state
                    .started
                    .is_some_and(|started| now.duration_since(started) >= timing.handshake_timeout)
            {
                fail(
                    state,
                    sink,
                    HandshakeFailure::TimedOut(timing.handshake_timeout),
                );
                return Ok(());
            }
            session::tick(state, now, last_heard, sink.reply(), &timing)
        })
    }
}

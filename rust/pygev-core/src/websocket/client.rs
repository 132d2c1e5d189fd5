//! WebSocket as a client's framing (a dialed connection): the upgrade request as the
//! connection opens ([`Protocol::opening`]), the server's answer checked as it arrives
//! (`client_handshake.rs`), then the open connection as the server side runs it
//! (`session.rs`), with our frames masked with a fresh key each and the server's required
//! unmasked; permessage-deflate with the roles of the server's codec swapped.
//!
//! Not yet wired to Python (`server.connect("ws://...")`): that is the next step of the
//! WebSocket client work.

use std::time::{Duration, Instant};

use super::client_handshake::{parse_response, request, Answer, Offer};
use super::deflate::Agreed;
use super::frames::Reader;
use super::masking::fill_random;
use super::session;
use super::state::{state_of, state_ref, ClientSide, Phase, State};
use crate::protocols::{
    Control, FrameSink, MessageKind, Protocol, ProtocolError, ProtocolState, Signal,
};

/// A WebSocket client's settings.
#[derive(Debug, Clone)]
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
/// is the side that compresses, us).
fn as_client(agreed: Agreed) -> Agreed {
    Agreed {
        server_no_context_takeover: agreed.client_no_context_takeover,
        client_no_context_takeover: agreed.server_no_context_takeover,
        server_max_window_bits: agreed.client_max_window_bits,
        client_max_window_bits: agreed.server_max_window_bits,
    }
}

impl WebSocketClient {
    /// A client framing with these settings.
    pub fn new(settings: ClientSettings) -> Self {
        WebSocketClient { settings }
    }

    /// The handshake's deadline (no keepalive on the client side yet).
    fn timing(&self) -> session::Timing {
        session::Timing {
            handshake_timeout: self.settings.handshake_timeout,
            ping_interval: None,
            ping_timeout: Duration::ZERO,
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
        let refused = match parse_response(input, &self.offer(state)) {
            Ok(None) => return Ok(0),
            Ok(Some(Answer::Accepted(accepted, used))) => {
                state.phase = Phase::Open;
                state.reschedule = true;
                state.agreed = accepted.deflate.map(as_client);
                let compressed = state.agreed.is_some();
                state.reader = Reader::for_client(self.settings.max_message_size, compressed);
                sink.signal(Signal::Opened { compressed });
                return Ok(used + self.frames(state, &input[used..], sink)?);
            }
            Ok(Some(Answer::Refused(refused, _))) => {
                let location = (refused.location)
                    .map(|l| format!(" (redirected to {l}, not followed)"))
                    .unwrap_or_default();
                format!(
                    "pygev: WebSocket handshake refused: {} {}{location}",
                    refused.status, refused.reason
                )
            }
            Err(reason) => reason,
        };
        state.phase = Phase::Closed;
        Err(ProtocolError::new(refused))
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

impl Protocol for WebSocketClient {
    fn name(&self) -> &str {
        "websocket-client"
    }

    fn new_state(&self) -> ProtocolState {
        Some(Box::new(State {
            phase: Phase::Handshake,
            reader: Reader::for_client(self.settings.max_message_size, false),
            agreed: None,
            codec: None,
            holding: false,
            held_since: Instant::now(),
            reschedule: false,
            ping_sent: None,
            started: Instant::now(),
            client: Some(Box::new(ClientSide {
                ws_key: fresh_key(),
            })),
        }))
    }

    fn opening(&self, state: &mut ProtocolState, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let state = state_of(state);
        state.started = Instant::now();
        out.extend_from_slice(&request(&self.offer(state)).map_err(ProtocolError::new)?);
        Ok(())
    }

    fn unpack(
        &self,
        state: &mut ProtocolState,
        input: &[u8],
        sink: &mut FrameSink,
    ) -> Result<usize, ProtocolError> {
        let state = state_of(state);
        match state.phase {
            Phase::Handshake | Phase::Pending(_) => self.answer(state, input, sink),
            Phase::Open | Phase::CloseSent => self.frames(state, input, sink),
            Phase::CloseReceived | Phase::Closed => Ok(input.len()),
        }
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
        session::write_message(state_of(state), kind, payload, threshold, out);
        Ok(())
    }

    fn control(
        &self,
        state: &mut ProtocolState,
        control: Control,
        out: &mut Vec<u8>,
    ) -> Result<bool, ProtocolError> {
        if let Control::Close(payload) = control {
            session::write_close(state_of(state), &payload, out)?;
        }
        Ok(false)
    }

    fn max_buffered_input(&self) -> usize {
        (self.settings.max_message_size)
            .saturating_add(14)
            .max(16 << 10)
    }

    fn allows_packed(&self, state: &ProtocolState) -> bool {
        session::allows_packed(state_ref(state))
    }

    fn has_partial_frame(&self, state: &ProtocolState, buffered: usize) -> bool {
        session::has_partial_frame(state_ref(state), buffered)
    }

    fn has_ticks(&self) -> bool {
        true
    }

    fn take_reschedule(&self, state: &mut ProtocolState) -> bool {
        std::mem::take(&mut state_of(state).reschedule)
    }

    fn next_tick(&self, state: &ProtocolState, last_heard: Instant) -> Option<Instant> {
        session::next_tick(state_ref(state), last_heard, &self.timing())
    }

    fn tick(
        &self,
        state: &mut ProtocolState,
        now: Instant,
        last_heard: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        session::tick(state_of(state), now, last_heard, out, &self.timing())
    }
}

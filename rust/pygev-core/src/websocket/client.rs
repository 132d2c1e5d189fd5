//! WebSocket as a client's framing (a dialed connection): the upgrade request as the
//! connection opens ([`Protocol::opening`]), the server's answer checked as it arrives
//! (`client_handshake.rs`), then frames: ours masked, each with a fresh key
//! (`masking.rs`), the server's unmasked; permessage-deflate with the roles of the
//! server's codec swapped; pings answered, the close handshake, a handshake timeout.
//!
//! Not yet wired to Python (`server.connect("ws://...")`): that is the next step of the
//! WebSocket client work.

use std::time::{Duration, Instant};

use super::client_handshake::{parse_response, request, Answer, Offer};
use super::deflate::{Agreed, Codec};
use super::frames::{opcode, Deliver, Message, Reader, Violation};
use super::masking::{write_masked_frame, MaskKeys};
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

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// The request went out; reading the server's answer.
    Handshake,
    Open,
    /// The server's close was read: ours follows the replies already queued.
    CloseReceived,
    /// Ours went out; the server's ends the connection.
    CloseSent,
    Closed,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    key: String,
    keys: MaskKeys,
    reader: Reader,
    /// What was agreed, in the server codec's terms with the roles swapped (its "server"
    /// is us: we compress with the client's window, inflate with the server's).
    agreed: Option<Agreed>,
    codec: Option<Box<Codec>>,
    started: Instant,
}

fn state_of(state: &mut ProtocolState) -> &mut State {
    state
        .as_mut()
        .and_then(|s| s.downcast_mut::<State>())
        .expect("the WebSocket client state is made by new_state")
}

fn state_ref(state: &ProtocolState) -> &State {
    state
        .as_ref()
        .and_then(|s| s.downcast_ref::<State>())
        .expect("the WebSocket client state is made by new_state")
}

/// A fresh `Sec-WebSocket-Key`: 16 bytes of the mask generator, base64.
fn fresh_key(keys: &mut MaskKeys) -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(4) {
        chunk.copy_from_slice(&keys.next_key());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The agreement as the shared codec reads it, for our side: roles swapped.
fn as_client(agreed: Agreed) -> Agreed {
    Agreed {
        server_no_context_takeover: agreed.client_no_context_takeover,
        client_no_context_takeover: agreed.server_no_context_takeover,
        server_max_window_bits: agreed.client_max_window_bits,
        client_max_window_bits: agreed.server_max_window_bits,
    }
}

/// Delivers the server's messages; answers pings with masked pongs; keeps its close.
struct Delivery<'a> {
    sink: &'a mut FrameSink,
    keys: &'a mut MaskKeys,
    closes: Vec<Option<(u16, String)>>,
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

    fn control(&mut self, message: Message) {
        match message {
            Message::Ping(data) => {
                let key = self.keys.next_key();
                write_masked_frame(self.sink.reply(), opcode::PONG, true, false, &data, key);
            }
            Message::Close(received) => self.closes.push(received),
            _ => {}
        }
    }
}

impl WebSocketClient {
    /// A client framing with these settings.
    pub fn new(settings: ClientSettings) -> Self {
        WebSocketClient { settings }
    }

    fn answer(
        &self,
        state: &mut State,
        input: &[u8],
        sink: &mut FrameSink,
    ) -> Result<usize, ProtocolError> {
        let offer = Offer {
            key: state.key.clone(),
            ..self.settings.offer.clone()
        };
        match parse_response(input, &offer) {
            Ok(None) => Ok(0),
            Ok(Some(Answer::Accepted(accepted, used))) => {
                state.phase = Phase::Open;
                state.agreed = accepted.deflate.map(as_client);
                let compressed = state.agreed.is_some();
                state.reader = Reader::for_client(self.settings.max_message_size, compressed);
                sink.signal(Signal::Opened { compressed });
                Ok(used + self.frames(state, &input[used..], sink)?)
            }
            Ok(Some(Answer::Refused(refused, _))) => {
                state.phase = Phase::Closed;
                let location = refused
                    .location
                    .map(|l| format!(" (redirected to {l}, not followed)"))
                    .unwrap_or_default();
                Err(ProtocolError::new(format!(
                    "pygev: WebSocket handshake refused: {} {}{location}",
                    refused.status, refused.reason
                )))
            }
            Err(reason) => {
                state.phase = Phase::Closed;
                Err(ProtocolError::new(reason))
            }
        }
    }

    fn frames(
        &self,
        state: &mut State,
        input: &[u8],
        sink: &mut FrameSink,
    ) -> Result<usize, ProtocolError> {
        let max = self.settings.max_message_size;
        let threshold = self.settings.threshold;
        let (result, closes) = {
            let State {
                reader,
                agreed,
                codec,
                keys,
                ..
            } = &mut *state;
            let mut out = Delivery {
                sink: &mut *sink,
                keys,
                closes: Vec::new(),
            };
            let agreed = *agreed;
            let result = reader.read_with(input, &mut out, &mut |data, progress| {
                let agreed = agreed.expect("the reader takes RSV1 only with permessage-deflate");
                codec
                    .get_or_insert_with(|| Box::new(Codec::new(agreed, threshold)))
                    .inflate_step(data, progress, max, super::state::INFLATE_STEP)
            });
            (result, out.closes)
        };
        if state.reader.is_inflating() {
            sink.call_again();
        }
        for received in closes {
            let payload = received.map_or_else(Vec::new, |(code, _)| code.to_be_bytes().to_vec());
            self.end(state, sink, &payload, None);
        }
        match result {
            Ok(used) => Ok(used),
            Err(Violation { code, reason }) => {
                let error =
                    format!("pygev: WebSocket protocol violation, closing with {code}: {reason}");
                let payload = super::frames::close_payload(code, &reason);
                self.end(state, sink, &payload, Some(error));
                Ok(input.len())
            }
        }
    }

    fn end(&self, state: &mut State, sink: &mut FrameSink, payload: &[u8], error: Option<String>) {
        let close = match state.phase {
            Phase::Open => {
                state.phase = Phase::CloseReceived;
                Some(payload.to_vec())
            }
            Phase::CloseSent => {
                state.phase = Phase::Closed;
                None
            }
            _ => return,
        };
        sink.signal(Signal::Ending { close });
        sink.stop_reading(error);
    }
}

impl Protocol for WebSocketClient {
    fn name(&self) -> &str {
        "websocket-client"
    }

    fn new_state(&self) -> ProtocolState {
        let mut keys = MaskKeys::new();
        let key = fresh_key(&mut keys);
        Some(Box::new(State {
            phase: Phase::Handshake,
            key,
            keys,
            reader: Reader::for_client(self.settings.max_message_size, false),
            agreed: None,
            codec: None,
            started: Instant::now(),
        }))
    }

    fn opening(&self, state: &mut ProtocolState, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let state = state_of(state);
        state.started = Instant::now();
        let offer = Offer {
            key: state.key.clone(),
            ..self.settings.offer.clone()
        };
        out.extend_from_slice(&request(&offer).map_err(ProtocolError::new)?);
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
            Phase::Handshake => self.answer(state, input, sink),
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
        let state = state_of(state);
        if !matches!(state.phase, Phase::Open | Phase::CloseReceived) {
            return Ok(());
        }
        let op = match kind {
            MessageKind::Text => opcode::TEXT,
            MessageKind::Binary => opcode::BINARY,
        };
        let threshold = self.settings.threshold;
        let compressed = match state.agreed {
            Some(agreed) => {
                let codec =
                    (state.codec).get_or_insert_with(|| Box::new(Codec::new(agreed, threshold)));
                codec
                    .should_compress(payload.len())
                    .then(|| codec.deflate(payload))
                    .flatten()
            }
            None => None,
        };
        let key = state.keys.next_key();
        match compressed {
            Some(compressed) => write_masked_frame(out, op, true, true, &compressed, key),
            None => write_masked_frame(out, op, true, false, payload, key),
        }
        Ok(())
    }

    fn control(
        &self,
        state: &mut ProtocolState,
        control: Control,
        out: &mut Vec<u8>,
    ) -> Result<bool, ProtocolError> {
        let state = state_of(state);
        match (control, &state.phase) {
            (Control::Close(payload), _) if payload.len() > 125 => {
                return Err(ProtocolError::new(format!(
                    "pygev: a WebSocket close frame carries at most 125 bytes, got {}",
                    payload.len()
                )));
            }
            (Control::Close(payload), Phase::Open) => {
                let key = state.keys.next_key();
                write_masked_frame(out, opcode::CLOSE, true, false, &payload, key);
                state.phase = Phase::CloseSent;
            }
            (Control::Close(payload), Phase::CloseReceived) => {
                let key = state.keys.next_key();
                write_masked_frame(out, opcode::CLOSE, true, false, &payload, key);
                state.phase = Phase::Closed;
            }
            _ => {}
        }
        Ok(false)
    }

    fn max_buffered_input(&self) -> usize {
        self.settings
            .max_message_size
            .saturating_add(14)
            .max(16 << 10)
    }

    fn allows_packed(&self, state: &ProtocolState) -> bool {
        !matches!(state_ref(state).phase, Phase::CloseSent | Phase::Closed)
    }

    fn has_partial_frame(&self, state: &ProtocolState, buffered: usize) -> bool {
        let state = state_ref(state);
        match state.phase {
            Phase::Handshake => buffered > 0,
            Phase::Open | Phase::CloseSent => buffered > 0 || state.reader.in_message(),
            Phase::CloseReceived | Phase::Closed => false,
        }
    }

    fn has_ticks(&self) -> bool {
        true
    }

    fn next_tick(&self, state: &ProtocolState, _last_heard: Instant) -> Option<Instant> {
        let state = state_ref(state);
        (state.phase == Phase::Handshake).then(|| state.started + self.settings.handshake_timeout)
    }

    fn tick(
        &self,
        state: &mut ProtocolState,
        now: Instant,
        _last_heard: Instant,
        _out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        let state = state_of(state);
        let timeout = self.settings.handshake_timeout;
        if state.phase == Phase::Handshake && now.duration_since(state.started) >= timeout {
            state.phase = Phase::Closed;
            return Err(ProtocolError::new(format!(
                "pygev: the server did not answer the WebSocket handshake within {timeout:?}"
            )));
        }
        Ok(())
    }
}

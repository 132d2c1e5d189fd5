//! What both sides do with an open WebSocket connection, over its [`State`]: read frames
//! into whole messages (answering pings, keeping the peer's close for after the messages
//! before it), end the connection, and write messages and close frames (masked with a
//! fresh key each on a client's side).

use super::deflate::Codec;
use super::frames::{self, opcode, Violation};
use super::masking::{next_key, write_masked_frame};
use super::state::{Delivery, Phase, State, INFLATE_STEP};
use crate::protocols::{FrameSink, MessageKind, ProtocolError, Signal};

/// Reads the frames at the start of `input` (messages up to `max` bytes; compressed
/// messages inflated with a codec made with `threshold`); returns the bytes used.
pub(super) fn read_frames(
    state: &mut State,
    input: &[u8],
    sink: &mut FrameSink,
    max: usize,
    threshold: usize,
) -> Result<usize, ProtocolError> {
    let mut inflated = false;
    let (result, closes) = {
        let State {
            reader,
            agreed,
            codec,
            client,
            ..
        } = &mut *state;
        let mut out = Delivery {
            sink: &mut *sink,
            closes: Vec::new(),
            masked: client.is_some(),
        };
        let agreed = *agreed;
        let result = reader.read_with(input, &mut out, &mut |data, progress| {
            let agreed = agreed.expect("the reader takes RSV1 only with permessage-deflate");
            inflated = true;
            codec
                .get_or_insert_with(|| Box::new(Codec::new(agreed, threshold)))
                .inflate_step(data, progress, max, INFLATE_STEP)
        });
        (result, out.closes)
    };
    if inflated || state.reader.holds_buffer() {
        state.used_memory();
    }
    if result.as_ref().is_ok_and(|used| *used > 0) {
        state.ping_sent = None; // the peer is alive
    }
    if state.reader.is_inflating() {
        sink.call_again(); // the rest of this message in the loop's next turn
    }
    for received in closes {
        // The close is echoed with the peer's code (and no reason), or empty.
        let payload = received.map_or_else(Vec::new, |(code, _)| code.to_be_bytes().to_vec());
        end(state, sink, &payload, None);
    }
    match result {
        Ok(used) => Ok(used),
        Err(Violation { code, reason }) => {
            let error =
                format!("pygev: WebSocket protocol violation, closing with {code}: {reason}");
            end(
                state,
                sink,
                &frames::close_payload(code, &reason),
                Some(error),
            );
            Ok(input.len())
        }
    }
}

/// Ends the connection after the messages already pushed, and reads no more: the
/// dispatcher sends our close frame (`close_payload`, unless ours went out already) after
/// their replies, then closes.
pub(super) fn end(
    state: &mut State,
    sink: &mut FrameSink,
    close_payload: &[u8],
    error: Option<String>,
) {
    let close = match state.phase {
        Phase::Open => {
            state.phase = Phase::CloseReceived;
            Some(close_payload.to_vec())
        }
        Phase::CloseSent => {
            state.phase = Phase::Closed;
            None
        }
        _ => return, // already ending
    };
    sink.signal(Signal::Ending { close });
    sink.stop_reading(error);
}

/// Writes one frame of ours: masked on a client's side.
pub(super) fn write_frame(state: &mut State, out: &mut Vec<u8>, op: u8, rsv1: bool, data: &[u8]) {
    match state.client {
        Some(_) => write_masked_frame(out, op, true, rsv1, data, next_key()),
        None => frames::write_frame(out, op, true, rsv1, data),
    }
}

/// Writes a message (compressed when agreed and worth it); nothing once our close went
/// out, nor before the handshake.
pub(super) fn write_message(
    state: &mut State,
    kind: MessageKind,
    payload: &[u8],
    threshold: usize,
    out: &mut Vec<u8>,
) {
    if !matches!(state.phase, Phase::Open | Phase::CloseReceived) {
        return;
    }
    let op = match kind {
        MessageKind::Text => opcode::TEXT,
        MessageKind::Binary => opcode::BINARY,
    };
    let compressed = match state.codec(threshold) {
        Some(codec) if codec.should_compress(payload.len()) => codec.deflate(payload),
        _ => None,
    };
    match compressed {
        Some(compressed) => write_frame(state, out, op, true, &compressed),
        None => write_frame(state, out, op, false, payload),
    }
}

/// Writes our close frame with `payload` (at most 125 bytes), once.
pub(super) fn write_close(
    state: &mut State,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    if payload.len() > 125 {
        return Err(ProtocolError::new(format!(
            "pygev: a WebSocket close frame carries at most 125 bytes, got {}",
            payload.len()
        )));
    }
    let next = match state.phase {
        Phase::Open => Phase::CloseSent,
        Phase::CloseReceived => Phase::Closed,
        _ => return Ok(()), // a close after ours: nothing
    };
    write_frame(state, out, opcode::CLOSE, false, payload);
    state.phase = next;
    Ok(())
}

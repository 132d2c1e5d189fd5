//! What both sides do with a WebSocket connection, over its [`State`]: read frames into
//! whole messages (answering pings, keeping the peer's close for after the messages before
//! it), end the connection, write messages and close frames (masked with a fresh key each
//! on a client's side), and run its deadlines (the handshake's, the keepalive's, the
//! codec's park).

use std::time::{Duration, Instant};

use super::deflate::Codec;
use super::frames::{self, close_code, opcode, Violation};
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

/// Whether a message may still be sent: not once our close went out.
pub(super) fn allows_packed(state: &State) -> bool {
    !matches!(state.phase, Phase::CloseSent | Phase::Closed)
}

/// Whether the connection is in the middle of something the peer must finish (a frame, a
/// fragmented message, the handshake), for the frame timeout.
pub(super) fn has_partial_frame(state: &State, buffered: usize) -> bool {
    match state.phase {
        Phase::Handshake => buffered > 0,
        Phase::Open | Phase::CloseSent => buffered > 0 || state.reader.in_message(),
        // Held behind the hook (the handshake timeout runs), or ending.
        Phase::Pending(_) | Phase::CloseReceived | Phase::Closed => false,
    }
}

/// A connection's deadlines.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    /// The handshake must be done within this long.
    pub(super) handshake_timeout: Duration,
    /// Ping a peer silent for this long...
    pub(super) ping_interval: Option<Duration>,
    /// ...and close the connection if nothing arrives this long after the ping.
    pub(super) ping_timeout: Duration,
}

/// The next of the connection's deadlines: the handshake's, the keepalive's (its next
/// ping, or the ping's timeout), the codec's park.
pub(super) fn next_tick(state: &State, last_heard: Instant, timing: &Timing) -> Option<Instant> {
    let own = match state.phase {
        Phase::Handshake | Phase::Pending(_) => state
            .started
            .map(|started| started + timing.handshake_timeout),
        Phase::Open => timing.ping_interval.map(|interval| match state.ping_sent {
            Some(sent) if last_heard <= sent => sent + timing.ping_timeout,
            _ => last_heard + interval,
        }),
        _ => None,
    };
    [own, state.park_deadline()].into_iter().flatten().min()
}

/// Acts on the deadlines that came: parks the codec, fails a handshake that took too long,
/// pings a silent peer, closes one that did not answer the ping.
pub(super) fn tick(
    state: &mut State,
    now: Instant,
    last_heard: Instant,
    out: &mut Vec<u8>,
    timing: &Timing,
) -> Result<(), ProtocolError> {
    if state.park_deadline().is_some_and(|at| now >= at) {
        state.park();
    }
    match state.phase {
        Phase::Handshake | Phase::Pending(_) => {
            let timeout = timing.handshake_timeout;
            if state
                .started
                .is_some_and(|started| now.duration_since(started) >= timeout)
            {
                state.phase = Phase::Closed;
                return Err(ProtocolError::new(format!(
                    "pygev: no complete WebSocket handshake within {timeout:?}"
                )));
            }
            return Ok(());
        }
        Phase::Open => {}
        _ => return Ok(()),
    }
    let Some(interval) = timing.ping_interval else {
        return Ok(());
    };
    if state.ping_sent.is_some_and(|sent| last_heard > sent) {
        state.ping_sent = None; // bytes came (a frame may still be arriving)
    }
    match state.ping_sent {
        Some(sent) if now.duration_since(sent) >= timing.ping_timeout => {
            let close = frames::close_payload(close_code::INTERNAL_ERROR, "keepalive ping timeout");
            write_frame(state, out, opcode::CLOSE, false, &close);
            state.phase = Phase::CloseSent;
            Err(ProtocolError::new(format!(
                "pygev: no answer to a WebSocket keepalive ping within {:?}",
                timing.ping_timeout
            )))
        }
        Some(_) => Ok(()),
        None if now.duration_since(last_heard) >= interval => {
            write_frame(state, out, opcode::PING, false, b"keepalive");
            state.ping_sent = Some(now);
            Ok(())
        }
        None => Ok(()),
    }
}

//! Where a framing puts what it finds: whole frames (with their kinds) and signals, in
//! order ([`FrameSink`]), and how the loop takes them ([`Frames`], [`Item`], [`Taken`]).

use super::signal::{MessageKind, Signal};

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
    /// The capacity the frames' buffer had when taken (capped), for the next one.
    wanted: usize,
}

/// The largest frames' buffer made ahead for the next batch.
const REUSE_CAP: usize = 64 << 10;

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

    /// The frames' buffer, taken with the batch; the next one should be as large (capped):
    /// see [`FrameSink::wants_buffer`].
    fn take_data(&mut self) -> Vec<u8> {
        self.wanted = self.data.capacity().min(REUSE_CAP);
        std::mem::take(&mut self.data)
    }

    /// The capacity the frames' buffer should have, when the last one went with a batch:
    /// the caller hands one over with [`FrameSink::adopt_buffer`] (a recycled one, or a new
    /// one made at once rather than grown frame by frame).
    pub fn wants_buffer(&mut self) -> Option<usize> {
        let wanted = std::mem::take(&mut self.wanted);
        (wanted > 0 && self.data.capacity() == 0).then_some(wanted)
    }

    /// Takes `buffer` (emptied) as the frames' buffer, if it holds none.
    pub fn adopt_buffer(&mut self, mut buffer: Vec<u8>) {
        if self.data.capacity() == 0 {
            buffer.clear();
            self.data = buffer;
        }
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
                let data = self.take_data();
                Some(Taken::One { kind, data })
            }
            _ => {
                let ends_cap = self.ends.capacity().min(REUSE_CAP / 8);
                Some(Taken::Many(Frames {
                    data: self.take_data(),
                    ends: std::mem::replace(&mut self.ends, Vec::with_capacity(ends_cap)),
                    kinds: std::mem::take(&mut self.kinds),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_batch_asks_for_a_buffer_of_its_size_and_adopts_one() {
        let mut sink = FrameSink::new();
        sink.push(&[1; 3000]);
        sink.push(&[2; 3000]);
        assert!(matches!(sink.take(), Some(Taken::Many(_))));
        let wanted = sink.wants_buffer().expect("the next batch wants a buffer");
        assert!(wanted >= 6000);
        assert_eq!(sink.wants_buffer(), None, "asked once");
        let mut recycled = Vec::with_capacity(wanted);
        recycled.extend_from_slice(b"stale bytes of a handled batch");
        let at = recycled.as_ptr();
        sink.adopt_buffer(recycled);
        sink.push(b"fresh");
        sink.push(b"frames");
        let Some(Taken::Many(frames)) = sink.take() else {
            panic!("two frames");
        };
        assert_eq!(frames.data, b"freshframes", "nothing stale is left");
        assert_eq!(frames.data.as_ptr(), at, "the adopted buffer was used");
        assert!(sink.wants_buffer().is_some()); // (the loop asks after every batch)
                                                // A sink that already holds a buffer keeps it.
        sink.push(b"x");
        sink.adopt_buffer(vec![0; 10]);
        assert!(matches!(sink.take(), Some(Taken::One { data, .. }) if data == b"x"));
        assert!(
            sink.wants_buffer().is_some(),
            "a single message's buffer is made too"
        );
    }
}

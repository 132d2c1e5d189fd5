//! A connection's output on its way to the loop: the room check against
//! `max_write_buffer`, and sends, frames, messages and controls posted to the loop.

use std::borrow::Cow;

use pygev_core::{CloseReason, Command, Control, MessageKind};

use super::Connection;
use crate::errors::Error;
use crate::shared::{Packer, Target};

impl Connection {
    fn target(&self) -> Target<'_> {
        Target {
            loop_index: self.loop_index,
            token: self.token,
            id: self.id,
            backlog: &self.backlog,
        }
    }

    /// Checks that `len` more bytes of output fit the connection's `max_write_buffer`: a
    /// single send larger than the limit is the caller's error (nothing is sent); one that
    /// would take the unsent output past it means the peer does not read as fast as it is
    /// sent to, and the connection is reset at once (sends within one callback count).
    #[inline]
    pub(crate) fn check_room(&self, len: usize) -> Result<(), Error> {
        let limit = self.shared.max_write_buffer;
        // NOTE: the common case stays small enough to inline into every send; the errors,
        // with their formatting, live out of line.
        if len <= limit && self.backlog.unsent() + len <= limit {
            return Ok(());
        }
        self.no_room(len, limit)
    }

    #[cold]
    #[inline(never)]
    fn no_room(&self, len: usize, limit: usize) -> Result<(), Error> {
        if len > limit {
            return Err(Error::Value(format!(
                "pygev: a send of {len} bytes exceeds max_write_buffer {limit}"
            )));
        }
        let unsent = self.backlog.unsent();
        self.abort(
            CloseReason::Abort,
            Some(format!(
                "pygev: connection {} would have {} bytes of unsent output, over \
             max_write_buffer {limit} (it is sent to faster than the peer reads)",
                self.id,
                unsent + len
            )),
        );
        Err(Error::Closed(format!(
            "pygev: connection {} was reset: its unsent output would exceed \
             max_write_buffer {limit}",
            self.id
        )))
    }

    /// Queues bytes in wire form made here (a frame without compression, which needs no
    /// state, or an HTTP response).
    pub(crate) fn post_frame(
        &self,
        size: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Error> {
        if !self.shared.post_wire(self.target(), size, write) {
            return Err(self.closed_error());
        }
        Ok(())
    }

    /// Queues a message for the loop to pack with the connection's own framing state
    /// (WebSocket with compression).
    pub(crate) fn post_message(&self, payload: &[u8], kind: MessageKind) -> Result<(), Error> {
        if !self
            .shared
            .post_message(self.target(), Cow::Borrowed(payload), kind)
        {
            return Err(self.closed_error());
        }
        Ok(())
    }

    /// Hands `control` to the connection's framing in the loop, in order with its sends
    /// (batched inside a callback, like them), or at once with `now`.
    pub(crate) fn post_control(&self, control: Control, now: bool) -> Result<(), Error> {
        let command = Command::Control {
            token: self.token,
            id: self.id,
            control,
        };
        if !self.shared.post_command(self.loop_index, command, now) {
            return Err(self.closed_error());
        }
        Ok(())
    }

    /// Queues a payload for writing, framed by `framing` (here when it packs without
    /// state, else in the loop); borrowed, it is an echoed frame of a batch.
    #[inline]
    pub(crate) fn send_framed(
        &self,
        payload: Cow<'_, [u8]>,
        framing: Packer<'_>,
    ) -> Result<(), Error> {
        self.writable()?;
        if let Err(e) = framing.protocol.check_payload(&payload) {
            return Err(Error::Value(e.message().to_string()));
        }
        self.check_room(payload.len())?;
        if !self.shared.post_send(self.target(), payload, framing) {
            return Err(self.closed_error());
        }
        Ok(())
    }
}

//! The native mode: the loops frame (raw, length-prefix, delimited, plugins); the handler
//! gets `bytes` and returns bytes to send.

use std::borrow::Cow;
use std::sync::Arc;

use pygev_core::{MessageKind, Protocol};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::Mode;
use crate::bytes_like::bytes_of;
use crate::connection::Connection;
use crate::dispatcher::{Dispatcher, Frame, Then};
use crate::shared::{Packer, Packing};

/// Framing in the loops.
pub(crate) struct Native {
    protocol: Arc<dyn Protocol>,
    /// How it packs, asked once.
    packing: Packing,
}

impl Native {
    pub(crate) fn new(protocol: Arc<dyn Protocol>) -> Self {
        let packing = Packing::of(&*protocol);
        Native { protocol, packing }
    }

    fn framing(&self) -> Packer<'_> {
        Packer {
            protocol: &*self.protocol,
            packing: self.packing,
        }
    }
}

impl Mode for Native {
    fn loop_protocol(&self) -> Arc<dyn Protocol> {
        self.protocol.clone()
    }

    fn send(&self, conn: &Bound<'_, Connection>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = bytes_of(data)?;
        Ok(conn.get().send_framed(data, self.framing())?)
    }

    fn on_message(
        &self,
        dispatcher: &mut Dispatcher<'_>,
        conn: &Py<Connection>,
        frame: Frame<'_>,
        _kind: MessageKind,
    ) -> bool {
        if conn.get().is_closed() {
            return false; // closed by the handler or after an error: drop what is left
        }
        let py = dispatcher.py();
        let bytes = PyBytes::new(py, frame.bytes());
        dispatcher.enter_callback();
        let result = dispatcher
            .callbacks_of(conn.get())
            .on_message
            .bind(py)
            .call1((conn.bind(py), py.None(), &bytes));
        let Some(result) = dispatcher.settle(result, Some(conn), Then::Reply) else {
            return true;
        };
        match result {
            Ok(reply) if reply.is_none() => {}
            // NOTE: a handler that returns the bytes it was given (echo) sends our own copy
            // of them: no second copy (raw echo: memcpy was 17% of server CPU).
            Ok(reply) if reply.is(&bytes) => match frame {
                Frame::Owned(data) if self.packing == Packing::Identity => {
                    dispatcher.reply(conn, Cow::Owned(data), self.framing())
                }
                frame => dispatcher.reply(conn, Cow::Borrowed(frame.bytes()), self.framing()),
            },
            Ok(reply) => self.reply(dispatcher, conn, reply),
            Err(err) => dispatcher.callback_failed("on_message", conn, err),
        }
        false
    }

    fn reply(
        &self,
        dispatcher: &mut Dispatcher<'_>,
        conn: &Py<Connection>,
        value: Bound<'_, PyAny>,
    ) {
        match bytes_of(&value) {
            Ok(reply) => dispatcher.reply(conn, reply, self.framing()),
            Err(err) => {
                let what = "on_message returned a non-bytes value, which";
                dispatcher.callback_failed(what, conn, err.into());
            }
        }
    }
}

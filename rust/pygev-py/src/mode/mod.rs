//! A connection's mode: how its bytes become handler calls and its sends become bytes.
//! Native framing (raw, length-prefix, delimited, plugins: framed in the loops), a Python
//! `pygev.Protocol` (framed here, over raw bytes), or WebSocket (handshake and frames in
//! the loops; `str`/`bytes` messages). The mode is chosen once, when the server is built
//! (or for an outgoing connection, when it is dialed), and every difference between the
//! modes lives behind [`Mode`], one file per mode.

use std::ops::Range;
use std::sync::Arc;

use pygev_core::{Frames, MessageKind, Protocol, Signal};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;

use crate::connection::Connection;
use crate::dispatcher::{Dispatcher, Frame, HookRequest};
use crate::errors::Error;
use crate::protocols::protocol_from;

mod native;
mod python;
mod websocket;

pub(crate) use native::Native;
pub(crate) use python::PythonFraming;
pub(crate) use websocket::WebSocketMode;

/// What each mode does differently. Connection methods and the dispatcher call these; no
/// other code asks which mode a connection is in.
pub(crate) trait Mode: Send + Sync {
    /// The framing the loops run for connections in this mode.
    fn loop_protocol(&self) -> Arc<dyn Protocol>;

    /// `conn.send(data)`.
    fn send(&self, conn: &Bound<'_, Connection>, data: &Bound<'_, PyAny>) -> PyResult<()>;

    /// One whole message from the loop: calls `on_message` and sends what it returns.
    /// Returns whether the callback awaits (it goes on as a task; what it returns is sent
    /// by [`reply`](Mode::reply) when it ends).
    fn on_message(
        &self,
        dispatcher: &mut Dispatcher<'_>,
        conn: &Py<Connection>,
        frame: Frame<'_>,
        kind: MessageKind,
    ) -> bool;

    /// Sends what `on_message` returned (not `None`), once it ended.
    fn reply(
        &self,
        dispatcher: &mut Dispatcher<'_>,
        conn: &Py<Connection>,
        value: Bound<'_, PyAny>,
    );

    /// Frames `range` of one read, in order: `on_message` for each, up to one that awaits.
    /// Returns the index after the last frame handled (`range.end` unless one awaits).
    fn on_frames(
        &self,
        dispatcher: &mut Dispatcher<'_>,
        conn: &Py<Connection>,
        frames: &Frames,
        range: Range<usize>,
    ) -> usize {
        // NOTE: compiled for each mode, so the call per frame is a direct one (inlined),
        // not a second virtual call.
        let mut start = if range.start == 0 {
            0
        } else {
            frames.ends[range.start - 1]
        };
        for index in range.clone() {
            let stop = frames.ends[index];
            let frame = Frame::Borrowed(&frames.data[start..stop]);
            start = stop;
            if self.on_message(dispatcher, conn, frame, frames.kind(index)) {
                return index + 1;
            }
        }
        range.end
    }

    /// The loop's framing has news about the connection (only WebSocket's has any).
    fn on_signal(&self, _dispatcher: &mut Dispatcher<'_>, conn: &Py<Connection>, signal: Signal) {
        log::error!(
            "pygev: connection {} got a signal its mode does not expect: {signal:?}",
            conn.get().id_value()
        );
    }

    /// Whether the dispatcher frames this connection's bytes itself (a Python framing):
    /// asked per message, so it takes no lock.
    fn is_python_framed(&self) -> bool {
        false
    }

    /// The Python framing, when the dispatcher frames this connection's bytes itself.
    fn python_framing(&self, _py: Python<'_>) -> Option<Py<PyAny>> {
        None
    }

    /// Whether `on_connect` runs as soon as the connection opens (WebSocket: once its
    /// handshake completed).
    fn greets_at_open(&self) -> bool {
        true
    }

    /// Whether `on_close` is due for a connection that closed (WebSocket: only one that
    /// got `on_connect`).
    fn farewell_due(&self, _conn: &Connection) -> bool {
        true
    }

    /// Whether the handler's `on_handshake` hook applies.
    fn has_handshake(&self) -> bool {
        false
    }

    /// A hook that awaited (`on_handshake`, `on_http_request`) has ended with `answer`:
    /// answer the held `request`.
    fn answered(
        &self,
        _dispatcher: &mut Dispatcher<'_>,
        conn: &Py<Connection>,
        _request: &HookRequest,
        _answer: PyResult<Bound<'_, PyAny>>,
    ) {
        log::error!(
            "pygev: connection {} got a hook's answer its mode does not expect",
            conn.get().id_value()
        );
    }

    /// `conn.close(code, reason)` before the connection is closed: WebSocket sends its
    /// close frame (checking code and reason); the others ignore both.
    fn close(&self, _conn: &Connection, _code: i64, _reason: &str) -> Result<(), Error> {
        Ok(())
    }

    /// The server or a failed callback ends the connection: WebSocket says why with a
    /// close frame (1001 going away, 1011 internal error). Returns whether the mode ends
    /// connections itself when the server stops (then the dispatcher closes them after
    /// their goodbye; others are closed by the loops' drain).
    fn say_goodbye(&self, _conn: &Connection, _code: u16, _reason: &str) -> bool {
        false
    }

    /// `conn.shutdown_write()` is allowed.
    fn check_shutdown_write(&self) -> Result<(), Error> {
        Ok(())
    }

    /// `conn.ping(payload)`.
    fn ping(&self, conn: &Connection, _payload: &[u8]) -> Result<(), Error> {
        Err(not_websocket(conn))
    }

    /// Whether an outgoing connection may run in this mode (a WebSocket server's may not:
    /// a `ws://` URL makes a client mode of its own).
    fn check_dial(&self) -> Result<(), Error> {
        Ok(())
    }

    /// The subprotocol the server chose, on a WebSocket client's connection.
    fn subprotocol(&self) -> Option<&str> {
        None
    }

    /// The header fields of the server's answer, on a WebSocket client's connection.
    fn response_headers(&self) -> Option<&[(String, String)]> {
        None
    }

    /// Visits the mode's Python references for the GC.
    fn traverse(&self, _visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        Ok(())
    }

    /// Drops the mode's Python references (its server is being collected).
    fn clear(&self) {}
}

/// The error of a WebSocket method on another kind of connection.
pub(crate) fn not_websocket(conn: &Connection) -> Error {
    Error::Type(format!(
        "pygev: connection {} is not a WebSocket connection",
        conn.id_value()
    ))
}

/// A mode as connections hold it: one thin pointer (8 bytes each, where `Arc<dyn Mode>`
/// would take 16), shared by every connection of a server or of one dial.
pub(crate) type SharedMode = Arc<Box<dyn Mode>>;

/// `mode`, to be shared.
pub(crate) fn shared(mode: impl Mode + 'static) -> SharedMode {
    Arc::new(Box::new(mode))
}

/// The mode for `handler` and a `protocol=` argument. A `pygev.WebSocketHandler` goes with
/// `pygev.WebSocket` (the default for it), and only with it; its `on_handshake`, if any,
/// becomes the hook.
pub(crate) fn choose(
    handler: &Bound<'_, PyAny>,
    protocol: Option<&Bound<'_, PyAny>>,
) -> PyResult<SharedMode> {
    let py = handler.py();
    let classes = crate::package::classes(py)?;
    let ws_handler = handler.is_instance(classes.websocket_handler.bind(py))?;
    let websocket = match protocol {
        Some(protocol) => protocol.cast::<crate::websocket::WebSocket>().ok().cloned(),
        None if ws_handler => Some(default_websocket(py)?),
        None => None,
    };
    match websocket {
        Some(ws) if ws_handler => {
            let hook = handler.hasattr("on_handshake")?;
            let http = handler.hasattr("on_http_request")?;
            Ok(shared(WebSocketMode::new(ws.get().core(hook, http))))
        }
        Some(_) => Err(Error::Type(
            "pygev: protocol=pygev.WebSocket() needs a pygev.WebSocketHandler".into(),
        )
        .into()),
        None if ws_handler => Err(Error::Type(
            "pygev: a pygev.WebSocketHandler serves only protocol=pygev.WebSocket(...)".into(),
        )
        .into()),
        None => Ok(match protocol_from(protocol)? {
            (_, Some(framing)) => shared(PythonFraming::new(framing)),
            (protocol, None) => shared(Native::new(protocol)),
        }),
    }
}

/// The settings of a connection dialed to a `ws://` URL: its handler must be a
/// `pygev.WebSocketHandler`, its `protocol=` a `pygev.WebSocket` (by default
/// `pygev.WebSocket()`).
pub(crate) fn client_settings(
    handler: &Bound<'_, PyAny>,
    protocol: Option<&Bound<'_, PyAny>>,
) -> PyResult<pygev_core::websocket::Settings> {
    let py = handler.py();
    let classes = crate::package::classes(py)?;
    if !handler.is_instance(classes.websocket_handler.bind(py))? {
        return Err(Error::Type(
            "pygev: a ws:// or wss:// connection needs a pygev.WebSocketHandler".into(),
        )
        .into());
    }
    match protocol {
        None => Ok(default_websocket(py)?.get().settings.clone()),
        Some(protocol) => match protocol.cast::<crate::websocket::WebSocket>() {
            Ok(ws) => Ok(ws.get().settings.clone()),
            Err(_) => Err(Error::Type(
                "pygev: a ws:// or wss:// connection takes protocol=pygev.WebSocket(...)".into(),
            )
            .into()),
        },
    }
}

/// `pygev.WebSocket()`, with the defaults its signature shows (a keepalive among them).
fn default_websocket(py: Python<'_>) -> PyResult<Bound<'_, crate::websocket::WebSocket>> {
    let ws = py.get_type::<crate::websocket::WebSocket>().call0()?;
    Ok(ws.cast_into::<crate::websocket::WebSocket>()?)
}

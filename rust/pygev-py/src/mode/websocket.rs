//! The WebSocket mode, both sides: the loops run the handshake and frames; here are the
//! handshake's outcome (a server's `on_handshake` hook, a client's dial future), whole
//! messages as `str` or `bytes`, sends, pings and the close. A connection's WebSocket
//! phase is kept here only (in its `phase`).

use std::sync::{Arc, OnceLock};

use pygev_core::websocket::client::WebSocketClient;
use pygev_core::websocket::client_handshake::Accepted;
use pygev_core::websocket::frames::{self, opcode};
use pygev_core::websocket::handshake::{self, UpgradeRequest};
use pygev_core::websocket::http_request::HttpRequest;
use pygev_core::websocket::masking::{next_key, write_masked_frame};
use pygev_core::websocket::WebSocket;
use pygev_core::{Control, MessageKind, Protocol, Signal};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use super::Mode;
use crate::bytes_like::bytes_of;
use crate::connection::Connection;
use crate::dial;
use crate::dispatcher::{type_name, Dispatcher, Frame, HookRequest, Then};
use crate::errors::{self, Error};
use crate::http_request::{response_of, PyHttpRequest};
use crate::websocket::WebSocketRequest;

/// A connection's phase (`Connection::phase`).
mod phase {
    /// Waiting for the handshake (in the loop, or the hook).
    pub(super) const HANDSHAKING: u8 = 0;
    /// Open; frames are made here (without compression they need no state).
    pub(super) const OPEN: u8 = 1;
    /// Open with permessage-deflate: the loop compresses, with the connection's context.
    pub(super) const OPEN_COMPRESSED: u8 = 2;
}

/// WebSocket, a server's side or one dialed connection's.
pub(crate) struct WebSocketMode {
    side: Side,
}

enum Side {
    /// The framing of a server's connections.
    Server(Arc<WebSocket>),
    /// One dialed connection's (a mode each: it remembers what the server chose).
    Client(Box<Client>),
}

struct Client {
    /// The framing, shared by dials that ask the same.
    framing: Arc<WebSocketClient>,
    /// The URL dialed, for messages.
    url: String,
    /// The server's answer (its subprotocol and header fields), once it came.
    answer: OnceLock<Box<Accepted>>,
}

impl WebSocketMode {
    /// A server's.
    pub(crate) fn new(ws: Arc<WebSocket>) -> Self {
        WebSocketMode {
            side: Side::Server(ws),
        }
    }

    /// One dialed connection's, to `url`.
    pub(crate) fn client(framing: Arc<WebSocketClient>, url: String) -> Self {
        let client = Client {
            framing,
            url,
            answer: OnceLock::new(),
        };
        WebSocketMode {
            side: Side::Client(Box::new(client)),
        }
    }

    /// A client's: the server's answer to its upgrade, once it came.
    fn servers_answer(&self) -> Option<&Accepted> {
        match &self.side {
            Side::Client(client) => client.answer.get().map(|a| &**a),
            Side::Server(_) => None,
        }
    }

    /// Writes one frame of ours, masked on a client's side.
    fn post_frame(&self, conn: &Connection, op: u8, payload: &[u8]) -> Result<(), Error> {
        match self.side {
            Side::Server(_) => conn.post_frame(payload.len() + 10, |out| {
                frames::write_frame(out, op, true, false, payload)
            }),
            Side::Client(_) => conn.post_frame(payload.len() + 14, |out| {
                write_masked_frame(out, op, true, false, payload, next_key())
            }),
        }
    }

    /// The handshake completed (`compressed`: permessage-deflate was agreed).
    fn set_open(conn: &Connection, compressed: bool) {
        conn.set_phase(match compressed {
            true => phase::OPEN_COMPRESSED,
            false => phase::OPEN,
        });
    }

    /// Whether the handshake completed (the connection got `on_connect`, so it gets
    /// `on_close`).
    fn opened(conn: &Connection) -> bool {
        conn.phase() != phase::HANDSHAKING
    }

    /// Queues one message.
    fn send_message(
        &self,
        conn: &Connection,
        kind: MessageKind,
        payload: &[u8],
    ) -> Result<(), Error> {
        conn.writable()?;
        conn.check_room(payload.len())?;
        match conn.phase() {
            phase::OPEN => {
                let op = match kind {
                    MessageKind::Text => opcode::TEXT,
                    MessageKind::Binary => opcode::BINARY,
                };
                self.post_frame(conn, op, payload)
            }
            phase::OPEN_COMPRESSED => conn.post_message(payload, kind),
            _ => Err(Error::State(format!(
                "pygev: connection {}: the WebSocket handshake is not complete",
                conn.id_value()
            ))),
        }
    }

    /// Calls `on_message(conn, data)` with `str` (text) or `bytes` (binary) and sends what
    /// it returns; returns whether it awaits.
    fn message(
        &self,
        d: &mut Dispatcher<'_>,
        conn: &Py<Connection>,
        kind: MessageKind,
        payload: &[u8],
    ) -> bool {
        let py = d.py();
        let data = match kind {
            // The loop checked the text (RFC 6455: failing the connection with 1007).
            MessageKind::Text => match std::str::from_utf8(payload) {
                Ok(text) => PyString::new(py, text).into_any(),
                Err(_) => return false,
            },
            MessageKind::Binary => PyBytes::new(py, payload).into_any(),
        };
        d.enter_callback();
        let result = d
            .callbacks_of(conn.get())
            .on_message
            .bind(py)
            .call1((conn.bind(py), &data));
        let Some(result) = d.settle(result, Some(conn), Then::Reply) else {
            return true;
        };
        match result {
            Ok(reply) if reply.is_none() => {}
            Ok(reply) if reply.is(&data) => {
                let sent = self.send_message(conn.get(), kind, payload);
                self.check_sent(d, conn, sent);
            }
            Ok(reply) => self.send_reply(d, conn, &reply),
            Err(err) => d.callback_failed("on_message", conn, err),
        }
        false
    }

    /// Sends what `on_message` returned: `str` as text, bytes-like as binary.
    fn send_reply(&self, d: &mut Dispatcher<'_>, conn: &Py<Connection>, reply: &Bound<'_, PyAny>) {
        let sent = match reply.cast::<PyString>() {
            Ok(reply) => match reply.to_str() {
                Ok(reply) => self.send_message(conn.get(), MessageKind::Text, reply.as_bytes()),
                Err(err) => return d.callback_failed("sending on_message's reply", conn, err),
            },
            Err(_) => match bytes_of(reply) {
                Ok(reply) => self.send_message(conn.get(), MessageKind::Binary, &reply),
                Err(_) => Err(Error::Type(format!(
                    "pygev: on_message must return str, bytes or None, got {}",
                    type_name(reply)
                ))),
            },
        };
        self.check_sent(d, conn, sent);
    }

    /// A reply the handler got wrong fails its callback; one after the close is dropped.
    fn check_sent(&self, d: &mut Dispatcher<'_>, conn: &Py<Connection>, sent: Result<(), Error>) {
        if let Err(err @ (Error::Type(_) | Error::Value(_))) = sent {
            d.callback_failed("on_message", conn, err.into());
        }
    }

    /// Runs the `on_handshake` hook over a held upgrade request and answers it.
    fn handshake(&self, d: &mut Dispatcher<'_>, conn: &Py<Connection>, request: &UpgradeRequest) {
        let py = d.py();
        let Some(hook) = d
            .callbacks_of(conn.get())
            .on_handshake
            .as_ref()
            .map(|h| h.clone_ref(py))
        else {
            return self.accept(d, conn, request, None, &[]);
        };
        d.enter_callback();
        let answer = Py::new(
            py,
            WebSocketRequest {
                inner: request.clone(),
            },
        )
        .and_then(|r| hook.bind(py).call1((conn.bind(py), r)));
        let then = Then::Hook(HookRequest::Upgrade(Box::new(request.clone())));
        if let Some(answer) = d.settle(answer, Some(conn), then) {
            self.answer(d, conn, request, answer);
        }
    }

    /// Runs the `on_http_request` hook over a held plain request; its answer goes out and
    /// the connection closes.
    fn http_request(
        &self,
        d: &mut Dispatcher<'_>,
        conn: &Py<Connection>,
        request: Box<HttpRequest>,
    ) {
        let py = d.py();
        let hook = d
            .callbacks_of(conn.get())
            .on_http_request
            .as_ref()
            .map(|h| h.clone_ref(py));
        let Some(hook) = hook else {
            return answer_and_close(conn, &request.refusal.response());
        };
        d.enter_callback();
        let asked = Py::new(
            py,
            PyHttpRequest {
                inner: (*request).clone(),
            },
        )
        .and_then(|r| hook.bind(py).call1((conn.bind(py), r)));
        let then = Then::Hook(HookRequest::Http(request.clone()));
        if let Some(answer) = d.settle(asked, Some(conn), then) {
            self.http_answer(d, conn, &request, answer);
        }
    }

    /// Sends what `on_http_request` answered, then closes (nothing once the connection
    /// is over: the hook closed it, or the peer went while it awaited).
    fn http_answer(
        &self,
        d: &mut Dispatcher<'_>,
        conn: &Py<Connection>,
        request: &HttpRequest,
        answer: PyResult<Bound<'_, PyAny>>,
    ) {
        if conn.get().is_over() {
            return;
        }
        match answer.and_then(|answer| response_of(&answer, request)) {
            Ok(response) => answer_and_close(conn, &response),
            Err(err) => {
                d.report("on_http_request", conn, &err);
                refuse(conn, 500, "Internal Server Error");
                d.maybe_stop(err);
            }
        }
    }

    /// Accepts or refuses the upgrade as `on_handshake` answered (nothing once the
    /// connection is over: the hook closed it, or the peer went while it awaited).
    fn answer(
        &self,
        d: &mut Dispatcher<'_>,
        conn: &Py<Connection>,
        request: &UpgradeRequest,
        answer: PyResult<Bound<'_, PyAny>>,
    ) {
        if conn.get().is_over() {
            return;
        }
        match answer.and_then(|answer| answer_of(&answer)) {
            Ok(Answer::Accept(protocol, extra)) => {
                match handshake::check_choice(request, protocol.as_deref(), &extra) {
                    Ok(()) => self.accept(d, conn, request, protocol.as_deref(), &extra),
                    Err(reason) => {
                        log::error!(
                            "pygev: on_handshake's answer for connection {} is invalid: {reason}",
                            conn.get().id_value()
                        );
                        refuse(conn, 500, "Internal Server Error");
                    }
                }
            }
            Ok(Answer::Reject(status, reason)) => refuse(conn, status, &reason),
            Err(err) => {
                d.report("on_handshake", conn, &err);
                refuse(conn, 500, "Internal Server Error");
                d.maybe_stop(err);
            }
        }
    }

    fn accept(
        &self,
        d: &mut Dispatcher<'_>,
        conn: &Py<Connection>,
        request: &UpgradeRequest,
        protocol: Option<&str>,
        extra: &[(String, String)],
    ) {
        if conn.get().is_closed() {
            return; // the hook closed it: no handshake, no callbacks
        }
        let Side::Server(ws) = &self.side else {
            return; // a client's upgrade is its loop's
        };
        let (response, agreed) = ws.answer(request, protocol, extra);
        // Posted now, not with the batch: once the connection is open, another thread may
        // send on it, and that must not overtake the 101.
        if conn
            .get()
            .post_control(Control::Accept(response), true)
            .is_err()
        {
            return; // the server stops
        }
        Self::set_open(conn.get(), agreed.is_some());
        d.connected(conn);
    }
}

impl Mode for WebSocketMode {
    fn loop_protocol(&self) -> Arc<dyn Protocol> {
        match &self.side {
            Side::Server(ws) => ws.clone(),
            Side::Client(client) => client.framing.clone(),
        }
    }

    fn send(&self, conn: &Bound<'_, Connection>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Ok(text) = data.cast::<PyString>() {
            let text = text.to_str()?.as_bytes();
            return Ok(self.send_message(conn.get(), MessageKind::Text, text)?);
        }
        let data = bytes_of(data)?;
        Ok(self.send_message(conn.get(), MessageKind::Binary, &data)?)
    }

    fn on_message(
        &self,
        d: &mut Dispatcher<'_>,
        conn: &Py<Connection>,
        frame: Frame<'_>,
        kind: MessageKind,
    ) -> bool {
        if conn.get().is_closed() {
            return false;
        }
        let awaits = self.message(d, conn, kind, frame.bytes());
        if let Frame::Owned(data) = frame {
            // Copied into Python already: the loop frames its next reads into it.
            d.give_back(conn.get().loop_index, data);
        }
        awaits
    }

    fn reply(&self, d: &mut Dispatcher<'_>, conn: &Py<Connection>, value: Bound<'_, PyAny>) {
        self.send_reply(d, conn, &value);
    }

    fn answered(
        &self,
        d: &mut Dispatcher<'_>,
        conn: &Py<Connection>,
        request: &HookRequest,
        answer: PyResult<Bound<'_, PyAny>>,
    ) {
        match request {
            HookRequest::Upgrade(request) => self.answer(d, conn, request, answer),
            HookRequest::Http(request) => self.http_answer(d, conn, request, answer),
        }
    }

    fn on_signal(&self, d: &mut Dispatcher<'_>, conn: &Py<Connection>, signal: Signal) {
        if conn.get().is_closed() {
            return;
        }
        match signal {
            Signal::Opened { compressed, answer } => {
                let dial = match &self.side {
                    Side::Server(_) => None,
                    Side::Client(client) => {
                        if let Some(answer) = answer {
                            let _ = client.answer.set(answer);
                        }
                        match d.claim_dial(conn) {
                            Some(dial) => Some(dial),
                            None => return, // cancelled: closed without callbacks
                        }
                    }
                };
                // Open before the future resolves: whoever it wakes may send at once.
                Self::set_open(conn.get(), compressed);
                if let Some(dial) = dial {
                    dial::resolve(d.py(), &dial, conn.bind(d.py()).as_any());
                }
                d.connected(conn);
            }
            Signal::Upgrade(request) => self.handshake(d, conn, &request),
            Signal::HttpRequest(request) => self.http_request(d, conn, request),
            Signal::HandshakeFailed(failure) => {
                if let Side::Client(client) = &self.side {
                    let error = errors::handshake_failed(d.py(), &client.url, &failure);
                    d.dial_failed(conn, error);
                }
            }
            Signal::Ending { close } => {
                // Our close frame goes after the replies already queued, made by the loop
                // (which then refuses anything more).
                if let Some(close) = close {
                    let _ = conn.get().post_control(Control::Close(close), false);
                }
                conn.get().request_close();
            }
        }
    }

    fn greets_at_open(&self) -> bool {
        false // once the handshake completed
    }

    fn farewell_due(&self, conn: &Connection) -> bool {
        Self::opened(conn)
    }

    fn has_handshake(&self) -> bool {
        matches!(self.side, Side::Server(_))
    }

    fn subprotocol(&self) -> Option<&str> {
        self.servers_answer()?.protocol.as_deref()
    }

    fn response_headers(&self) -> Option<&[(String, String)]> {
        Some(&self.servers_answer()?.headers)
    }

    fn close(&self, conn: &Connection, code: i64, reason: &str) -> Result<(), Error> {
        if !Self::opened(conn) {
            return Ok(());
        }
        let Some(code) = u16::try_from(code)
            .ok()
            .filter(|c| frames::sendable_close_code(*c))
        else {
            return Err(Error::Value(format!(
                "pygev: {code} is not a close code one may send (1000-1003, 1007-1014, \
                 3000-4999)"
            )));
        };
        if reason.len() > 123 {
            return Err(Error::Value(format!(
                "pygev: a close reason holds at most 123 bytes of UTF-8, got {}",
                reason.len()
            )));
        }
        self.say_goodbye(conn, code, reason);
        Ok(())
    }

    fn say_goodbye(&self, conn: &Connection, code: u16, reason: &str) -> bool {
        if Self::opened(conn) && conn.writable().is_ok() {
            let _ = conn.post_control(Control::Close(frames::close_payload(code, reason)), false);
        }
        true
    }

    fn check_shutdown_write(&self) -> Result<(), Error> {
        Err(Error::Type(
            "pygev: a WebSocket connection ends with close(code, reason), not shutdown_write()"
                .into(),
        ))
    }

    fn ping(&self, conn: &Connection, payload: &[u8]) -> Result<(), Error> {
        if payload.len() > 125 {
            return Err(Error::Value(format!(
                "pygev: a ping carries at most 125 bytes, got {}",
                payload.len()
            )));
        }
        conn.writable()?;
        if !Self::opened(conn) {
            return Err(Error::State(format!(
                "pygev: connection {}: the WebSocket handshake is not complete",
                conn.id_value()
            )));
        }
        self.post_frame(conn, opcode::PING, payload)
    }

    fn check_dial(&self) -> Result<(), Error> {
        match self.side {
            Side::Client(_) => Ok(()),
            Side::Server(_) => Err(Error::Value(
                "pygev: a WebSocket connection is dialed with a ws:// or wss:// URL".into(),
            )),
        }
    }
}

/// Refuses the upgrade with `status` and closes.
fn refuse(conn: &Py<Connection>, status: u16, reason: &str) {
    answer_and_close(conn, &handshake::error_response(status, reason));
}

/// Writes a complete HTTP response, then closes.
fn answer_and_close(conn: &Py<Connection>, response: &[u8]) {
    let _ = conn
        .get()
        .post_frame(response.len(), |out| out.extend_from_slice(response));
    conn.get().request_close();
}

/// How `on_handshake` answered.
enum Answer {
    /// The subprotocol and extra header fields.
    Accept(Option<String>, Vec<(String, String)>),
    /// The HTTP status and reason.
    Reject(u16, String),
}

/// What `on_handshake` returned: `None`, `pygev.Accept(...)` or `pygev.Reject(...)`.
fn answer_of(answer: &Bound<'_, PyAny>) -> PyResult<Answer> {
    if answer.is_none() {
        return Ok(Answer::Accept(None, Vec::new()));
    }
    let classes = crate::package::classes(answer.py())?;
    if answer.is_instance(classes.accept.bind(answer.py()))? {
        let protocol: Option<String> = answer.getattr("subprotocol")?.extract()?;
        let headers: Vec<(String, String)> = answer.getattr("headers")?.extract()?;
        return Ok(Answer::Accept(protocol, headers));
    }
    if answer.is_instance(classes.reject.bind(answer.py()))? {
        let status: u16 = answer.getattr("status")?.extract()?;
        let reason: String = answer.getattr("reason")?.extract()?;
        if !(400..=599).contains(&status) || !handshake::header_safe(&reason) {
            return Err(PyValueError::new_err(format!(
                "pygev: Reject needs a status of 400 to 599 and a one-line reason, got \
                 {status} {reason:?}"
            )));
        }
        return Ok(Answer::Reject(status, reason));
    }
    Err(PyTypeError::new_err(format!(
        "pygev: on_handshake must return None, pygev.Accept(...) or pygev.Reject(...), got {}",
        type_name(answer)
    )))
}

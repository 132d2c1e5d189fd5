//! The WebSocket mode: the handshake's outcome, the hook, and whole messages as `str` or
//! `bytes`.

use pygev_core::websocket::handshake::{self, Limits, UpgradeRequest};
use pygev_core::websocket::tag;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use super::{type_name, Dispatcher};
use crate::connection::{bytes_of, Connection};
use crate::errors::Error;
use crate::websocket::WebSocketRequest;

impl<'py> Dispatcher<'py> {
    /// One tagged item from a WebSocket connection's loop: the handshake's outcome or a
    /// whole message.
    pub(super) fn on_ws_frame(&mut self, conn: &Py<Connection>, frame: &[u8]) {
        if conn.get().is_closed() {
            return;
        }
        let Some((&kind, payload)) = frame.split_first() else {
            return;
        };
        match kind {
            tag::OPEN => {
                conn.get().set_ws_open(payload == [1]);
                self.connected(conn);
            }
            tag::HANDSHAKE => self.ws_handshake(conn, payload),
            tag::END => {
                // Our close frame goes after the replies already queued, packed by the loop
                // (which then refuses anything more).
                if let Some((&1, close)) = payload.split_first() {
                    let _ = conn.get().post_tagged(tag::CLOSE, close);
                }
                conn.get().request_close();
            }
            tag::TEXT | tag::BINARY => self.ws_message(conn, kind == tag::TEXT, payload),
            _ => {}
        }
    }

    /// Calls `on_message(conn, data)` with `str` (text) or `bytes` (binary) and sends what
    /// it returns.
    fn ws_message(&mut self, conn: &Py<Connection>, text: bool, payload: &[u8]) {
        let py = self.py;
        let data = if text {
            // The loop checked the text (RFC 6455: failing the connection with 1007).
            match std::str::from_utf8(payload) {
                Ok(text) => PyString::new(py, text).into_any(),
                Err(_) => return,
            }
        } else {
            PyBytes::new(py, payload).into_any()
        };
        let result = self
            .callbacks_of(conn.get())
            .on_message
            .bind(py)
            .call1((conn.bind(py), &data));
        let sent = match result {
            Ok(reply) if reply.is_none() => return,
            Ok(reply) if reply.is(&data) => conn.get().send_ws(text, payload),
            Ok(reply) => match reply.cast::<PyString>() {
                Ok(reply) => match reply.to_str() {
                    Ok(reply) => conn.get().send_ws(true, reply.as_bytes()),
                    Err(err) => {
                        return self.callback_failed("sending on_message's reply", conn, err)
                    }
                },
                Err(_) => match bytes_of(&reply) {
                    Ok(reply) => conn.get().send_ws(false, &reply),
                    Err(_) => Err(Error::Type(format!(
                        "pygev: on_message must return str, bytes or None, got {}",
                        type_name(&reply)
                    ))),
                },
            },
            Err(err) => return self.callback_failed("on_message", conn, err),
        };
        if let Err(err @ (Error::Type(_) | Error::Value(_))) = sent {
            self.callback_failed("on_message", conn, err.into());
        }
    }

    /// Runs the `on_handshake` hook over a held upgrade request and answers it.
    fn ws_handshake(&mut self, conn: &Py<Connection>, raw: &[u8]) {
        let py = self.py;
        let Some(ws) = self.shared.websocket.clone() else {
            return;
        };
        let limits = Limits {
            max_request_size: usize::MAX,
            max_headers: ws.settings().limits.max_headers,
        };
        let Ok(Some((request, _))) = handshake::parse(raw, &limits) else {
            log::error!("pygev: a held upgrade request no longer parses (a bug)");
            return conn.get().request_close();
        };
        let Some(hook) = self
            .callbacks_of(conn.get())
            .on_handshake
            .as_ref()
            .map(|h| h.clone_ref(py))
        else {
            return self.ws_accept(conn, &ws, &request, None, &[]);
        };
        let answer = Py::new(
            py,
            WebSocketRequest {
                inner: request.clone(),
            },
        )
        .and_then(|r| hook.call1(py, (conn.clone_ref(py), r)))
        .and_then(|answer| self.ws_answer(answer.bind(py)));
        match answer {
            Ok(Answer::Accept(protocol, extra)) => {
                match handshake::check_choice(&request, protocol.as_deref(), &extra) {
                    Ok(()) => self.ws_accept(conn, &ws, &request, protocol.as_deref(), &extra),
                    Err(reason) => {
                        log::error!(
                            "pygev: on_handshake's answer for connection {} is invalid: {reason}",
                            conn.get().id_value()
                        );
                        self.ws_refuse(conn, 500, "Internal Server Error");
                    }
                }
            }
            Ok(Answer::Reject(status, reason)) => self.ws_refuse(conn, status, &reason),
            Err(err) => {
                self.report("on_handshake", conn, &err);
                self.ws_refuse(conn, 500, "Internal Server Error");
                self.maybe_stop(err);
            }
        }
    }

    /// What `on_handshake` returned: `None`, `pygev.Accept(...)` or `pygev.Reject(...)`.
    fn ws_answer(&self, answer: &Bound<'py, PyAny>) -> PyResult<Answer> {
        if answer.is_none() {
            return Ok(Answer::Accept(None, Vec::new()));
        }
        let module = self.py.import("pygev._websocket")?;
        if answer.is_instance(&module.getattr("Accept")?)? {
            let protocol: Option<String> = answer.getattr("subprotocol")?.extract()?;
            let headers: Vec<(String, String)> = answer.getattr("headers")?.extract()?;
            return Ok(Answer::Accept(protocol, headers));
        }
        if answer.is_instance(&module.getattr("Reject")?)? {
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

    fn ws_accept(
        &mut self,
        conn: &Py<Connection>,
        ws: &pygev_core::websocket::WebSocket,
        request: &UpgradeRequest,
        protocol: Option<&str>,
        extra: &[(String, String)],
    ) {
        if conn.get().is_closed() {
            return; // the hook closed it: no handshake, no callbacks
        }
        let (response, agreed) = ws.answer(request, protocol, extra);
        // Posted now, not with the batch: once the connection is open, another thread may
        // send on it, and that must not overtake the 101.
        if conn.get().post_tagged_now(tag::ACCEPT, &response).is_err() {
            return; // the server stops
        }
        conn.get().set_ws_open(agreed.is_some());
        self.connected(conn);
    }

    fn ws_refuse(&mut self, conn: &Py<Connection>, status: u16, reason: &str) {
        let response = handshake::error_response(status, reason);
        let _ = conn
            .get()
            .post_frame(response.len(), |out| out.extend_from_slice(&response));
        conn.get().request_close();
    }
}

/// How `on_handshake` answered.
enum Answer {
    /// The subprotocol and extra header fields.
    Accept(Option<String>, Vec<(String, String)>),
    /// The HTTP status and reason.
    Reject(u16, String),
}

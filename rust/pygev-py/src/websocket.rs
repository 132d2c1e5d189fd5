//! `pygev.WebSocket` (the framing's settings) and `pygev.WebSocketRequest` (what the
//! `on_handshake` hook sees).

use std::sync::Arc;
use std::time::Duration;

use pygev_core::websocket::handshake::{Limits, UpgradeRequest};
use pygev_core::websocket::{deflate, Settings};
use pyo3::prelude::*;

use crate::errors::Error;

/// WebSocket (RFC 6455) with permessage-deflate (RFC 7692), run in the loop threads: give it
/// as `protocol=` with a `pygev.WebSocketHandler`.
#[pyclass(module = "pygev._pygev", frozen)]
pub struct WebSocket {
    pub(crate) settings: Settings,
}

/// The parser allocates room for `max_headers` fields on every attempt: keep it modest.
const MAX_HEADERS: usize = 1024;

fn window_bits(name: &str, bits: u8) -> Result<u8, Error> {
    if (9..=15).contains(&bits) {
        Ok(bits)
    } else {
        Err(Error::Value(format!(
            "pygev: {name} must be 9 to 15, got {bits}"
        )))
    }
}

fn duration(name: &str, seconds: f64) -> Result<Duration, Error> {
    if seconds.is_finite() && seconds > 0.0 && seconds <= 1e9 {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(Error::Value(format!(
            "pygev: {name} must be a positive number of seconds, got {seconds}"
        )))
    }
}

#[pymethods]
impl WebSocket {
    #[new]
    #[pyo3(signature = (
        *,
        max_message_size = 16 << 20,
        compression = true,
        compression_threshold = 64,
        server_no_context_takeover = false,
        client_no_context_takeover = false,
        server_max_window_bits = 15,
        client_max_window_bits = 12,
        max_request_size = 8 << 10,
        max_headers = 64,
        ping_interval = Some(20.0),
        ping_timeout = 20.0,
        handshake_timeout = 10.0,
    ), text_signature = "(*, max_message_size=16777216, compression=True, \
        compression_threshold=64, server_no_context_takeover=False, \
        client_no_context_takeover=False, server_max_window_bits=15, \
        client_max_window_bits=12, max_request_size=8192, max_headers=64, \
        ping_interval=20.0, ping_timeout=20.0, handshake_timeout=10.0)")]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        max_message_size: usize,
        compression: bool,
        compression_threshold: usize,
        server_no_context_takeover: bool,
        client_no_context_takeover: bool,
        server_max_window_bits: u8,
        client_max_window_bits: u8,
        max_request_size: usize,
        max_headers: usize,
        ping_interval: Option<f64>,
        ping_timeout: f64,
        handshake_timeout: f64,
    ) -> Result<Self, Error> {
        if max_message_size == 0 || max_request_size == 0 || max_headers == 0 {
            return Err(Error::Value(
                "pygev: max_message_size, max_request_size and max_headers must be positive".into(),
            ));
        }
        if max_headers > MAX_HEADERS {
            return Err(Error::Value(format!(
                "pygev: max_headers is at most {MAX_HEADERS}, got {max_headers}"
            )));
        }
        let settings = Settings {
            max_message_size,
            limits: Limits {
                max_request_size,
                max_headers,
            },
            deflate: deflate::Settings {
                enabled: compression,
                server_no_context_takeover,
                client_no_context_takeover,
                server_max_window_bits: window_bits(
                    "server_max_window_bits",
                    server_max_window_bits,
                )?,
                client_max_window_bits: window_bits(
                    "client_max_window_bits",
                    client_max_window_bits,
                )?,
                threshold: compression_threshold,
            },
            handshake_hook: false,
            http_hook: false,
            ping_interval: ping_interval
                .map(|s| duration("ping_interval", s))
                .transpose()?,
            ping_timeout: duration("ping_timeout", ping_timeout)?,
            handshake_timeout: duration("handshake_timeout", handshake_timeout)?,
        };
        Ok(WebSocket { settings })
    }

    /// The largest message accepted, in bytes.
    #[getter]
    fn max_message_size(&self) -> usize {
        self.settings.max_message_size
    }

    /// Seconds of silence after which a client is pinged (`None`: never).
    #[getter]
    fn ping_interval(&self) -> Option<f64> {
        self.settings.ping_interval.map(|d| d.as_secs_f64())
    }

    /// Seconds a pinged client may stay silent before it is closed (1011).
    #[getter]
    fn ping_timeout(&self) -> f64 {
        self.settings.ping_timeout.as_secs_f64()
    }

    /// Whether permessage-deflate is offered to clients that ask for it.
    #[getter]
    fn compression(&self) -> bool {
        self.settings.deflate.enabled
    }

    fn __repr__(&self) -> String {
        let s = &self.settings;
        format!(
            "pygev.WebSocket(max_message_size={}, compression={}, ping_interval={:?})",
            s.max_message_size,
            if s.deflate.enabled { "True" } else { "False" },
            s.ping_interval.map(|d| d.as_secs_f64())
        )
    }
}

impl WebSocket {
    /// The framing the loops run, with or without the hooks for upgrade requests and for
    /// plain HTTP requests.
    pub(crate) fn core(
        &self,
        handshake_hook: bool,
        http_hook: bool,
    ) -> Arc<pygev_core::websocket::WebSocket> {
        Arc::new(pygev_core::websocket::WebSocket::new(Settings {
            handshake_hook,
            http_hook,
            ..self.settings.clone()
        }))
    }
}

/// A client's upgrade request, as the `on_handshake` hook sees it.
#[pyclass(module = "pygev._pygev", frozen)]
pub struct WebSocketRequest {
    pub(crate) inner: UpgradeRequest,
}

#[pymethods]
impl WebSocketRequest {
    /// The request target's path, e.g. `"/chat"`.
    #[getter]
    fn path(&self) -> &str {
        &self.inner.path
    }

    /// What follows `?` in the request target, or `None`.
    #[getter]
    fn query(&self) -> Option<&str> {
        self.inner.query.as_deref()
    }

    /// Every header field in order, as `(name, value)` with lower-case names.
    #[getter]
    fn headers(&self) -> Vec<(String, String)> {
        self.inner.headers.clone()
    }

    /// The `Origin` header, or `None`.
    #[getter]
    fn origin(&self) -> Option<&str> {
        self.inner.origin.as_deref()
    }

    /// The subprotocols the client offered, in its order of preference.
    #[getter]
    fn subprotocols(&self) -> Vec<String> {
        self.inner.protocols.clone()
    }

    /// The value of header `name` (any case), or `default` if absent; several fields of
    /// that name are joined with `", "`.
    #[pyo3(signature = (name, default = None))]
    fn header(&self, name: &str, default: Option<String>) -> Option<String> {
        crate::http_request::header_of(&self.inner.headers, name, default)
    }

    fn __repr__(&self) -> String {
        format!(
            "<pygev.WebSocketRequest path={:?} origin={:?} subprotocols={:?}>",
            self.inner.path, self.inner.origin, self.inner.protocols
        )
    }
}

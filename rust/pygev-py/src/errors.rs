//! Where Rust errors become Python exceptions: the one place that decides which.

use std::io;

use pygev_core::websocket::client_handshake::{HandshakeFailure, Refused};
use pyo3::exceptions::{PyConnectionError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

pyo3::create_exception!(
    _pygev,
    ConnectionClosed,
    PyConnectionError,
    "Raised when sending on (or shutting down) a connection that is closed."
);

pyo3::create_exception!(
    _pygev,
    WebSocketHandshakeError,
    PyConnectionError,
    "A WebSocket client's handshake failed: the server refused it (any status but 101; \
     `status`, `reason`, `headers`, `body` and a redirect's `location` say how) or answered \
     it wrongly (`status` is None; the message says why)."
);

/// Errors of the binding, turned into Python exceptions only at the boundary.
#[derive(Debug)]
pub(crate) enum Error {
    /// A bad argument value (`ValueError`).
    Value(String),
    /// A bad argument type (`TypeError`).
    Type(String),
    /// The call does not fit the server's state (`RuntimeError`).
    State(String),
    /// The connection is closed (`pygev.ConnectionClosed`).
    Closed(String),
    /// A system error (`OSError` with its errno), or `ValueError` for invalid input.
    Io(io::Error),
    /// A system error with our own message (`OSError(errno, message)`).
    Os(Option<i32>, String),
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        Error::Io(err)
    }
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match err {
            Error::Value(msg) => PyValueError::new_err(msg),
            Error::Type(msg) => PyTypeError::new_err(msg),
            Error::State(msg) => PyRuntimeError::new_err(msg),
            Error::Closed(msg) => ConnectionClosed::new_err(msg),
            Error::Io(err) if err.kind() == io::ErrorKind::InvalidInput => {
                PyValueError::new_err(err.to_string())
            }
            Error::Os(Some(errno), msg) => PyOSError::new_err((errno, msg)),
            Error::Os(None, msg) => PyOSError::new_err(msg),
            Error::Io(err) => match err.raw_os_error() {
                Some(errno) => PyOSError::new_err((errno, err.to_string())),
                None => PyOSError::new_err(err.to_string()),
            },
        }
    }
}

/// The exception a WebSocket dial's future fails with when the handshake did:
/// `TimeoutError`, or `pygev.WebSocketHandshakeError` with the refusal's status, reason,
/// headers, body and redirect target (or why the answer is invalid). `url` is the dialed
/// URL as it may be shown (no query).
pub(crate) fn handshake_failed(py: Python<'_>, url: &str, failure: &HandshakeFailure) -> PyErr {
    match failure {
        HandshakeFailure::TimedOut(timeout) => Error::Os(
            Some(libc::ETIMEDOUT),
            format!("pygev: {url} did not answer the WebSocket handshake within {timeout:?}"),
        )
        .into(),
        HandshakeFailure::Invalid(reason) => handshake_error(
            py,
            format!("pygev: {url} answered the WebSocket handshake wrongly: {reason}"),
            None,
            b"",
        ),
        HandshakeFailure::Refused { refused, body } => {
            let redirect = (refused.location.as_ref())
                .map(|l| format!(" (redirected to {l}, not followed)"))
                .unwrap_or_default();
            let message = format!(
                "pygev: {url} refused the WebSocket handshake: {} {}{redirect}",
                refused.status, refused.reason
            );
            handshake_error(py, message, Some(refused), body)
        }
    }
}

/// `pygev.WebSocketHandshakeError` for a connection that closed before any answer.
pub(crate) fn handshake_closed(py: Python<'_>, reason: &str) -> PyErr {
    handshake_error(py, format!("pygev: {reason}"), None, b"")
}

/// `pygev.WebSocketHandshakeError(message)` with every attribute set (those of `refused`,
/// or none).
fn handshake_error(
    py: Python<'_>,
    message: String,
    refused: Option<&Refused>,
    body: &[u8],
) -> PyErr {
    let err = WebSocketHandshakeError::new_err(message);
    let value = err.value(py);
    let set = || -> PyResult<()> {
        value.setattr("status", refused.map(|r| r.status))?;
        value.setattr("reason", refused.map(|r| r.reason.as_str()))?;
        let headers = refused.map(|r| r.headers.clone()).unwrap_or_default();
        value.setattr("headers", headers)?;
        value.setattr("body", PyBytes::new(py, body))?;
        value.setattr("location", refused.and_then(|r| r.location.as_deref()))?;
        Ok(())
    };
    match set() {
        Ok(()) => err,
        Err(failed) => failed,
    }
}

//! Where Rust errors become Python exceptions: the one place that decides which.

use std::io;

use pyo3::exceptions::{PyConnectionError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

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

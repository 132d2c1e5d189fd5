//! What the Python package hands the compiled module when it is imported: the classes
//! written in Python that the binding must recognise (`pygev.Protocol`,
//! `pygev.WebSocketHandler`, `pygev.Accept`, `pygev.Reject`, `pygev.Response`) and the helper that lets an
//! `async def` callback go on in an asyncio task. Rust never imports the package's modules
//! itself.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::errors::Error;

/// The package's classes, set once by `pygev/__init__.py`.
pub(crate) struct Classes {
    pub(crate) protocol: Py<PyType>,
    pub(crate) websocket_handler: Py<PyType>,
    pub(crate) accept: Py<PyType>,
    pub(crate) reject: Py<PyType>,
    pub(crate) response: Py<PyType>,
    /// `pygev._awaiting._Resumed(coro, waiting)`: a callback's coroutine, whose first step
    /// ran here, as something an asyncio task can run on.
    pub(crate) resume: Py<PyAny>,
    /// `pygev._awaiting._wake(future, outcome)`: settles a `drain()` future in its loop.
    pub(crate) wake: Py<PyAny>,
    /// `pygev._awaiting._READY`: what `drain()` returns when there is nothing to wait for.
    pub(crate) ready: Py<PyAny>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

/// The package's classes; an error when `pygev._pygev` was imported without `pygev`.
pub(crate) fn classes(py: Python<'_>) -> Result<&Classes, Error> {
    CLASSES.get(py).ok_or_else(|| {
        Error::State("pygev: import pygev, not pygev._pygev alone (its classes are missing)".into())
    })
}

/// Called once by `pygev/__init__.py` with the classes the binding recognises.
#[pyfunction]
#[allow(clippy::too_many_arguments)] // keyword-only, one per class
#[pyo3(signature = (*, protocol, websocket_handler, accept, reject, response, resume, wake, ready))]
pub(crate) fn _register_classes(
    py: Python<'_>,
    protocol: Py<PyType>,
    websocket_handler: Py<PyType>,
    accept: Py<PyType>,
    reject: Py<PyType>,
    response: Py<PyType>,
    resume: Py<PyAny>,
    wake: Py<PyAny>,
    ready: Py<PyAny>,
) -> PyResult<()> {
    let classes = Classes {
        protocol,
        websocket_handler,
        accept,
        reject,
        response,
        resume,
        wake,
        ready,
    };
    if CLASSES.set(py, classes).is_err() {
        return Err(
            Error::State("pygev: the package's classes are registered already".into()).into(),
        );
    }
    Ok(())
}

//! Stepping a coroutine by hand, as an asyncio task's step does: in a context of its own,
//! one `send(None)` through CPython's C API (no Python-level method call per step).

use pyo3::ffi;
use pyo3::prelude::*;

/// A copy of the current context (`contextvars.copy_context()`): each coroutine runs in
/// one of its own, as a task does.
pub(super) fn copy_context(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: the GIL is held (`py`); it returns a new reference, or NULL with an
    // exception set, which `from_owned_ptr_or_err` takes either way.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()) }
}

/// How a coroutine's step ended.
pub(super) enum Sent<'py> {
    Returned(Bound<'py, PyAny>),
    /// It waits for this (a future, or `None` for a bare yield).
    Waits(Bound<'py, PyAny>),
}

/// Sends `None` into `coro` (exactly a `types.CoroutineType`) inside `context`, as a
/// task's step does.
pub(super) fn send_none<'py>(
    context: &Bound<'py, PyAny>,
    coro: &Bound<'py, PyAny>,
) -> PyResult<Sent<'py>> {
    let py = coro.py();
    // SAFETY: `context` is a live `contextvars.Context` (from `copy_context()`), entered on
    // this thread and exited below before returning.
    if unsafe { ffi::PyContext_Enter(context.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    let mut result = std::ptr::null_mut();
    // SAFETY: `coro` is a live object whose type is exactly `types.CoroutineType` (the
    // caller compared it), which implements `am_send`; `Py_None` is a valid argument;
    // `result` receives a new reference, or stays NULL when the step raised.
    let sent = unsafe { ffi::PyIter_Send(coro.as_ptr(), ffi::Py_None(), &mut result) };
    let outcome = match sent {
        ffi::PySendResult::PYGEN_ERROR => Err(PyErr::fetch(py)),
        ffi::PySendResult::PYGEN_RETURN | ffi::PySendResult::PYGEN_NEXT => {
            // SAFETY: a new reference, non-NULL when the step returned or yielded: owned
            // from here.
            let value = unsafe { Bound::from_owned_ptr(py, result) };
            Ok(match sent {
                ffi::PySendResult::PYGEN_RETURN => Sent::Returned(value),
                _ => Sent::Waits(value),
            })
        }
    };
    // SAFETY: exits the context entered above, on the same thread.
    if unsafe { ffi::PyContext_Exit(context.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    outcome
}

//! Bytes-like Python objects as bytes: `bytes` borrowed, the other buffers copied; and
//! the bytes a Python framing's `packet()` returns.

use std::borrow::Cow;

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};

use crate::connection::Connection;
use crate::errors::Error;

/// Frames `data` with the Python protocol's `packet(conn, data)`: `Err` if it raised,
/// `Ok(Err)` (a `TypeError`) if it returned something that is not bytes-like.
pub(crate) fn packet(
    protocol: &Bound<'_, PyAny>,
    conn: &Bound<'_, Connection>,
    data: &Bound<'_, PyAny>,
) -> PyResult<Result<Vec<u8>, Error>> {
    let wire = protocol.call_method1("packet", (conn, data))?;
    Ok(bytes_of(&wire).map(Cow::into_owned).map_err(|_| {
        Error::Type(format!(
            "pygev: Protocol.packet() must return bytes, bytearray or memoryview, got {}",
            wire.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "?".into())
        ))
    }))
}

/// The bytes of a bytes-like object (bytes, bytearray, memoryview, any C-contiguous
/// buffer): `bytes` borrowed (immutable, and alive while the caller holds it), the others
/// copied (they may change).
pub(crate) fn bytes_of<'a>(data: &'a Bound<'_, PyAny>) -> Result<Cow<'a, [u8]>, Error> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(bytes.as_bytes()));
    }
    if let Ok(array) = data.cast::<PyByteArray>() {
        return Ok(Cow::Owned(array.to_vec()));
    }
    if let Ok(buffer) = PyBuffer::<u8>::get(data) {
        return buffer
            .to_vec(data.py())
            .map(Cow::Owned)
            .map_err(|e| Error::Type(format!("pygev: cannot read buffer: {e}")));
    }
    Err(Error::Type(format!(
        "pygev: expected bytes, bytearray or memoryview, got {}",
        data.get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into())
    )))
}

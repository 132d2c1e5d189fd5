//! Addresses between Python and the core: what users pass (`"host:port"`, `"unix:/path"`,
//! `"unix:@name"`, or the `(host, port)` tuple asyncio and `server.address` use) and what
//! they get back (`(host, port)` for internet addresses, the `"unix:..."` text otherwise).

use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use pygev_core::{Address, Credentials};

use crate::errors::Error;

/// The text form of an address given from Python.
pub(crate) fn address_text(address: &Bound<'_, PyAny>) -> Result<String, Error> {
    if let Ok(text) = address.cast::<PyString>() {
        return Ok(text.to_string());
    }
    if let Ok(tuple) = address.cast::<PyTuple>() {
        // asyncio's IPv6 form (host, port, flowinfo, scope_id) starts the same way.
        if tuple.len() >= 2 {
            if let (Ok(host), Ok(port)) = (
                tuple.get_item(0).and_then(|h| h.extract::<String>()),
                tuple.get_item(1).and_then(|p| p.extract::<u16>()),
            ) {
                return Ok(if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                });
            }
        }
    }
    Err(Error::Type(format!(
        "pygev: an address is \"host:port\", \"unix:/path\", \"unix:@name\" or a (host, port) \
         tuple, got {}",
        address
            .repr()
            .map_or_else(|_| "?".into(), |r| r.to_string())
    )))
}

/// An address for Python: `(host, port)` for internet addresses, `"unix:/path"`,
/// `"unix:@name"` or `"unix:"` (unnamed) for Unix sockets.
pub(crate) fn address_object(py: Python<'_>, address: &Address) -> Py<PyAny> {
    match address {
        Address::Inet(addr) => (addr.ip().to_string(), addr.port())
            .into_pyobject(py)
            .map_or_else(|_| py.None(), |t| t.into_any().unbind()),
        unix => PyString::new(py, &unix.to_string()).into_any().unbind(),
    }
}

/// A Unix peer's credentials for Python: `(pid, uid, gid)`.
pub(crate) fn credentials_tuple(credentials: Credentials) -> (i32, u32, u32) {
    (credentials.pid, credentials.uid, credentials.gid)
}

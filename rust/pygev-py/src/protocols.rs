//! The framings a `Server` accepts as `protocol=`.

use std::sync::Arc;

use pygev_core::plugin::{PluginProtocol, CAPSULE_NAME};
use pygev_core::{ByteOrder, Protocol};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCapsule};

use crate::errors::Error;

/// The default framing: each chunk of bytes read is one message; sent bytes go out as they
/// are.
#[pyclass(module = "pygev._pygev", frozen)]
#[derive(Default)]
pub struct Raw;

#[pymethods]
impl Raw {
    #[new]
    fn py_new() -> Self {
        Raw
    }

    fn __repr__(&self) -> &'static str {
        "pygev.Raw()"
    }
}

/// Default `max_frame_size` of the native framings (capped by a length header's capacity).
const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Frames made of an unsigned length header (1, 2, 4 or 8 bytes) and that many payload
/// bytes. Parsed in the loop threads; handlers see payloads without the header.
#[pyclass(module = "pygev._pygev", frozen)]
pub struct LengthPrefix {
    inner: Arc<pygev_core::LengthPrefix>,
}

#[pymethods]
impl LengthPrefix {
    #[new]
    #[pyo3(signature = (header_size=4, byteorder="big", max_frame_size=None))]
    fn py_new(
        header_size: usize,
        byteorder: &str,
        max_frame_size: Option<usize>,
    ) -> Result<Self, Error> {
        let order = match byteorder {
            "big" => ByteOrder::Big,
            "little" => ByteOrder::Little,
            other => {
                return Err(Error::Value(format!(
                    "pygev: byteorder must be \"big\" or \"little\", got {other:?}"
                )))
            }
        };
        let max_frame_size = match max_frame_size {
            Some(0) => {
                return Err(Error::Value(
                    "pygev: max_frame_size must be positive".into(),
                ))
            }
            Some(n) => n,
            None => match header_size {
                1 | 2 | 4 => {
                    let capacity = (1u64 << (8 * header_size)) - 1;
                    DEFAULT_MAX_FRAME.min(usize::try_from(capacity).unwrap_or(usize::MAX))
                }
                _ => DEFAULT_MAX_FRAME,
            },
        };
        let inner = pygev_core::LengthPrefix::new(header_size, order, max_frame_size)
            .map_err(Error::Value)?;
        Ok(LengthPrefix {
            inner: Arc::new(inner),
        })
    }

    /// The header's size in bytes.
    #[getter]
    fn header_size(&self) -> usize {
        self.inner.header_size()
    }

    /// `"big"` or `"little"`.
    #[getter]
    fn byteorder(&self) -> &'static str {
        match self.inner.byte_order() {
            ByteOrder::Big => "big",
            ByteOrder::Little => "little",
        }
    }

    /// The largest payload accepted from a peer, in bytes.
    #[getter]
    fn max_frame_size(&self) -> usize {
        self.inner.max_frame_size()
    }

    fn __repr__(&self) -> String {
        format!(
            "pygev.LengthPrefix(header_size={}, byteorder={:?}, max_frame_size={})",
            self.header_size(),
            self.byteorder(),
            self.max_frame_size()
        )
    }
}

/// Frames ending with a delimiter of 1 to 16 bytes. Handlers see frames without it; sent
/// payloads get it appended.
#[pyclass(module = "pygev._pygev", frozen)]
pub struct Delimited {
    inner: Arc<pygev_core::Delimited>,
}

#[pymethods]
impl Delimited {
    #[new]
    #[pyo3(
        signature = (delimiter=b"\r\n".as_slice(), max_frame_size=1 << 20),
        text_signature = "(delimiter=b'\\r\\n', max_frame_size=1048576)"
    )]
    fn py_new(delimiter: &[u8], max_frame_size: usize) -> Result<Self, Error> {
        if max_frame_size == 0 {
            return Err(Error::Value(
                "pygev: max_frame_size must be positive".into(),
            ));
        }
        let inner = pygev_core::Delimited::new(delimiter, max_frame_size).map_err(Error::Value)?;
        Ok(Delimited {
            inner: Arc::new(inner),
        })
    }

    /// The delimiter.
    #[getter]
    fn delimiter<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.delimiter())
    }

    /// The largest frame accepted from a peer, delimiter not counted.
    #[getter]
    fn max_frame_size(&self) -> usize {
        self.inner.max_frame_size()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let delimiter = self
            .delimiter(py)
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_default();
        format!(
            "pygev.Delimited({delimiter}, max_frame_size={})",
            self.max_frame_size()
        )
    }
}

/// A server's framing: what the loops run, and the Python `pygev.Protocol`, if any.
pub(crate) type Framing = (Arc<dyn Protocol>, Option<Py<PyAny>>);

/// What a `protocol=` argument means: the framing the loops run, plus the Python
/// `pygev.Protocol` object when the framing is written in Python (then the loops pass raw
/// bytes and the dispatcher runs `unpacket`/`packet`).
pub(crate) fn protocol_from(protocol: Option<&Bound<'_, PyAny>>) -> Result<Framing, Error> {
    let Some(obj) = protocol else {
        return Ok((raw(), None));
    };
    if obj.is_instance_of::<Raw>() {
        return Ok((raw(), None));
    }
    if let Ok(framing) = obj.cast::<LengthPrefix>() {
        return Ok((framing.get().inner.clone(), None));
    }
    if let Ok(framing) = obj.cast::<Delimited>() {
        return Ok((framing.get().inner.clone(), None));
    }
    if let Some(plugin) = plugin_from(obj)? {
        return Ok((Arc::new(plugin), None));
    }
    let base = crate::package::classes(obj.py())?.protocol.bind(obj.py());
    if obj.is_instance(base).unwrap_or(false) {
        return Ok((raw(), Some(obj.clone().unbind())));
    }
    Err(Error::Type(format!(
        "pygev: protocol must be pygev.Raw(), pygev.LengthPrefix(...), pygev.Delimited(...), \
         a pygev.Protocol instance, or a plugin (a \"pygev.protocol\" capsule or an object \
         with __pygev_protocol__()), got {}",
        obj.repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| "?".into())
    )))
}

/// The raw framing: one object for every server and connection, so that the loops'
/// protocol tables share one entry for all raw connections.
pub(crate) fn raw() -> Arc<dyn Protocol> {
    static RAW: std::sync::OnceLock<Arc<dyn Protocol>> = std::sync::OnceLock::new();
    RAW.get_or_init(|| Arc::new(pygev_core::Raw)).clone()
}

/// A Rust plugin's framing: `obj` is a capsule named `"pygev.protocol"`, or an object whose
/// `__pygev_protocol__()` returns one. `None` when `obj` is neither.
fn plugin_from(obj: &Bound<'_, PyAny>) -> Result<Option<PluginProtocol>, Error> {
    let capsule = if let Ok(capsule) = obj.cast::<PyCapsule>() {
        capsule.clone()
    } else if obj.hasattr("__pygev_protocol__").unwrap_or(false) {
        let made = obj
            .call_method0("__pygev_protocol__")
            .map_err(|e| Error::Type(format!("pygev: __pygev_protocol__() raised: {e}")))?;
        made.cast::<PyCapsule>().cloned().map_err(|_| {
            Error::Type(format!(
                "pygev: __pygev_protocol__() must return a \"pygev.protocol\" capsule, got {}",
                made.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| "?".into())
            ))
        })?
    } else {
        return Ok(None);
    };
    let pointer = capsule.pointer_checked(Some(CAPSULE_NAME)).map_err(|_| {
        let name = capsule
            .name()
            .ok()
            .flatten()
            // SAFETY: a capsule's name is a NUL-terminated string it keeps alive.
            .map(|n| unsafe { n.as_cstr() }.to_string_lossy().into_owned());
        Error::Type(format!(
            "pygev: a protocol capsule must be named \"pygev.protocol\", got {name:?}"
        ))
    })?;
    let owner: Box<dyn std::any::Any + Send + Sync> = Box::new(capsule.unbind());
    // SAFETY: a capsule named "pygev.protocol" promises a ProtocolTable (from_table checks
    // its magic, version and size before reading more); the capsule, kept alive by `owner`,
    // owns the table and the plugin module that holds its code.
    unsafe { PluginProtocol::from_table(pointer.as_ptr().cast_const().cast(), owner) }
        .map(Some)
        .map_err(Error::Value)
}

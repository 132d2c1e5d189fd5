//! The framings a `Server` accepts as `protocol=`.

use std::sync::Arc;

use pygev_core::Protocol;
use pyo3::prelude::*;

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

/// The core protocol for a `protocol=` argument (`None` means raw).
pub(crate) fn protocol_from(
    protocol: Option<&Bound<'_, PyAny>>,
) -> Result<Arc<dyn Protocol>, Error> {
    match protocol {
        None => Ok(Arc::new(pygev_core::Raw)),
        Some(obj) if obj.is_instance_of::<Raw>() => Ok(Arc::new(pygev_core::Raw)),
        Some(obj) => Err(Error::Type(format!(
            "pygev: protocol must be pygev.Raw(), got {}",
            obj.repr()
                .map(|r| r.to_string())
                .unwrap_or_else(|_| "?".into())
        ))),
    }
}

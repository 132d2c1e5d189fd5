//! A length-prefix framing built as a *plugin*: the same C ABI a third-party extension
//! exports (`pygev_plugin::table`), compiled into pygev so that tests and benchmarks can
//! run the built-in `LengthPrefix` and its plugin twin side by side (ABI parity).
//! Exposed as `pygev._pygev._length_prefix_plugin(...)`, which returns the capsule.

use pygev_plugin::reference::LengthPrefix;
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

use crate::errors::Error;

/// The capsule of a length-prefix framing built as a plugin (tests and benchmarks).
#[pyfunction]
#[pyo3(
    signature = (header_size=4, byteorder="big", max_frame_size=16 << 20, panic_on=None),
    text_signature = "(header_size=4, byteorder='big', max_frame_size=16777216, panic_on=None)"
)]
pub fn _length_prefix_plugin<'py>(
    py: Python<'py>,
    header_size: usize,
    byteorder: &str,
    max_frame_size: u64,
    panic_on: Option<Vec<u8>>,
) -> PyResult<Bound<'py, PyCapsule>> {
    let big_endian = match byteorder {
        "big" => true,
        "little" => false,
        _ => return Err(Error::Value("pygev: byteorder must be big or little".into()).into()),
    };
    let framing = LengthPrefix::new(header_size, big_endian, max_frame_size, panic_on)
        .map_err(|e| Error::Value(format!("pygev: {e}")))?;
    pygev_plugin::capsule!(py, framing)
}

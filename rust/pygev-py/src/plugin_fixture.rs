//! A length-prefix framing built as a *plugin*: the same C ABI a third-party extension
//! exports (`pygev_plugin::table`), compiled into pygev so that tests and benchmarks can
//! run the built-in `LengthPrefix` and its plugin twin side by side (ABI parity).
//! Exposed as `pygev._pygev._length_prefix_plugin(...)`, which returns the capsule.

use std::ffi::c_void;

use pygev_plugin::{Frames, Framing, Output, ProtocolTable, CAPSULE_NAME};
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

use crate::errors::Error;

/// Length-prefixed frames, as a plugin would write them.
struct LengthPrefixPlugin {
    header_size: usize,
    big_endian: bool,
    max_frame_size: u64,
    /// A frame or payload equal to this makes the plugin panic (tests of the boundary).
    panic_on: Option<Vec<u8>>,
}

impl LengthPrefixPlugin {
    fn header(&self, bytes: &[u8]) -> u64 {
        let mut n = 0u64;
        if self.big_endian {
            for b in bytes {
                n = n << 8 | u64::from(*b);
            }
        } else {
            for b in bytes.iter().rev() {
                n = n << 8 | u64::from(*b);
            }
        }
        n
    }

    fn maybe_panic(&self, data: &[u8]) {
        if self.panic_on.as_deref() == Some(data) {
            panic!("asked to panic on {data:?}");
        }
    }
}

impl Framing for LengthPrefixPlugin {
    type State = ();

    fn name(&self) -> &str {
        "length-prefix-plugin"
    }

    fn new_state(&self) {}

    fn unpack(&self, _: &mut (), input: &[u8], frames: &mut Frames<'_>) -> Result<usize, String> {
        let mut used = 0;
        while input.len() - used >= self.header_size {
            let declared = self.header(&input[used..used + self.header_size]);
            if declared > self.max_frame_size {
                return Err(format!(
                    "frame declares {declared} bytes, over max_frame_size {}",
                    self.max_frame_size
                ));
            }
            let start = used + self.header_size;
            if declared > (input.len() - start) as u64 {
                break;
            }
            let end = start + declared as usize;
            self.maybe_panic(&input[start..end]);
            frames.push(&input[start..end]);
            used = end;
        }
        Ok(used)
    }

    fn check(&self, payload: &[u8]) -> Result<(), String> {
        let capacity = if self.header_size >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * self.header_size)) - 1
        };
        if payload.len() as u64 > capacity {
            return Err(format!(
                "a payload of {} bytes does not fit in a {}-byte length header",
                payload.len(),
                self.header_size
            ));
        }
        Ok(())
    }

    fn pack(&self, _: Option<&mut ()>, payload: &[u8], out: &mut Output<'_>) -> Result<(), String> {
        self.maybe_panic(payload);
        let len = (payload.len() as u64).to_be_bytes();
        let mut header = len[8 - self.header_size..].to_vec();
        if !self.big_endian {
            header.reverse();
        }
        out.extend(&header);
        out.extend(payload);
        Ok(())
    }

    fn max_buffered_input(&self) -> usize {
        usize::try_from(self.max_frame_size)
            .unwrap_or(usize::MAX)
            .saturating_add(self.header_size)
    }

    fn pack_is_stateless(&self) -> bool {
        true
    }
}

/// Frees the table when Python frees the capsule.
fn free(table: ProtocolTable, _context: *mut c_void) {
    // SAFETY: the table was made by `pygev_plugin::table` for this capsule only, and
    // nothing calls it once the capsule (which every server using it holds) is gone.
    unsafe { pygev_plugin::free_table(&table) }
}

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
    if ![1, 2, 4, 8].contains(&header_size) {
        return Err(Error::Value("pygev: header_size must be 1, 2, 4 or 8".into()).into());
    }
    let big_endian = match byteorder {
        "big" => true,
        "little" => false,
        _ => return Err(Error::Value("pygev: byteorder must be big or little".into()).into()),
    };
    let capacity = if header_size == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * header_size)) - 1
    };
    let table = pygev_plugin::table(LengthPrefixPlugin {
        header_size,
        big_endian,
        max_frame_size: max_frame_size.min(capacity),
        panic_on,
    });
    PyCapsule::new_with_value_and_destructor(py, table, CAPSULE_NAME, free)
}

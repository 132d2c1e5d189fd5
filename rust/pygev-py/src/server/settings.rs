//! Turning `pygev.Server`'s keyword arguments into settings: the address argument,
//! durations and sizes, each checked with an error that names it.

use std::time::Duration;

use pyo3::prelude::*;

use crate::errors::Error;

/// The `address` argument: left out (the default), `None` (no listener: a server that only
/// dials), or given.
pub(crate) enum AddressArg<'py> {
    Default,
    NoListener,
    Given(Bound<'py, PyAny>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for AddressArg<'py> {
    type Error = PyErr;

    fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(if obj.is_none() {
            AddressArg::NoListener
        } else {
            AddressArg::Given(obj.to_owned())
        })
    }
}

/// Where a server listens when no address is given.
pub(super) const DEFAULT_ADDRESS: &str = "0.0.0.0:1833";

/// Longest duration accepted anywhere (about 31 years): deadlines stay far from overflow.
const MAX_SECONDS: f64 = 1e9;

pub(crate) fn seconds(name: &str, value: f64, allow_zero: bool) -> Result<Duration, Error> {
    let ok =
        value.is_finite() && value <= MAX_SECONDS && (value > 0.0 || (allow_zero && value == 0.0));
    if !ok {
        let bound = if allow_zero { ">= 0" } else { "> 0" };
        return Err(Error::Value(format!(
            "pygev: {name} must be a number of seconds {bound} and <= {MAX_SECONDS:e}, got {value}"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

pub(super) fn positive(name: &str, value: i64) -> Result<usize, Error> {
    usize::try_from(value)
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| Error::Value(format!("pygev: {name} must be positive, got {value}")))
}

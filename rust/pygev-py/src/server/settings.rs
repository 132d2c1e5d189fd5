//! Turning `pygev.Server`'s keyword arguments into settings: the address argument (text,
//! a tuple or a listening socket),
//! durations and sizes, each checked with an error that names it.

use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use pygev_core::proxy::{Network, TrustedProxies};
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

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

/// The listening socket given as `address` (anything with a `fileno()`, such as a
/// `socket.socket`), duplicated: the server closes its own copy. `None` for an address
/// given as text or a tuple.
pub(crate) fn listening_socket(given: &Bound<'_, PyAny>) -> PyResult<Option<OwnedFd>> {
    if given.is_instance_of::<PyString>()
        || given.is_instance_of::<PyTuple>()
        || !given.hasattr("fileno")?
    {
        return Ok(None);
    }
    let fd: RawFd = given.call_method0("fileno")?.extract()?;
    if fd < 0 {
        return Err(Error::Value("pygev: the socket given is closed".into()).into());
    }
    // SAFETY: `given` is alive for this call and owns `fd`, which stays open while it is
    // duplicated here; the duplicate is ours alone.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    Ok(Some(borrowed.try_clone_to_owned()?))
}

/// The peers a PROXY protocol header is read from when `proxy_protocol` is on: the
/// networks given (strings or `ipaddress` objects, as `"10.0.0.0/8"` or `"::1"`), or
/// loopback by default; Unix-socket peers always.
pub(crate) fn trusted_proxies(
    on: bool,
    networks: Option<&Bound<'_, PyAny>>,
) -> Result<Option<TrustedProxies>, Error> {
    let Some(networks) = networks.filter(|n| !n.is_none()) else {
        return Ok(on.then(TrustedProxies::loopback));
    };
    if !on {
        return Err(Error::Value(
            "pygev: trusted_proxies is for proxy_protocol=True".into(),
        ));
    }
    if networks.is_instance_of::<PyString>() {
        return Err(Error::Type(
            "pygev: trusted_proxies is a list of networks, not one string".into(),
        ));
    }
    let mut parsed = Vec::new();
    for item in networks.try_iter().map_err(|_| {
        Error::Type("pygev: trusted_proxies is a list of networks (\"10.0.0.0/8\")".into())
    })? {
        let text = item
            .and_then(|i| i.str())
            .map_err(|e| Error::Type(e.to_string()))?;
        let network: Network = text.to_string().parse().map_err(Error::Value)?;
        parsed.push(network);
    }
    Ok(Some(TrustedProxies::new(parsed)))
}

/// How long a connection may take to send its PROXY protocol header, if given (`None`:
/// the core's default).
pub(crate) fn proxy_header_timeout(
    on: bool,
    seconds_given: Option<f64>,
) -> Result<Option<Duration>, Error> {
    match seconds_given {
        None => Ok(None),
        Some(_) if !on => Err(Error::Value(
            "pygev: proxy_header_timeout is for proxy_protocol=True".into(),
        )),
        Some(value) => seconds("proxy_header_timeout", value, false).map(Some),
    }
}

/// Where a server listens when no address is given.
pub(crate) const DEFAULT_ADDRESS: &str = "0.0.0.0:1833";

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

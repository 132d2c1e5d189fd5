//! A plain HTTP request on a WebSocket port (not an upgrade) as the `on_http_request` hook
//! sees it, and how the hook's `pygev.Response` becomes the bytes that answer it.

use pygev_core::websocket::http_request::{self, HttpRequest};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::bytes_like::bytes_of;
use crate::dispatcher::type_name;

/// The largest body an `on_http_request` answer may have: it is written whole by the loop.
const MAX_BODY: usize = 1 << 20;

/// A plain HTTP request (a load balancer's health check, say), as `on_http_request` sees
/// it.
#[pyclass(module = "pygev._pygev", frozen, name = "HttpRequest")]
pub struct PyHttpRequest {
    pub(crate) inner: HttpRequest,
}

#[pymethods]
impl PyHttpRequest {
    /// `"GET"`, `"HEAD"`, ... as sent.
    #[getter]
    fn method(&self) -> &str {
        &self.inner.method
    }

    /// The request target's path, e.g. `"/healthz"`.
    #[getter]
    fn path(&self) -> &str {
        &self.inner.path
    }

    /// What follows `?` in the request target, or `None`.
    #[getter]
    fn query(&self) -> Option<&str> {
        self.inner.query.as_deref()
    }

    /// `"HTTP/1.0"` or `"HTTP/1.1"`.
    #[getter]
    fn version(&self) -> &'static str {
        match self.inner.minor_version {
            0 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }
    }

    /// Every header field in order, as `(name, value)` with lower-case names.
    #[getter]
    fn headers(&self) -> Vec<(String, String)> {
        self.inner.headers.clone()
    }

    /// The value of header `name` (any case), or `default` if absent; several fields of
    /// that name are joined with `", "`.
    #[pyo3(signature = (name, default = None))]
    fn header(&self, name: &str, default: Option<String>) -> Option<String> {
        header_of(&self.inner.headers, name, default)
    }

    fn __repr__(&self) -> String {
        format!(
            "<pygev.HttpRequest {} {:?}>",
            self.inner.method, self.inner.path
        )
    }
}

/// The value of header `name` (any case) among `headers` (lower-case names), several
/// fields of that name joined with `", "`; `default` if there is none.
pub(crate) fn header_of(
    headers: &[(String, String)],
    name: &str,
    default: Option<String>,
) -> Option<String> {
    let name = name.to_ascii_lowercase();
    let values: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
        .collect();
    if values.is_empty() {
        default
    } else {
        Some(values.join(", "))
    }
}

/// The bytes answering `request` as `answer` says: a `pygev.Response`, or `None` (the
/// request is refused as it would be without the hook).
pub(crate) fn response_of(answer: &Bound<'_, PyAny>, request: &HttpRequest) -> PyResult<Vec<u8>> {
    if answer.is_none() {
        return Ok(request.refusal.response());
    }
    let classes = crate::package::classes(answer.py())?;
    if !answer.is_instance(classes.response.bind(answer.py()))? {
        return Err(PyTypeError::new_err(format!(
            "pygev: on_http_request must return pygev.Response(...) or None, got {}",
            type_name(answer)
        )));
    }
    let status: u16 = answer.getattr("status")?.extract()?;
    let mut headers: Vec<(String, String)> = answer.getattr("headers")?.extract()?;
    let body = answer.getattr("body")?;
    let body: Vec<u8> = if let Ok(text) = body.cast::<PyString>() {
        let has_type = headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
        if !has_type {
            headers.push(("Content-Type".into(), "text/plain; charset=utf-8".into()));
        }
        text.to_str()?.as_bytes().to_vec()
    } else {
        bytes_of(&body)?.into_owned()
    };
    if body.len() > MAX_BODY {
        return Err(PyValueError::new_err(format!(
            "pygev: an on_http_request response body is at most {MAX_BODY} bytes, got {}",
            body.len()
        )));
    }
    let head = request.method.eq_ignore_ascii_case("HEAD");
    http_request::response(status, &headers, &body, head).ok_or_else(|| {
        PyValueError::new_err(format!(
            "pygev: Response needs a status of 200 to 599 and header names and values that \
             are single lines (not Content-Length, Connection or Transfer-Encoding), got \
             {status} {headers:?}"
        ))
    })
}

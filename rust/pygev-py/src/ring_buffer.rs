//! `pygev.RingBuffer`: a connection's unparsed input, as gev's `unpacket` sees it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::bytes_like::bytes_of;
use crate::errors::Error;

/// Bytes received and not yet taken by `unpacket`, with gev's reads.
///
/// The server lends a connection's buffer to `Protocol.unpacket` only: outside that call
/// every method raises `RuntimeError`, so a buffer kept by mistake cannot be misread. A
/// buffer built with `RingBuffer()` (to test a protocol) is always usable.
#[pyclass(module = "pygev._pygev", frozen)]
pub struct RingBuffer {
    inner: Mutex<pygev_core::RingBuffer>,
    usable: AtomicBool,
    /// Built by the user (always usable, writable), not a connection's.
    standalone: bool,
}

impl RingBuffer {
    /// A connection's buffer: usable only while lent to `unpacket`.
    pub(crate) fn lent() -> Self {
        RingBuffer {
            inner: Mutex::new(pygev_core::RingBuffer::new()),
            usable: AtomicBool::new(false),
            standalone: false,
        }
    }

    pub(crate) fn set_usable(&self, usable: bool) {
        self.usable.store(usable, Ordering::Release);
    }

    /// Appends received bytes (the dispatcher, before lending the buffer).
    pub(crate) fn append(&self, data: &[u8]) -> usize {
        let mut inner = self.lock_inner();
        inner.write(data);
        inner.len()
    }

    pub(crate) fn held(&self) -> usize {
        self.lock_inner().len()
    }

    fn lock_inner(&self) -> MutexGuard<'_, pygev_core::RingBuffer> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> Result<MutexGuard<'_, pygev_core::RingBuffer>, Error> {
        if !self.usable.load(Ordering::Acquire) {
            return Err(Error::State(
                "pygev: this RingBuffer is only valid inside Protocol.unpacket()".into(),
            ));
        }
        Ok(self.lock_inner())
    }
}

fn joined((a, b): (&[u8], &[u8])) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out
}

// NOTE: every method copies out under the lock and builds Python objects after releasing
// it: allocating may run the GC (and any __del__), which must not find the lock held.

#[pymethods]
impl RingBuffer {
    /// An empty, always usable buffer (for testing a protocol's `unpacket`).
    #[new]
    fn py_new() -> Self {
        RingBuffer {
            inner: Mutex::new(pygev_core::RingBuffer::new()),
            usable: AtomicBool::new(true),
            standalone: true,
        }
    }

    /// Appends `data` (bytes-like). Only for a buffer built with `RingBuffer()`: a
    /// connection's buffer holds what the peer sent, nothing else.
    fn write(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if !self.standalone {
            return Err(Error::State(
                "pygev: a connection's RingBuffer cannot be written to".into(),
            )
            .into());
        }
        let data = bytes_of(data)?;
        self.lock()?.write(&data);
        Ok(())
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.lock()?.len())
    }

    /// Bytes held.
    fn len(&self) -> PyResult<usize> {
        Ok(self.lock()?.len())
    }

    /// Up to `n` bytes from the front, not consumed.
    fn peek<'py>(&self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyBytes>> {
        let out = joined(self.lock()?.peek(n));
        Ok(PyBytes::new(py, &out))
    }

    /// Up to `n` bytes from the front, consumed.
    fn read<'py>(&self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyBytes>> {
        let out = {
            let mut inner = self.lock()?;
            let out = joined(inner.peek(n));
            inner.retrieve(out.len());
            out
        };
        Ok(PyBytes::new(py, &out))
    }

    /// Consumes `n` bytes (or all, if fewer are held) without returning them.
    fn retrieve(&self, n: usize) -> PyResult<()> {
        self.lock()?.retrieve(n);
        Ok(())
    }

    /// Consumes everything held.
    fn retrieve_all(&self) -> PyResult<()> {
        self.lock()?.retrieve_all();
        Ok(())
    }

    /// A copy of every held byte (nothing consumed).
    fn bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let out = joined(self.lock()?.as_slices());
        Ok(PyBytes::new(py, &out))
    }

    /// Up to `n` bytes after the virtual cursor, which advances; nothing is consumed until
    /// `virtual_flush()`.
    fn virtual_read<'py>(&self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyBytes>> {
        let out = {
            let mut inner = self.lock()?;
            let mut out = vec![0; n.min(inner.virtual_length())];
            inner.virtual_read(&mut out);
            out
        };
        Ok(PyBytes::new(py, &out))
    }

    /// Bytes after the virtual cursor.
    fn virtual_length(&self) -> PyResult<usize> {
        Ok(self.lock()?.virtual_length())
    }

    /// Consumes what the virtual reads covered.
    fn virtual_flush(&self) -> PyResult<()> {
        self.lock()?.virtual_flush();
        Ok(())
    }

    /// Moves the virtual cursor back to the front.
    fn virtual_revert(&self) -> PyResult<()> {
        self.lock()?.virtual_revert();
        Ok(())
    }

    fn __repr__(&self) -> String {
        match self.usable.load(Ordering::Acquire) {
            true => format!("<pygev.RingBuffer holding {} bytes>", self.held()),
            false => "<pygev.RingBuffer (not lent)>".into(),
        }
    }
}

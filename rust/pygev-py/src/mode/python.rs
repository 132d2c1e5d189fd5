//! The Python framing mode: a `pygev.Protocol` subclass frames each connection's bytes
//! under the dispatcher (`unpacket` over a per-connection `RingBuffer`, `packet` for
//! sends); the loops pass raw bytes. The dispatcher's side of it, the buffers and the frame
//! deadline, is `dispatcher/python_protocol.rs`.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, MutexGuard};

use pygev_core::{MessageKind, Protocol};
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;

use super::Mode;
use crate::bytes_like::packet;
use crate::connection::Connection;
use crate::dispatcher::{Dispatcher, Frame};
use crate::errors::ConnectionClosed;
use crate::shared::Packer;

/// A framing written in Python.
pub(crate) struct PythonFraming {
    /// The `pygev.Protocol` object (`None` once its server was collected).
    framing: Mutex<Option<Py<PyAny>>>,
    /// What the loops run: raw (one object, so that the loops' tables share it).
    raw: Arc<dyn Protocol>,
}

impl PythonFraming {
    pub(crate) fn new(framing: Py<PyAny>) -> Self {
        PythonFraming {
            framing: Mutex::new(Some(framing)),
            raw: crate::protocols::raw(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Py<PyAny>>> {
        self.framing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Mode for PythonFraming {
    fn loop_protocol(&self) -> Arc<dyn Protocol> {
        self.raw.clone()
    }

    fn send(&self, conn: &Bound<'_, Connection>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = conn.py();
        let this = conn.get();
        this.writable()?; // before running the user's packet()
        let Some(framing) = self.python_framing(py) else {
            return Err(this.closed_error().into());
        };
        match packet(framing.bind(py), conn, data) {
            Ok(Ok(wire)) => Ok(this.send_framed(Cow::Owned(wire), Packer::RAW)?),
            // packet() returned something that is not bytes: nothing was sent.
            Ok(Err(not_bytes)) => Err(not_bytes.into()),
            Err(err)
                if err.is_instance_of::<PyKeyboardInterrupt>(py)
                    || err.is_instance_of::<PySystemExit>(py) =>
            {
                Err(err)
            }
            Err(err) => {
                // The framing failed, not the caller: the connection cannot go on.
                this.fail(py, "packet", &err);
                let closed = ConnectionClosed::new_err(format!(
                    "pygev: Protocol.packet() raised; connection {} was closed",
                    this.id_value()
                ));
                closed.set_cause(py, Some(err));
                Err(closed)
            }
        }
    }

    fn on_message(
        &self,
        dispatcher: &mut Dispatcher<'_>,
        conn: &Py<Connection>,
        frame: Frame<'_>,
        _kind: MessageKind,
    ) -> bool {
        // NOTE: not reached today: the dispatcher hands this mode's bytes to
        // `python_framing()` in its rounds (which hold what follows a callback that awaits;
        // this path could not).
        let py = dispatcher.py();
        if let Some(framing) = self.python_framing(py) {
            let data = frame.bytes().to_vec();
            dispatcher.on_bytes(conn, Some(data), framing.bind(py), usize::MAX);
        }
        dispatcher.awaits_for(conn)
    }

    fn reply(
        &self,
        dispatcher: &mut Dispatcher<'_>,
        conn: &Py<Connection>,
        value: Bound<'_, PyAny>,
    ) {
        let py = dispatcher.py();
        // (No framing: its server was collected.)
        if let Some(framing) = self.python_framing(py) {
            dispatcher.send_packed(conn, framing.bind(py), &value);
        }
    }

    fn is_python_framed(&self) -> bool {
        true
    }

    fn python_framing(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.lock().as_ref().map(|f| f.clone_ref(py))
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(framing) = self.framing.try_lock() {
            visit.call(framing.as_ref())?;
        }
        Ok(())
    }

    fn clear(&self) {
        let framing = self.lock().take();
        drop(framing);
    }
}

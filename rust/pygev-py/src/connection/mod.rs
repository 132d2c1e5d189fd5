//! `pygev.Connection`: the Python face of one TCP connection: its state (open, write
//! side shut, closed, gone), its flow control and its Python methods. Its output on the
//! way to the loop is in `output.rs`; its peer address as kept, in `peer.rs`.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use pygev_core::{Address, Backlog, CloseReason, Command, ConnectInfo, Credentials, TlsInfo};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;

use crate::address::{address_object, credentials_tuple};
use crate::errors::Error;
use crate::mode::{Mode, SharedMode};
use crate::shared::Shared;

mod output;
mod peer;

use peer::PeerV4;

const OPEN: u8 = 0;
const WRITE_SHUT: u8 = 1;
const CLOSED: u8 = 2;
/// The loop closed it while one of its callbacks awaits: nothing can be sent any more, but
/// the input read before still goes to the handler, then `on_close` (`CLOSED`).
const GONE: u8 = 3;

/// One client connection. Created by the server; handed to every callback.
#[pyclass(module = "pygev._pygev", frozen)]
pub struct Connection {
    shared: Arc<Shared>,
    pub(crate) loop_index: u32,
    pub(crate) token: u32,
    id: u64,
    /// The peer's address when it is IPv4, as such or mapped into IPv6 (on a dual-stack
    /// listener): the many. Any other is in `extra`.
    ///
    /// NOTE: an IPv6 or Unix address takes 32 bytes; this takes 8, which keeps the object
    /// in pymalloc's 128-byte class (a million idle connections: 16 MB less).
    peer_v4: Option<PeerV4>,
    local: Arc<Address>,
    /// What only some connections have (boxed: plain IPv4 ones, the many, have none of it).
    extra: Option<Box<Extra>>,
    /// What is queued each way, shared with the loop.
    pub(crate) backlog: Arc<Backlog>,
    state: AtomicU8,
    /// `pause_reading()` was called (and not `resume_reading()` since).
    paused: AtomicBool,
    /// How its bytes become handler calls (see `mode/`).
    mode: SharedMode,
    /// Where the mode has got to with it (WebSocket: handshake, open, open compressed),
    /// read and written by the mode only.
    phase: AtomicU8,
    context: Mutex<Option<Py<PyAny>>>,
}

/// What only some connections have.
struct Extra {
    /// The peer's address when it is not IPv4: IPv6, or a Unix socket's.
    peer: Option<Address>,
    /// The peer process on a Unix socket.
    credentials: Option<Credentials>,
    /// What a TLS handshake negotiated.
    tls: Option<Box<TlsInfo>>,
}

impl Connection {
    /// The Python side of a connection the loop `loop_index` holds in slot `token`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        mode: SharedMode,
        loop_index: u32,
        token: u32,
        info: ConnectInfo,
    ) -> Self {
        let ConnectInfo {
            id,
            peer,
            local,
            credentials,
            backlog,
            outgoing: _,
            tls,
        } = info;
        let peer_v4 = PeerV4::of(&peer);
        let peer = peer_v4.is_none().then_some(peer);
        Connection {
            loop_index,
            token,
            id,
            peer_v4,
            local,
            extra: (peer.is_some() || credentials.is_some() || tls.is_some()).then(|| {
                Box::new(Extra {
                    peer,
                    credentials,
                    tls,
                })
            }),
            backlog,
            state: AtomicU8::new(OPEN),
            paused: AtomicBool::new(false),
            mode,
            phase: AtomicU8::new(0),
            context: Mutex::new(None),
            shared,
        }
    }

    /// The peer's address.
    fn peer(&self) -> Cow<'_, Address> {
        match self.peer_v4 {
            Some(v4) => Cow::Owned(v4.address()),
            None => Cow::Borrowed(
                (self.extra.as_deref())
                    .and_then(|extra| extra.peer.as_ref())
                    .expect("new() keeps a peer that is not IPv4 in extra"),
            ),
        }
    }

    /// The connection's mode.
    pub(crate) fn mode(&self) -> &dyn Mode {
        &**self.mode
    }

    /// Whether the connection was dialed with a mode of its own (one `connect()` made it,
    /// and only this connection holds it), not the server's.
    fn has_own_mode(&self) -> bool {
        !Arc::ptr_eq(&self.mode, &self.shared.mode)
    }

    /// Where the mode has got to with the connection (its own numbers).
    pub(crate) fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    pub(crate) fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::Release);
    }

    /// Resets the connection at once (unsent output is dropped), counted as `counted_as`;
    /// the loop logs `reason` (`None`: logged already).
    pub(crate) fn abort(&self, counted_as: CloseReason, reason: Option<String>) {
        let (token, id) = (self.token, self.id);
        self.end_with(Command::Abort {
            token,
            id,
            reason,
            counted_as,
        });
    }

    /// Marks the connection closed and tells its loop how to end it, the first time only
    /// (and not once the loop has closed it).
    fn end_with(&self, command: Command) {
        if !matches!(self.state.swap(CLOSED, Ordering::AcqRel), CLOSED | GONE) {
            self.shared.post(self.loop_index, command);
        }
    }

    pub(crate) fn id_value(&self) -> u64 {
        self.id
    }

    /// Whether `close()` was called, or the loop closed it and `on_close` is due: its
    /// messages are skipped. (One gone while a callback awaits is not yet: see `is_over`.)
    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }

    /// Marks the connection closed (the loop closed it, or a callback failed).
    pub(crate) fn mark_closed(&self) {
        self.state.store(CLOSED, Ordering::Release);
    }

    /// The loop closed the connection while one of its callbacks awaits: sends and
    /// `drain()` fail from now on, while the input held behind that callback is still
    /// handled (unless `close()` was called).
    pub(crate) fn mark_gone(&self) {
        let gone = |state| (state != CLOSED).then_some(GONE);
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, gone);
    }

    /// Whether nothing can be sent any more and no drain is to come: closed, or gone.
    pub(crate) fn is_over(&self) -> bool {
        matches!(self.state.load(Ordering::Acquire), CLOSED | GONE)
    }

    /// Whether sending is allowed (open, write side not shut down).
    #[inline]
    pub(crate) fn writable(&self) -> Result<(), Error> {
        match self.state.load(Ordering::Acquire) {
            OPEN => Ok(()),
            state => Err(self.not_writable(state)),
        }
    }

    #[cold]
    #[inline(never)]
    fn not_writable(&self, state: u8) -> Error {
        match state {
            WRITE_SHUT => Error::Closed(format!(
                "pygev: connection {} has shut down its write side",
                self.id
            )),
            _ => self.closed_error(),
        }
    }

    /// Closes after flushing pending output (the dispatcher uses it after a failed callback).
    pub(crate) fn request_close(&self) {
        let (token, id) = (self.token, self.id);
        self.end_with(Command::Close { token, id });
    }

    /// Logs that the connection's Python framing failed, and closes the connection.
    pub(crate) fn fail(&self, py: Python<'_>, what: &str, err: &PyErr) {
        let message = format!(
            "pygev: Protocol.{what}() raised; resetting connection {}",
            self.id
        );
        crate::logging::log_exception(py, &message, err);
        self.abort(CloseReason::Abort, None);
    }

    pub(crate) fn closed_error(&self) -> Error {
        Error::Closed(format!("pygev: connection {} is closed", self.id))
    }

    /// The loop reported that unsent output fell to the low-water mark: the `drain()`
    /// waiters go on, if it still is (a report made for an earlier wait may come after
    /// more was sent; then the loop is asked again).
    pub(crate) fn drained(&self, py: Python<'_>) {
        if !self.shared.drains.waits(self.id) {
            return;
        }
        let (_, low) = self.backlog.write_limits();
        if self.backlog.unsent() > low {
            self.want_drain();
            if self.backlog.unsent() > low {
                return;
            }
        }
        self.shared.drains.drained(py, self.id);
    }

    /// Asks the loop to report when unsent output falls to the low-water mark (the flag
    /// for its flushes, and a command for it to look at once).
    fn want_drain(&self) {
        self.backlog.want_drain();
        let (token, id) = (self.token, self.id);
        self.shared
            .post(self.loop_index, Command::WantDrain { token, id });
    }

    fn context_slot(&self) -> std::sync::MutexGuard<'_, Option<Py<PyAny>>> {
        self.context.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl Connection {
    /// Queues `data` for writing, packed by the connection's protocol.
    ///
    /// Thread-safe: callable from any thread and from inside callbacks (where the writes of
    /// a whole batch go out together).
    fn send(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let this = slf.get();
        this.mode.send(slf, data)
    }

    /// Flushes pending output, then shuts down the write side (the peer reads EOF).
    fn shutdown_write(&self) -> PyResult<()> {
        self.mode.check_shutdown_write()?;
        match self
            .state
            .compare_exchange(OPEN, WRITE_SHUT, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {}
            Err(WRITE_SHUT) => return Ok(()),
            Err(_) => return Err(self.closed_error().into()),
        }
        let command = Command::ShutdownWrite {
            token: self.token,
            id: self.id,
        };
        if !self.shared.post(self.loop_index, command) {
            return Err(self.closed_error().into());
        }
        Ok(())
    }

    /// Stops reading, flushes pending output, then closes. Idempotent. A WebSocket
    /// connection first sends a close frame with `code` and `reason`.
    #[pyo3(signature = (code = 1000, reason = ""))]
    fn close(&self, code: i64, reason: &str) -> PyResult<()> {
        if !self.is_over() {
            self.mode.close(self, code, reason)?;
        }
        self.request_close();
        Ok(())
    }

    /// Sends a WebSocket ping with `payload` (at most 125 bytes); the client answers with a
    /// pong, which the loop takes as a sign of life.
    #[pyo3(signature = (payload = b"".as_slice()), text_signature = "($self, payload=b'')")]
    fn ping(&self, payload: &[u8]) -> PyResult<()> {
        Ok(self.mode.ping(self, payload)?)
    }

    /// The peer's address: `(host, port)`, or on a Unix socket `"unix:/path"`,
    /// `"unix:@name"` or `"unix:"` (a client that bound no name).
    #[getter]
    fn peer_addr(&self, py: Python<'_>) -> Py<PyAny> {
        address_object(py, &self.peer())
    }

    /// This end's address, in the same forms as `peer_addr`.
    #[getter]
    fn local_addr(&self, py: Python<'_>) -> Py<PyAny> {
        address_object(py, &self.local)
    }

    /// The peer process on a Unix socket as `(pid, uid, gid)` (SO_PEERCRED, taken when it
    /// connected); `None` on TCP.
    #[getter]
    fn peer_credentials(&self) -> Option<(i32, u32, u32)> {
        let extra = self.extra.as_deref()?;
        extra.credentials.map(credentials_tuple)
    }

    /// What the TLS handshake negotiated (`pygev.TLSInfo`); `None` on a plain connection.
    #[getter]
    fn tls(&self) -> Option<crate::tls::TlsInfoObject> {
        let info = self.extra.as_deref()?.tls.as_deref()?;
        Some(crate::tls::TlsInfoObject::new(info.clone()))
    }

    /// The subprotocol the server chose, on a WebSocket client's connection (`None`: none
    /// was chosen, or the connection is not a dialed WebSocket's; a server's connections
    /// carry the one their `on_handshake` accepted, which the handler knows).
    #[getter]
    fn subprotocol(&self) -> Option<&str> {
        self.mode.subprotocol()
    }

    /// The header fields of the server's 101 response (names lower-cased), on a WebSocket
    /// client's connection; `None` on others.
    #[getter]
    fn response_headers(&self) -> Option<Vec<(String, String)>> {
        self.mode.response_headers().map(<[_]>::to_vec)
    }

    /// A server-unique number for this connection.
    #[getter]
    fn id(&self) -> u64 {
        self.id
    }

    /// False once the connection was closed (by either side).
    #[getter]
    fn connected(&self) -> bool {
        !self.is_over()
    }

    /// Bytes of output not yet written to the socket (sent, queued in the loop).
    #[getter]
    fn write_buffer_size(&self) -> usize {
        self.backlog.unsent()
    }

    /// `(low, high)`: the write low- and high-water marks.
    fn get_write_buffer_limits(&self) -> (usize, usize) {
        let (high, low) = self.backlog.write_limits();
        (low, high)
    }

    /// Sets this connection's write high- and low-water marks: past `high` bytes of
    /// unsent output the loop stops reading it, at `low` reading resumes and `drain()`
    /// returns. `high` defaults to the server's `write_high_water`, `low` to half `high`.
    #[pyo3(signature = (high = None, low = None))]
    fn set_write_buffer_limits(&self, high: Option<i64>, low: Option<i64>) -> PyResult<()> {
        let (default_high, _) = self.shared.write_limits;
        let bytes = |name: &str, v: i64| {
            usize::try_from(v)
                .map_err(|_| Error::Value(format!("pygev: {name} must be >= 0, got {v}")))
        };
        let high = high
            .map(|h| bytes("high", h))
            .transpose()?
            .unwrap_or(default_high);
        let low = low
            .map(|l| bytes("low", l))
            .transpose()?
            .unwrap_or(high / 2);
        let limit = self.shared.max_write_buffer.min(u32::MAX as usize);
        if high == 0 || low > high || high > limit {
            return Err(Error::Value(format!(
                "pygev: need 0 <= low <= high, 0 < high <= max_write_buffer ({limit}), got \
                 low {low}, high {high}"
            ))
            .into());
        }
        self.backlog.set_write_limits(high, low);
        Ok(())
    }

    /// Returns an awaitable that completes once unsent output is at or under the
    /// low-water mark (at once if it is); it raises `ConnectionClosed` if the connection
    /// closes first.
    fn drain(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if self.is_over() {
            return Err(self.closed_error().into());
        }
        let (_, low) = self.backlog.write_limits();
        if self.backlog.unsent() <= low && !self.shared.drains.waits(self.id) {
            return Ok(crate::package::classes(py)?.ready.clone_ref(py));
        }
        let future = self.shared.drains.wait(py, self.id)?;
        if self.is_over() {
            // Closed while the future was made (the dispatcher failed the waiters before
            // this one came).
            self.shared.drains.closed(py, self.id);
            return Ok(future);
        }
        self.want_drain();
        // The loop may have written it all before it saw the wish: look again.
        if self.backlog.unsent() <= low {
            self.shared.drains.drained(py, self.id);
        }
        Ok(future)
    }

    /// Stops reading from the peer until `resume_reading()` (input already read is still
    /// delivered). Thread-safe.
    fn pause_reading(&self) {
        if !self.paused.swap(true, Ordering::AcqRel) {
            let (token, id) = (self.token, self.id);
            self.shared
                .post(self.loop_index, Command::PauseReading { token, id });
        }
    }

    /// Reads from the peer again after `pause_reading()`. Thread-safe.
    fn resume_reading(&self) {
        if self.paused.swap(false, Ordering::AcqRel) {
            let (token, id) = (self.token, self.id);
            self.shared
                .post(self.loop_index, Command::ResumeReading { token, id });
        }
    }

    /// Whether reading is on (not paused by `pause_reading()`, and not closed).
    pub(crate) fn is_reading(&self) -> bool {
        !self.paused.load(Ordering::Acquire) && !self.is_over()
    }

    /// A free slot for the user's per-connection state (default `None`).
    #[getter]
    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        match &*self.context_slot() {
            Some(obj) => obj.clone_ref(py),
            None => py.None(),
        }
    }

    #[setter]
    fn set_context(&self, value: Py<PyAny>) {
        let old = self.context_slot().replace(value);
        drop(old); // outside the lock: dropping may run arbitrary __del__ code
    }

    fn __repr__(&self) -> String {
        format!(
            "<pygev.Connection id={} peer={} {}>",
            self.id,
            self.peer(),
            if self.is_over() { "closed" } else { "open" }
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(slot) = self.context.try_lock() {
            visit.call(slot.as_ref())?;
        }
        if self.has_own_mode() {
            self.mode.traverse(&visit)?; // the server's own is the server's to report
        }
        Ok(())
    }

    fn __clear__(&self) {
        let old = self.context_slot().take();
        drop(old);
        if self.has_own_mode() {
            self.mode.clear();
        }
    }
}

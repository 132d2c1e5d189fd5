//! `pygev.Server`: binds in the constructor, serves (`drivers.rs`: `start()`, `serve()`),
//! stops; its settings are checked in `settings.rs`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pygev_core::{Address, CloseReason, Config, LoopStatsSnapshot, Strategy};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3::PyTraverseError;

use crate::address::{address_object, address_text};
use crate::dispatcher::Callbacks;
use crate::errors::Error;
use crate::mode;
use crate::shared::Shared;
use crate::timer::Timer;
use crate::tls::Tls;
use crate::ws_client;
use drivers::Serving;
pub(crate) use settings::seconds;
pub(crate) use settings::DEFAULT_ADDRESS;
use settings::{listening_socket, positive, AddressArg};

mod connect;
mod drivers;
mod settings;

const BOUND: u8 = 0;
const RUNNING: u8 = 1;
const STOPPED: u8 = 2;
/// `stop()` came before `start()`: `start()` returns at once instead of serving.
const STOPPED_BEFORE_START: u8 = 3;

/// A TCP server: binds when constructed, serves in `start()`, ends with `stop()`.
#[pyclass(module = "pygev._pygev", frozen, weakref, subclass)]
pub struct Server {
    shared: Arc<Shared>,
    /// The bound core; taken by `start()` or dropped by `stop()`.
    core: Mutex<Option<pygev_core::Server>>,
    handler: Mutex<Option<Py<PyAny>>>,
    state: AtomicU8,
    /// What the server listens on (`None`: it only dials).
    address: Option<Address>,
    config: Config,
    /// Callbacks running longer are logged (`None`: none is).
    slow_callback_duration: Option<Duration>,
    /// What `serve()` keeps between its turns in an asyncio loop.
    serving: Mutex<Option<Serving>>,
    /// The WebSocket client framings of recent `ws://` dials.
    ws_framings: ws_client::Framings,
}

impl Server {
    fn lock_handler(&self) -> MutexGuard<'_, Option<Py<PyAny>>> {
        self.handler.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_core(&self) -> MutexGuard<'_, Option<pygev_core::Server>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handler(&self, py: Python<'_>) -> Result<Py<PyAny>, Error> {
        self.lock_handler()
            .as_ref()
            .map(|h| h.clone_ref(py))
            .ok_or_else(|| Error::State("pygev: the server's handler was cleared".into()))
    }

    fn callbacks(&self, py: Python<'_>) -> PyResult<Callbacks> {
        let handler = self.handler(py)?;
        Callbacks::of(handler.bind(py), self.shared.mode.has_handshake())
    }

    fn schedule(
        &self,
        py: Python<'_>,
        delay: Duration,
        interval: Option<Duration>,
        callback: &Bound<'_, PyAny>,
    ) -> PyResult<Py<Timer>> {
        if !callback.is_callable() {
            return Err(Error::Type("pygev: timer callback must be callable".into()).into());
        }
        if matches!(
            self.state.load(Ordering::Acquire),
            STOPPED | STOPPED_BEFORE_START
        ) {
            return Err(Error::State("pygev: server is stopped".into()).into());
        }
        self.shared.add_timer(
            py,
            callback.clone().unbind(),
            Instant::now() + delay,
            interval,
        )
    }
}

fn snapshot_dict<'py>(py: Python<'py>, s: &LoopStatsSnapshot) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("connections", s.open())?;
    dict.set_item("accepted", s.accepted)?;
    dict.set_item("dialed", s.dialed)?;
    dict.set_item("connect_failed", s.connect_failed)?;
    dict.set_item("closed", s.closed)?;
    let by_reason = PyDict::new(py);
    for reason in CloseReason::ALL {
        by_reason.set_item(reason.name(), s.closed_by_reason[reason.index()])?;
    }
    dict.set_item("closed_by_reason", by_reason)?;
    let refused = PyDict::new(py);
    refused.set_item("untrusted_proxy", s.refused_untrusted)?;
    refused.set_item("tls_handshakes", s.refused_handshakes)?;
    dict.set_item("refused_by_reason", refused)?;
    dict.set_item("bytes_in", s.bytes_in)?;
    dict.set_item("bytes_out", s.bytes_out)?;
    dict.set_item("messages_in", s.messages_in)?;
    dict.set_item("loop_wakeups", s.wakeups)?;
    dict.set_item("read_pauses", s.read_pauses)?;
    dict.set_item("input_pauses", s.input_pauses)?;
    dict.set_item("write_buffered", s.write_buffered)?;
    Ok(dict)
}
#[pymethods]
impl Server {
    /// Validates the settings and binds the listening socket(s).
    #[new]
    #[pyo3(signature = (
        handler,
        address = AddressArg::Default,
        *,
        num_loops = 0,
        protocol = None,
        reuse_port = false,
        strategy = "round_robin",
        idle_timeout = None,
        frame_timeout = Some(60.0),
        backlog = 1024,
        drain_timeout = 5.0,
        write_high_water = 1 << 20,
        write_low_water = None,
        max_write_buffer = 64 << 20,
        max_input_buffer = 64 << 20,
        dispatch_high_water = 32 << 20,
        max_batch_events = 2048,
        unix_mode = None,
        slow_callback_duration = Some(0.1),
        tls = None,
        proxy_protocol = false,
        trusted_proxies = None,
        proxy_header_timeout = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        handler: &Bound<'_, PyAny>,
        address: AddressArg<'_>,
        num_loops: i64,
        protocol: Option<&Bound<'_, PyAny>>,
        reuse_port: bool,
        strategy: &str,
        idle_timeout: Option<f64>,
        frame_timeout: Option<f64>,
        backlog: i64,
        drain_timeout: f64,
        write_high_water: i64,
        write_low_water: Option<i64>,
        max_write_buffer: i64,
        max_input_buffer: i64,
        dispatch_high_water: i64,
        max_batch_events: i64,
        unix_mode: Option<u32>,
        slow_callback_duration: Option<f64>,
        tls: Option<Py<Tls>>,
        proxy_protocol: bool,
        trusted_proxies: Option<&Bound<'_, PyAny>>,
        proxy_header_timeout: Option<f64>,
    ) -> PyResult<Self> {
        let proxy_header_timeout =
            settings::proxy_header_timeout(proxy_protocol, proxy_header_timeout)?;
        let proxy_protocol = settings::trusted_proxies(proxy_protocol, trusted_proxies)?;
        let (address, socket) = match address {
            AddressArg::Default => (Some(DEFAULT_ADDRESS.to_string()), None),
            AddressArg::NoListener => (None, None),
            AddressArg::Given(given) => match listening_socket(&given)? {
                Some(fd) => (None, Some(fd)),
                None => (Some(address_text(&given)?), None),
            },
        };
        Callbacks::of(handler, false)?; // every callback there and callable
        let num_loops = match num_loops {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n if n < 0 => {
                return Err(Error::Value(format!(
                    "pygev: num_loops must be >= 0 (0 = one per CPU), got {n}"
                ))
                .into())
            }
            n => n as usize,
        };
        let strategy = match strategy {
            "round_robin" => Strategy::RoundRobin,
            "least_connections" => Strategy::LeastConnections,
            other => {
                return Err(Error::Value(format!(
                "pygev: strategy must be \"round_robin\" or \"least_connections\", got {other:?}"
            ))
                .into())
            }
        };
        let write_high_water = positive("write_high_water", write_high_water)?;
        let write_low_water = match write_low_water {
            None => write_high_water / 2,
            Some(low) => usize::try_from(low).map_err(|_| {
                Error::Value(format!("pygev: write_low_water must be >= 0, got {low}"))
            })?,
        };
        let config = Config {
            num_loops,
            reuse_port,
            strategy,
            idle_timeout: idle_timeout
                .map(|t| seconds("idle_timeout", t, false))
                .transpose()?,
            frame_timeout: frame_timeout
                .map(|t| seconds("frame_timeout", t, false))
                .transpose()?,
            backlog: i32::try_from(positive("backlog", backlog)?).unwrap_or(i32::MAX),
            drain_timeout: seconds("drain_timeout", drain_timeout, true)?,
            write_high_water,
            write_low_water,
            max_write_buffer: positive("max_write_buffer", max_write_buffer)?,
            max_input_buffer: positive("max_input_buffer", max_input_buffer)?,
            dispatch_high_water: positive("dispatch_high_water", dispatch_high_water)?,
            max_batch_events: positive("max_batch_events", max_batch_events)?,
            unix_mode: unix_mode.map(|mode| mode & 0o7777),
            tls: tls
                .as_ref()
                .map(|tls| tls.get().server().map(Arc::new))
                .transpose()?,
            tls_handshake_timeout: tls
                .as_ref()
                .map_or(Config::default().tls_handshake_timeout, |tls| {
                    tls.get().handshake_timeout
                }),
            tls_max_handshakes: tls
                .as_ref()
                .map_or(Config::default().tls_max_handshakes, |tls| {
                    tls.get().max_handshakes
                }),
            proxy_protocol,
            proxy_header_timeout: proxy_header_timeout
                .unwrap_or(Config::default().proxy_header_timeout),
            ..Config::default()
        };
        if config.tls.is_some() && address.is_none() && socket.is_none() {
            return Err(Error::Value(
                "pygev: tls= is for the connections a server accepts; it has no listener (give \
                 tls= to connect() instead)"
                    .into(),
            )
            .into());
        }
        let slow_callback_duration = slow_callback_duration
            .map(|t| seconds("slow_callback_duration", t, false))
            .transpose()?;
        let mode = mode::choose(handler, protocol)?;
        let unix_file = address
            .as_deref()
            .is_some_and(|a| a.starts_with("unix:") && !a.starts_with("unix:@"));
        if unix_mode.is_some() && !unix_file {
            return Err(Error::Value(
                "pygev: unix_mode applies to a Unix socket file (\"unix:/path\") only".into(),
            )
            .into());
        }
        let protocol = mode.loop_protocol();
        let core = match (&address, socket) {
            (Some(address), _) => pygev_core::Server::bind(address, config.clone(), protocol),
            (None, Some(fd)) => pygev_core::Server::adopt(fd, config.clone(), protocol),
            (None, None) => pygev_core::Server::without_listener(config.clone(), protocol),
        };
        let core = core.map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidInput {
                Error::Io(e)
            } else {
                let address = address.as_deref().unwrap_or("");
                Error::Os(
                    e.raw_os_error(),
                    format!("pygev: cannot bind {address}: {e}"),
                )
            }
        })?;
        Ok(Server {
            shared: Arc::new(Shared::new(
                core.queue().clone(),
                mode,
                (
                    config.max_write_buffer,
                    (config.write_high_water, config.write_low_water),
                ),
                core.ids().clone(),
            )),
            address: core.local_addr().cloned(),
            core: Mutex::new(Some(core)),
            handler: Mutex::new(Some(handler.clone().unbind())),
            state: AtomicU8::new(BOUND),
            config,
            slow_callback_duration,
            serving: Mutex::new(None),
            ws_framings: ws_client::Framings::default(),
        })
    }

    /// Hands the listening socket to the caller before `start()`: a duplicate of it, as a
    /// descriptor the caller owns, so that other processes accept from it too; a Unix
    /// socket file is then the caller's to remove. `None` without a listener or with one
    /// SO_REUSEPORT socket per loop. (For `pygev.run`'s workers.)
    fn _share_listener(&self) -> PyResult<Option<i32>> {
        let mut core = self.lock_core();
        let Some(core) = core.as_mut() else {
            return Err(Error::State("pygev: the server has started or stopped".into()).into());
        };
        Ok(core
            .share_listener()?
            .map(std::os::fd::IntoRawFd::into_raw_fd))
    }

    /// The bound address: `(host, port)` (with the real port when 0 was asked), or the
    /// `"unix:..."` address of a Unix socket.
    #[getter]
    fn address(&self, py: Python<'_>) -> Py<PyAny> {
        match &self.address {
            Some(address) => address_object(py, address),
            None => py.None(),
        }
    }

    /// Dials `address` from the server's loops; returns a `concurrent.futures.Future`
    /// that resolves to the `Connection` once connected (just before `on_connect`), or
    /// fails with the `OSError` the connect failed with (`ConnectionRefusedError`,
    /// `TimeoutError` after `timeout` seconds, `ConnectionAbortedError` when the server
    /// stopped first). Before `start()` the request waits for it. `handler` and `protocol`
    /// default to the server's; a `protocol` of its own frames this connection only.
    /// `tls` (a `pygev.TLS`, or `True` for the system's roots) speaks TLS to a server that
    /// must be `server_hostname` (default: the address's host).
    ///
    /// A `ws://` or `wss://` URL dials a WebSocket server: the handler (this one or the
    /// server's) is a `pygev.WebSocketHandler`, `protocol` a `pygev.WebSocket` (default
    /// `pygev.WebSocket()`), and `headers`, `subprotocols` and `origin` go into the upgrade
    /// request. The future resolves once the server accepted the upgrade; a refusal fails
    /// it with `pygev.WebSocketHandshakeError` (status, headers, body; redirects are
    /// reported, not followed), no answer within the handshake timeout with
    /// `TimeoutError`. `wss://` speaks TLS (`tls=True` unless a `pygev.TLS` is given).
    /// Thread-safe, callable from callbacks.
    #[pyo3(signature = (
        address, handler = None, protocol = None, *, timeout = 10.0, tls = None,
        server_hostname = None, headers = None, subprotocols = None, origin = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn connect(
        &self,
        py: Python<'_>,
        address: &Bound<'_, PyAny>,
        handler: Option<&Bound<'_, PyAny>>,
        protocol: Option<&Bound<'_, PyAny>>,
        timeout: f64,
        tls: Option<&Bound<'_, PyAny>>,
        server_hostname: Option<String>,
        headers: Option<&Bound<'_, PyAny>>,
        subprotocols: Option<Vec<String>>,
        origin: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let asks = ws_client::Asks {
            headers: ws_client::header_pairs(headers)?,
            subprotocols: subprotocols.unwrap_or_default(),
            origin,
        };
        self.dial(
            py,
            address,
            handler,
            protocol,
            timeout,
            tls,
            server_hostname,
            asks,
        )
    }

    /// Loads `tls`'s certificates and keys and uses them for the connections accepted
    /// from now on; those made before keep theirs. On an error (named file and reason) the
    /// certificates in use stay. The handshake timeout stays the server's. Thread-safe.
    fn reload_tls(&self, py: Python<'_>, tls: Py<Tls>) -> PyResult<()> {
        let Some(server) = &self.config.tls else {
            return Err(
                Error::State("pygev: reload_tls() needs a server made with tls=".into()).into(),
            );
        };
        py.detach(|| tls.get().reload(server))?;
        Ok(())
    }

    /// Number of loop threads.
    #[getter]
    fn num_loops(&self) -> usize {
        self.config.num_loops
    }

    /// Whether callbacks are timed (the histogram `stats()["callback_durations"]`).
    #[getter]
    fn time_callbacks(&self) -> bool {
        self.shared.callback_times.enabled()
    }

    #[setter]
    fn set_time_callbacks(&self, enabled: bool) {
        self.shared.callback_times.set_enabled(enabled);
    }

    /// Serves until `stop()` (or Ctrl+C): blocks the calling thread, which runs the
    /// callbacks (`pygev.Server.start` serves a handler that awaits in an asyncio loop
    /// instead).
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        self.run_blocking(py)
    }

    /// Whether a handler callback is an `async def` (then `start()` serves in an asyncio
    /// loop of its own; see `pygev/_server.py`).
    fn _handler_awaits(&self, py: Python<'_>) -> PyResult<bool> {
        let callbacks = self.callbacks(py)?;
        let inspect = py.import("inspect")?;
        let names = [
            Some(&callbacks.on_connect),
            Some(&callbacks.on_message),
            Some(&callbacks.on_close),
            callbacks.on_handshake.as_ref(),
        ];
        for callback in names.into_iter().flatten() {
            if inspect
                .call_method1("iscoroutinefunction", (callback,))?
                .is_truthy()?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `serve()`'s first step (see `pygev/_server.py`): starts the loops and returns the
    /// descriptor that becomes readable when the dispatcher has work (the dispatch queue's
    /// doorbell); `None` when `stop()` came first.
    fn _serve_start(&self, py: Python<'_>) -> PyResult<Option<i32>> {
        self.serve_start(py)
    }

    /// One turn of `serve()`: handles what the loops queued, without waiting. Returns
    /// `(again, next_timer)`: call again at once, or after `next_timer` seconds (the
    /// doorbell rings for anything sooner); `None` once the server has stopped.
    fn _serve_turn(&self, py: Python<'_>) -> PyResult<Option<(bool, Option<f64>)>> {
        self.serve_turn(py)
    }

    /// Stops the server: stops accepting, handles what was read, flushes pending output
    /// (bounded by `drain_timeout`), calls `on_close` for every connection, closes every
    /// socket; then `start()` returns. Thread-safe, callable from callbacks, idempotent;
    /// before `start()` it just releases the listening socket.
    fn stop(&self, py: Python<'_>) {
        let mut slot = self.lock_core();
        if let Some(mut core) = slot.take() {
            core.close_listeners();
            // Under the lock, so a concurrent start() sees the state with the core gone.
            self.state.store(STOPPED_BEFORE_START, Ordering::Release);
            drop(slot);
            self.shared.clear_timers();
            self.shared
                .dials
                .abort_all(py, "pygev: the server was stopped before it started");
            return;
        }
        drop(slot);
        self.shared.queue.request_stop();
    }

    /// Runs `callback()` once, `delay` seconds from now, on the dispatcher thread.
    fn run_after(
        &self,
        py: Python<'_>,
        delay: f64,
        callback: &Bound<'_, PyAny>,
    ) -> PyResult<Py<Timer>> {
        let delay = seconds("delay", delay, true)?;
        self.schedule(py, delay, None, callback)
    }

    /// Runs `callback()` every `interval` seconds, on the dispatcher thread.
    fn run_every(
        &self,
        py: Python<'_>,
        interval: f64,
        callback: &Bound<'_, PyAny>,
    ) -> PyResult<Py<Timer>> {
        let interval = seconds("interval", interval, false)?;
        self.schedule(py, interval, Some(interval), callback)
    }

    /// Counters: connections, accepted, dialed, connect_failed, closed, closed_by_reason,
    /// bytes_in, bytes_out, messages_in, events_dispatched, batches_dispatched, max_batch,
    /// loop_wakeups, read_pauses, input_pauses, write_buffered, dispatch_pending,
    /// dispatch_queue_depth, timers_queued, callback_durations, and `loops` (the loop
    /// counters per loop).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let loops = self.shared.loops.get().map_or(&[][..], |l| &l[..]);
        let snapshots: Vec<LoopStatsSnapshot> =
            loops.iter().map(|h| h.stats().snapshot()).collect();
        let mut total = LoopStatsSnapshot::default();
        for s in &snapshots {
            total.add(s);
        }
        let dict = snapshot_dict(py, &total)?;
        let stats = &self.shared.stats;
        dict.set_item("events_dispatched", stats.events.load(Ordering::Relaxed))?;
        dict.set_item("batches_dispatched", stats.batches.load(Ordering::Relaxed))?;
        dict.set_item("max_batch", stats.max_batch.load(Ordering::Relaxed))?;
        let pending: Vec<usize> = loops.iter().map(|h| h.dispatch_pending()).collect();
        dict.set_item("dispatch_pending", pending.iter().sum::<usize>())?;
        dict.set_item("dispatch_queue_depth", self.shared.queue.queued_events())?;
        dict.set_item("timers_queued", self.shared.queue.timers_queued())?;
        let histogram = self.shared.callback_times.snapshot();
        let durations = PyDict::new(py);
        let count = histogram.buckets.last().map_or(0, |&(_, n)| n);
        durations.set_item("buckets", histogram.buckets)?;
        durations.set_item("count", count)?;
        durations.set_item("sum", histogram.sum_seconds)?;
        dict.set_item("callback_durations", durations)?;
        let per_loop = PyList::empty(py);
        for (s, pending) in snapshots.iter().zip(pending) {
            let loop_dict = snapshot_dict(py, s)?;
            loop_dict.set_item("dispatch_pending", pending)?;
            per_loop.append(loop_dict)?;
        }
        dict.set_item("loops", per_loop)?;
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        let state = match self.state.load(Ordering::Acquire) {
            BOUND => "bound",
            RUNNING => "running",
            _ => "stopped",
        };
        let address = self
            .address
            .as_ref()
            .map_or_else(|| "(no listener)".to_string(), |a| a.to_string());
        format!(
            "<pygev.Server {address} loops={} {state}>",
            self.config.num_loops
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(handler) = self.handler.try_lock() {
            visit.call(handler.as_ref())?;
        }
        if let Ok(timers) = self.shared.timers.try_lock() {
            for timer in timers.values() {
                visit.call(timer)?;
            }
        }
        self.shared.mode.traverse(&visit)?;
        if let Ok(serving) = self.serving.try_lock() {
            if let Some(serving) = serving.as_ref() {
                serving.traverse(&visit)?;
            }
        }
        self.shared.drains.traverse(&visit)?;
        self.shared.dials.traverse(&visit)
    }

    fn __clear__(&self) {
        let handler = self.lock_handler().take();
        drop(handler);
        self.shared.clear_timers();
        self.shared.mode.clear();
        self.shared.dials.clear();
        self.shared.drains.clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Timers may outlive the server (held by the handler); they must not keep their
        // callbacks, or the cycle handler -> timer -> callback -> handler could never go.
        self.shared.clear_timers();
    }
}

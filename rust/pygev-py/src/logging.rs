//! Routes the core's `log` records to Python's `logging` without loop threads ever taking
//! the GIL: records are queued here and emitted by the dispatcher, which holds it anyway.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Once};

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Records kept while nobody emits them; older ones are dropped past this.
const MAX_QUEUED: usize = 10_000;

static RECORDS: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());
static HAS_RECORDS: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();

struct QueueLogger;

impl log::Log for QueueLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut records = RECORDS.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= MAX_QUEUED {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        records.push((record.level(), record.args().to_string()));
        HAS_RECORDS.store(true, Ordering::Release);
    }

    fn flush(&self) {}
}

static LOGGER: QueueLogger = QueueLogger;

/// Installs the queueing logger (once) and matches its level to the `pygev` Python logger.
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    INSTALL.call_once(|| {
        let _ = log::set_logger(&LOGGER);
    });
    let level: i32 = pygev_logger(py)?
        .call_method0("getEffectiveLevel")?
        .extract()?;
    log::set_max_level(match level {
        l if l <= 10 => log::LevelFilter::Debug,
        l if l <= 20 => log::LevelFilter::Info,
        l if l <= 30 => log::LevelFilter::Warn,
        _ => log::LevelFilter::Error,
    });
    Ok(())
}

/// The `pygev` logger of Python's `logging`.
pub(crate) fn pygev_logger(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import("logging")?.call_method1("getLogger", ("pygev",))
}

/// Emits the queued records on the `pygev` logger. Cheap when there are none.
pub(crate) fn emit_pending(py: Python<'_>) {
    if !HAS_RECORDS.swap(false, Ordering::AcqRel) {
        return;
    }
    let records = std::mem::take(&mut *RECORDS.lock().unwrap_or_else(|e| e.into_inner()));
    let Ok(logger) = pygev_logger(py) else {
        return;
    };
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let _ = logger.call_method1(
            "warning",
            (format!("pygev: {dropped} log records dropped (queue full)"),),
        );
    }
    for (level, message) in records {
        let level = match level {
            log::Level::Error => 40,
            log::Level::Warn => 30,
            log::Level::Info => 20,
            log::Level::Debug | log::Level::Trace => 10,
        };
        let _ = logger.call_method1("log", (level, message));
    }
}

/// Logs `message` with the traceback of `err` on the `pygev` logger.
pub(crate) fn log_exception(py: Python<'_>, message: &str, err: &PyErr) {
    let result = pygev_logger(py).and_then(|logger| {
        let kwargs = PyDict::new(py);
        // A tuple, not the exception: before Python 3.12 the value alone loses its traceback.
        let exc_info = (err.get_type(py), err.value(py), err.traceback(py));
        kwargs.set_item("exc_info", exc_info)?;
        logger.call_method("error", (message,), Some(&kwargs))
    });
    if result.is_err() {
        err.print(py); // logging itself is broken: stderr is all that is left
    }
}

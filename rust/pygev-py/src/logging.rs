//! Routes the core's `log` records to Python's `logging` without loop threads ever taking
//! the GIL: records are queued here with what the loop thread knew when it logged (time,
//! thread, source location) and emitted by the dispatcher, which holds the GIL anyway.
//!
//! The level follows the `pygev` Python logger: [`refresh_level`] reads it again at most
//! every [`LEVEL_CHECK_INTERVAL`], so a changed level takes effect without a restart.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pygev_core::DispatchQueue;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Records kept while nobody emits them; older ones are dropped past this.
const MAX_QUEUED: usize = 10_000;

/// How often the dispatcher looks at the `pygev` logger's level again.
pub(crate) const LEVEL_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// A record as a loop thread made it.
struct Record {
    level: log::Level,
    message: String,
    created: SystemTime,
    thread_name: String,
    /// `threading.get_ident()`'s value for the thread: its `pthread_t`.
    thread_ident: u64,
    file: Option<Cow<'static, str>>,
    line: Option<u32>,
    module: Option<Cow<'static, str>>,
}

static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());
static HAS_RECORDS: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();
/// The dispatch queues of the servers running: the first record queued wakes them, so
/// that it is emitted soon even on an idle server.
static WAKERS: Mutex<Vec<Weak<DispatchQueue>>> = Mutex::new(Vec::new());
/// When [`refresh_level`] looks at the level next.
static NEXT_LEVEL_CHECK: Mutex<Option<Instant>> = Mutex::new(None);

struct QueueLogger;

impl log::Log for QueueLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let created = SystemTime::now();
        let thread = std::thread::current();
        let record = Record {
            level: record.level(),
            message: record.args().to_string(),
            created,
            thread_name: thread.name().unwrap_or("unnamed").to_owned(),
            // SAFETY: pthread_self has no preconditions and cannot fail.
            thread_ident: unsafe { libc::pthread_self() } as u64,
            file: record
                .file_static()
                .map(Cow::Borrowed)
                .or_else(|| record.file().map(|f| Cow::Owned(f.to_owned()))),
            line: record.line(),
            module: record
                .module_path_static()
                .map(Cow::Borrowed)
                .or_else(|| record.module_path().map(|m| Cow::Owned(m.to_owned()))),
        };
        {
            let mut records = RECORDS.lock().unwrap_or_else(|e| e.into_inner());
            if records.len() >= MAX_QUEUED {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                return;
            }
            records.push(record);
        }
        if !HAS_RECORDS.swap(true, Ordering::AcqRel) {
            wake_dispatchers();
        }
    }

    fn flush(&self) {}
}

static LOGGER: QueueLogger = QueueLogger;

/// Wakes every running server's dispatcher: whichever comes first emits the records.
fn wake_dispatchers() {
    let wakers = WAKERS.lock().unwrap_or_else(|e| e.into_inner());
    for queue in wakers.iter().filter_map(Weak::upgrade) {
        queue.wake();
    }
}

/// Installs the queueing logger (once), matches its level to the `pygev` Python logger,
/// and has records queued from now on wake `queue`'s dispatcher.
pub(crate) fn install(py: Python<'_>, queue: &Arc<DispatchQueue>) -> PyResult<()> {
    INSTALL.call_once(|| {
        let _ = log::set_logger(&LOGGER);
    });
    {
        let mut wakers = WAKERS.lock().unwrap_or_else(|e| e.into_inner());
        wakers.retain(|w| w.strong_count() > 0);
        wakers.push(Arc::downgrade(queue));
    }
    set_level(py)
}

/// Matches the core's level to the `pygev` Python logger's (its effective level, and
/// `logging.disable()`), if it was last done [`LEVEL_CHECK_INTERVAL`] ago.
pub(crate) fn refresh_level(py: Python<'_>) {
    let now = Instant::now();
    {
        let mut next = NEXT_LEVEL_CHECK.lock().unwrap_or_else(|e| e.into_inner());
        if next.is_some_and(|next| now < next) {
            return;
        }
        *next = Some(now + LEVEL_CHECK_INTERVAL);
    }
    if let Err(err) = set_level(py) {
        logging_failed(py, &err, || {
            log_exception(py, "pygev: cannot read the log level", &err)
        });
    }
}

/// Every failure of a Python logging call made for the dispatcher comes here. A Ctrl+C
/// that came while Python ran that logging code surfaced as its `KeyboardInterrupt`: it is
/// raised again at the dispatcher's next signal check (which stops the server), not lost
/// with the logging error; any other error gets `otherwise`. Returns whether `err` was a
/// Ctrl+C.
fn logging_failed(py: Python<'_>, err: &PyErr, otherwise: impl FnOnce()) -> bool {
    if !err.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) {
        otherwise();
        return false;
    }
    // SAFETY: PyErr_SetInterrupt only marks SIGINT as tripped for the next
    // PyErr_CheckSignals; it may be called from any thread, and we hold the GIL.
    unsafe { pyo3::ffi::PyErr_SetInterrupt() };
    true
}

fn set_level(py: Python<'_>) -> PyResult<()> {
    let logger = pygev_logger(py)?;
    let mut filter = log::LevelFilter::Off;
    for (level, python_level) in [
        (log::LevelFilter::Debug, 10),
        (log::LevelFilter::Info, 20),
        (log::LevelFilter::Warn, 30),
        (log::LevelFilter::Error, 40),
    ] {
        if logger
            .call_method1("isEnabledFor", (python_level,))?
            .is_truthy()?
        {
            filter = level;
            break;
        }
    }
    log::set_max_level(filter);
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
    let logger = match pygev_logger(py) {
        Ok(logger) => logger,
        Err(err) => {
            logging_failed(py, &err, || err.print(py));
            return;
        }
    };
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let warned = logger.call_method1(
            "warning",
            (format!("pygev: {dropped} log records dropped (queue full)"),),
        );
        if let Err(err) = warned {
            logging_failed(py, &err, || err.print(py));
        }
    }
    for record in records {
        if let Err(err) = emit(&logger, record) {
            // Logging itself is broken: stderr is all that is left.
            if logging_failed(py, &err, || err.print(py)) {
                return; // (the rest of this batch of records is dropped)
            }
        }
    }
}

/// Hands one record to `logger`'s handlers as a `logging.LogRecord` that keeps the loop
/// thread's time, thread and source location.
fn emit(logger: &Bound<'_, PyAny>, record: Record) -> PyResult<()> {
    let level = match record.level {
        log::Level::Error => 40,
        log::Level::Warn => 30,
        log::Level::Info => 20,
        log::Level::Debug | log::Level::Trace => 10,
    };
    if !logger.call_method1("isEnabledFor", (level,))?.is_truthy()? {
        return Ok(()); // the level went up since it was queued
    }
    let py = logger.py();
    let made = logger.call_method1(
        "makeRecord",
        (
            logger.getattr("name")?,
            level,
            record.file.as_deref().unwrap_or("(unknown file)"),
            record.line.unwrap_or(0),
            record.message,
            (),
            py.None(),
            record.module.as_deref(),
        ),
    )?;
    // makeRecord stamped the record now; move it back to when the loop thread logged it
    // (relativeCreated by the same amount, whatever unit logging keeps its start in).
    let now: f64 = made.getattr("created")?.extract()?;
    let since_epoch = record
        .created
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let created = since_epoch.as_secs_f64();
    let relative: f64 = made.getattr("relativeCreated")?.extract()?;
    made.setattr("created", created)?;
    made.setattr("msecs", f64::from(since_epoch.subsec_millis()))?;
    made.setattr("relativeCreated", relative - (now - created) * 1000.0)?;
    // SAFETY: pthread_self has no preconditions and cannot fail.
    if record.thread_ident != unsafe { libc::pthread_self() } as u64 {
        // Another thread's (a loop's): Python's own names are right for this one.
        made.setattr("threadName", record.thread_name)?;
        made.setattr("thread", record.thread_ident)?;
    }
    logger.call_method1("handle", (made,))?;
    Ok(())
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
    if let Err(failed) = result {
        // Logging itself is broken: stderr is all that is left.
        logging_failed(py, &failed, || err.print(py));
    }
}

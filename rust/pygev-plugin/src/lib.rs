//! The C ABI between pygev and protocol plugins, and the helper that builds it from a Rust
//! trait.
//!
//! A plugin is a Python extension module (any binding: PyO3, plain C) that hands pygev a
//! `PyCapsule` named [`CAPSULE_NAME`] whose pointer is a [`ProtocolTable`]: a magic number,
//! an ABI version, flags, and `extern "C"` functions that create and free per-connection
//! state, split input into frames, check and pack outgoing payloads. pygev's loop threads
//! call those functions exactly where they call a built-in framing, so a plugin gets the
//! same batching, limits and failure handling.
//!
//! A Rust plugin implements [`Framing`] and calls [`table`]; the table's functions catch
//! panics at the boundary (the connection is closed with the panic's message) and never
//! unwind into pygev.
//!
//! # Stability
//!
//! [`ABI_VERSION`] changes only when an existing field or a function's meaning changes.
//! New fields are only ever appended, with the version unchanged: `size` tells pygev which
//! ones a table has, and a table of the first version's size keeps working. pygev refuses
//! a table whose magic or version it does not know, or that is smaller than the first
//! version, with a clear error at `Server(...)`, and a table missing a function it calls.
//!
//! # Examples
//!
//! ```
//! use pygev_plugin::{Framing, Frames, Output};
//!
//! /// Every byte is one frame (a toy).
//! struct Bytes;
//!
//! impl Framing for Bytes {
//!     type State = ();
//!     fn name(&self) -> &str { "bytes" }
//!     fn new_state(&self) {}
//!     fn unpack(&self, _: &mut (), input: &[u8], frames: &mut Frames<'_>) -> Result<usize, String> {
//!         for byte in input {
//!             frames.push(std::slice::from_ref(byte));
//!         }
//!         Ok(input.len())
//!     }
//!     fn pack(&self, _: Option<&mut ()>, payload: &[u8], out: &mut Output<'_>) -> Result<(), String> {
//!         out.extend(payload);
//!         Ok(())
//!     }
//! }
//!
//! let table = pygev_plugin::table(Bytes);
//! assert_eq!(table.magic, pygev_plugin::MAGIC);
//! // SAFETY: the table is not used afterwards.
//! unsafe { pygev_plugin::free_table(&table) };
//! ```
#![deny(missing_docs)]

pub mod reference;

use std::ffi::{c_char, c_void, CStr, CString};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The name of the capsule a plugin hands to pygev (`protocol=capsule`).
pub const CAPSULE_NAME: &CStr = c"pygev.protocol";

/// The first field of every table: "pygevPRO" in ASCII.
pub const MAGIC: u64 = u64::from_be_bytes(*b"pygevPRO");

/// The ABI this crate builds and pygev reads.
pub const ABI_VERSION: u32 = 1;

/// A function returned normally.
pub const OK: i32 = 0;
/// A function refused its input; the message is in the [`ErrorOut`].
pub const ERROR: i32 = 1;
/// A function panicked; the panic's message is in the [`ErrorOut`].
pub const PANIC: i32 = 2;

/// Flag: `pack` ignores the connection's state, so pygev may pack in its dispatcher (many
/// replies merged into one write), passing a null state.
pub const FLAG_PACK_STATELESS: u32 = 1;
/// Flag: `pack` appends the payload unchanged.
pub const FLAG_PACK_IDENTITY: u32 = 1 << 1;

/// Receives one frame: `sink` is pygev's, `data`/`len` the frame (copied before returning).
pub type PushFn = unsafe extern "C" fn(sink: *mut c_void, data: *const u8, len: usize);
/// Appends bytes to pygev's output buffer `out` (copied before returning).
pub type AppendFn = unsafe extern "C" fn(out: *mut c_void, data: *const u8, len: usize);

/// Where a function writes why it failed (UTF-8): `append(sink, bytes, len)`, any number
/// of times. Nothing is allocated unless a message is written.
#[repr(C)]
pub struct ErrorOut {
    /// pygev's message buffer.
    pub sink: *mut c_void,
    /// Appends to it.
    pub append: AppendFn,
}

/// What a plugin exports: everything pygev needs to run a framing.
///
/// Every function gets `instance` (the plugin's configured framing) first. `state` is what
/// `new_state` returned for the connection (it may be null) and is only ever used by one
/// thread at a time. Functions may be called from any thread, and from several at once
/// (with different states). They must not call into Python: `check` and `pack` may run on
/// the dispatcher's thread, inside pygev's locks. Every function pointer must be non-null
/// except `free_instance`, which pygev never calls.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProtocolTable {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// [`FLAG_PACK_STATELESS`], [`FLAG_PACK_IDENTITY`].
    pub flags: u32,
    /// `size_of::<ProtocolTable>()` of the plugin's ABI: fields are only appended.
    pub size: usize,
    /// The plugin's configured framing, passed to every function.
    pub instance: *const c_void,
    /// A short name for log lines: NUL-terminated UTF-8, alive as long as `instance`.
    pub name: *const c_char,
    /// The most unparsed input a connection may need to hold for one frame (0: no bound);
    /// pygev raises its `max_input_buffer` to it.
    pub max_buffered_input: usize,
    /// Creates a connection's state (null if the framing keeps none: then `unpack` and
    /// `pack` get null too).
    pub new_state: unsafe extern "C" fn(instance: *const c_void) -> *mut c_void,
    /// Frees a state made by `new_state`; must accept null.
    pub free_state: unsafe extern "C" fn(instance: *const c_void, state: *mut c_void),
    /// Pushes every whole frame at the start of `input` through `push`, and stores in
    /// `used` how many bytes those frames took (the rest is offered again with more bytes
    /// after it). Returns [`OK`], or [`ERROR`]/[`PANIC`] to close the connection.
    pub unpack: unsafe extern "C" fn(
        instance: *const c_void,
        state: *mut c_void,
        input: *const u8,
        len: usize,
        sink: *mut c_void,
        push: PushFn,
        used: *mut usize,
        error: *mut ErrorOut,
    ) -> i32,
    /// Whether a payload can be sent: [`OK`], or [`ERROR`] with the reason (raised to the
    /// caller of `send` as `ValueError`).
    pub check: unsafe extern "C" fn(
        instance: *const c_void,
        payload: *const u8,
        len: usize,
        error: *mut ErrorOut,
    ) -> i32,
    /// Appends the wire form of a checked payload through `append`. `state` is null when
    /// pygev packs away from the loop ([`FLAG_PACK_STATELESS`]).
    pub pack: unsafe extern "C" fn(
        instance: *const c_void,
        state: *mut c_void,
        payload: *const u8,
        len: usize,
        out: *mut c_void,
        append: AppendFn,
        error: *mut ErrorOut,
    ) -> i32,
    /// Frees `instance` and `name` (the capsule's destructor calls it, never pygev).
    pub free_instance: unsafe extern "C" fn(instance: *const c_void),
}

// SAFETY: the table only holds function pointers and a pointer to an `Instance<F>`, whose
// `F: Framing` is `Send + Sync`; the functions may be called from any thread.
unsafe impl Send for ProtocolTable {}
// SAFETY: as above; nothing in the table is mutated after it is built.
unsafe impl Sync for ProtocolTable {}

/// A framing written in Rust, for [`table`].
pub trait Framing: Send + Sync + 'static {
    /// Per-connection state (`()` if none).
    type State: Send + 'static;

    /// A short name for log lines.
    fn name(&self) -> &str;

    /// Creates a connection's state.
    fn new_state(&self) -> Self::State;

    /// Pushes every whole frame at the start of `input` and returns how many bytes they
    /// took. An error closes the connection, with the message in pygev's log; a declared
    /// length over the framing's limit should be refused before more input is awaited.
    fn unpack(
        &self,
        state: &mut Self::State,
        input: &[u8],
        frames: &mut Frames<'_>,
    ) -> Result<usize, String>;

    /// Whether `payload` can be sent (the error is raised to the caller as `ValueError`).
    fn check(&self, _payload: &[u8]) -> Result<(), String> {
        Ok(())
    }

    /// Appends the wire form of a checked `payload`. `state` is `None` when pygev packs in
    /// its dispatcher (only if [`Framing::pack_is_stateless`]).
    fn pack(
        &self,
        state: Option<&mut Self::State>,
        payload: &[u8],
        out: &mut Output<'_>,
    ) -> Result<(), String>;

    /// The most unparsed input one frame may need (0: no bound).
    fn max_buffered_input(&self) -> usize {
        0
    }

    /// Whether `pack` ignores the state.
    fn pack_is_stateless(&self) -> bool {
        false
    }

    /// Whether `pack` appends the payload unchanged.
    fn pack_is_identity(&self) -> bool {
        false
    }
}

/// Where [`Framing::unpack`] pushes frames.
pub struct Frames<'a> {
    sink: *mut c_void,
    push: PushFn,
    _borrow: PhantomData<&'a mut ()>,
}

impl Frames<'_> {
    /// Hands over one whole frame (copied at once).
    pub fn push(&mut self, frame: &[u8]) {
        // SAFETY: `push` and `sink` came together from pygev for the duration of this
        // unpack call, and `frame` is a valid slice.
        unsafe { (self.push)(self.sink, frame.as_ptr(), frame.len()) }
    }
}

/// Where [`Framing::pack`] appends the wire form.
pub struct Output<'a> {
    out: *mut c_void,
    append: AppendFn,
    _borrow: PhantomData<&'a mut ()>,
}

impl Output<'_> {
    /// Appends `bytes` (copied at once).
    pub fn extend(&mut self, bytes: &[u8]) {
        // SAFETY: `append` and `out` came together from pygev for the duration of this
        // pack call, and `bytes` is a valid slice.
        unsafe { (self.append)(self.out, bytes.as_ptr(), bytes.len()) }
    }
}

/// What `instance` points to.
struct Instance<F> {
    framing: F,
    name: CString,
}

/// Builds the table for `framing`. The table owns `framing` until [`free_table`].
pub fn table<F: Framing>(framing: F) -> ProtocolTable {
    let name = CString::new(framing.name().replace('\0', " ")).unwrap_or_default();
    let mut flags = 0;
    if framing.pack_is_stateless() {
        flags |= FLAG_PACK_STATELESS;
    }
    if framing.pack_is_identity() {
        flags |= FLAG_PACK_IDENTITY;
    }
    let max_buffered_input = framing.max_buffered_input();
    let instance = Box::new(Instance { framing, name });
    let name_ptr = instance.name.as_ptr();
    ProtocolTable {
        magic: MAGIC,
        abi_version: ABI_VERSION,
        flags,
        size: std::mem::size_of::<ProtocolTable>(),
        instance: Box::into_raw(instance).cast_const().cast(),
        name: name_ptr,
        max_buffered_input,
        new_state: new_state::<F>,
        free_state: free_state::<F>,
        unpack: unpack::<F>,
        check: check::<F>,
        pack: pack::<F>,
        free_instance: free_instance::<F>,
    }
}

/// Makes the capsule pygev takes as `protocol=`, with PyO3 (0.29 or later) from the calling
/// crate: `pygev_plugin::capsule!(py, MyFraming::new())` is a
/// `PyResult<Bound<'py, PyCapsule>>` named [`CAPSULE_NAME`] that owns the table and frees
/// it when Python frees the capsule. Plugin code needs no `unsafe`.
#[macro_export]
macro_rules! capsule {
    ($py:expr, $framing:expr) => {{
        fn free_table(table: $crate::ProtocolTable, _context: *mut ::std::ffi::c_void) {
            // SAFETY: the table was made by `table()` for this capsule only, and pygev holds
            // the capsule while it uses the table, so nothing calls it once it is freed.
            unsafe { $crate::free_table(&table) }
        }
        ::pyo3::types::PyCapsule::new_with_value_and_destructor(
            $py,
            $crate::table($framing),
            $crate::CAPSULE_NAME,
            free_table,
        )
    }};
}

/// Frees what [`table`] allocated.
///
/// # Safety
///
/// `table` must come from [`table`], must not be freed twice, and no function of it may be
/// called afterwards.
pub unsafe fn free_table(table: &ProtocolTable) {
    // SAFETY: the caller guarantees the table is live and freed once.
    unsafe { (table.free_instance)(table.instance) }
}

/// The `len` bytes at `data` (which may be null or dangling when `len` is 0).
///
/// # Safety
///
/// When `len > 0`, `data` must point to `len` readable bytes that outlive `'a`.
pub unsafe fn bytes<'a>(data: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        // SAFETY: per the contract.
        unsafe { std::slice::from_raw_parts(data, len) }
    }
}

/// The framing behind `instance`.
///
/// # Safety
///
/// `instance` must be the pointer [`table::<F>`] made, not yet freed.
unsafe fn framing<'a, F: Framing>(instance: *const c_void) -> &'a F {
    // SAFETY: per the contract, `instance` points to a live `Instance<F>`.
    unsafe { &(*instance.cast::<Instance<F>>()).framing }
}

/// Writes `message` into `error`.
///
/// # Safety
///
/// `error` must be null or point to a valid [`ErrorOut`].
unsafe fn report(error: *mut ErrorOut, message: &str) {
    if error.is_null() {
        return;
    }
    // SAFETY: per the contract, `error` points to a valid ErrorOut whose `append` takes
    // `message.len()` readable bytes.
    unsafe { ((*error).append)((*error).sink, message.as_ptr(), message.len()) }
}

/// Runs `f`, turning an `Err` or a panic into [`ERROR`] or [`PANIC`] with a message.
///
/// # Safety
///
/// As [`report`].
unsafe fn guarded(error: *mut ErrorOut, what: &str, f: impl FnOnce() -> Result<(), String>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => OK,
        Ok(Err(message)) => {
            // SAFETY: forwarded contract.
            unsafe { report(error, &message) };
            ERROR
        }
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            // The payload's own drop might panic: keep that from unwinding out.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(panic)));
            // SAFETY: forwarded contract.
            unsafe { report(error, &format!("the plugin panicked in {what}: {detail}")) };
            PANIC
        }
    }
}

unsafe extern "C" fn new_state<F: Framing>(instance: *const c_void) -> *mut c_void {
    // SAFETY: pygev passes the table's own instance.
    let framing = unsafe { framing::<F>(instance) };
    // A panic here cannot be reported: it becomes a null state, and unpack refuses it.
    match catch_unwind(AssertUnwindSafe(|| framing.new_state())) {
        Ok(state) => Box::into_raw(Box::new(state)).cast(),
        Err(_) => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn free_state<F: Framing>(_instance: *const c_void, state: *mut c_void) {
    if !state.is_null() {
        // SAFETY: a non-null state was made by `new_state::<F>` and is freed once.
        let state = unsafe { Box::from_raw(state.cast::<F::State>()) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(state)));
    }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn unpack<F: Framing>(
    instance: *const c_void,
    state: *mut c_void,
    input: *const u8,
    len: usize,
    sink: *mut c_void,
    push: PushFn,
    used: *mut usize,
    error: *mut ErrorOut,
) -> i32 {
    // SAFETY: pygev passes the table's own instance.
    let framing = unsafe { framing::<F>(instance) };
    if state.is_null() {
        // SAFETY: pygev passes a valid ErrorOut.
        unsafe { report(error, "the plugin could not create the connection's state") };
        return ERROR;
    }
    // SAFETY: a non-null state was made by `new_state::<F>`; pygev uses it from one thread
    // at a time.
    let state = unsafe { &mut *state.cast::<F::State>() };
    // SAFETY: pygev passes `len` readable bytes at `input`.
    let input = unsafe { bytes(input, len) };
    let mut frames = Frames {
        sink,
        push,
        _borrow: PhantomData,
    };
    let mut taken = 0;
    // SAFETY: pygev passes a valid ErrorOut.
    let code = unsafe {
        guarded(error, "unpack", || {
            taken = framing.unpack(state, input, &mut frames)?;
            if taken > input.len() {
                return Err(format!(
                    "unpack reported {taken} bytes used of {}",
                    input.len()
                ));
            }
            Ok(())
        })
    };
    if code == OK {
        // SAFETY: pygev passes a writable `used`.
        unsafe { *used = taken };
    }
    code
}

unsafe extern "C" fn check<F: Framing>(
    instance: *const c_void,
    payload: *const u8,
    len: usize,
    error: *mut ErrorOut,
) -> i32 {
    // SAFETY: pygev passes the table's own instance.
    let framing = unsafe { framing::<F>(instance) };
    // SAFETY: pygev passes `len` readable bytes at `payload`.
    let payload = unsafe { bytes(payload, len) };
    // SAFETY: pygev passes a valid ErrorOut.
    unsafe { guarded(error, "check", || framing.check(payload)) }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn pack<F: Framing>(
    instance: *const c_void,
    state: *mut c_void,
    payload: *const u8,
    len: usize,
    out: *mut c_void,
    append: AppendFn,
    error: *mut ErrorOut,
) -> i32 {
    // SAFETY: pygev passes the table's own instance.
    let framing = unsafe { framing::<F>(instance) };
    let state = if state.is_null() {
        None
    } else {
        // SAFETY: a non-null state was made by `new_state::<F>`; one thread at a time.
        Some(unsafe { &mut *state.cast::<F::State>() })
    };
    // SAFETY: pygev passes `len` readable bytes at `payload`.
    let payload = unsafe { bytes(payload, len) };
    let mut output = Output {
        out,
        append,
        _borrow: PhantomData,
    };
    // SAFETY: pygev passes a valid ErrorOut.
    unsafe { guarded(error, "pack", || framing.pack(state, payload, &mut output)) }
}

unsafe extern "C" fn free_instance<F: Framing>(instance: *const c_void) {
    if !instance.is_null() {
        // SAFETY: `instance` was made by `table::<F>` and is freed once (by its capsule).
        let instance = unsafe { Box::from_raw(instance.cast::<Instance<F>>().cast_mut()) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(instance)));
    }
}

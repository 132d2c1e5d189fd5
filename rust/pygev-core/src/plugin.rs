//! Protocol plugins: a [`pygev_plugin::ProtocolTable`] (a third party's framing, built
//! into its own Python extension) run as an ordinary [`Protocol`].

use std::any::Any;
use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;

use pygev_plugin::{
    bytes, AppendFn, ErrorOut, PushFn, FLAG_PACK_IDENTITY, FLAG_PACK_STATELESS, OK, PANIC,
};
pub use pygev_plugin::{ProtocolTable, ABI_VERSION, CAPSULE_NAME, MAGIC};

use crate::protocols::{FrameSink, Protocol, ProtocolError, ProtocolState};

/// The most of a plugin's error message that is kept.
const ERROR_CAP: usize = 1024;

/// A plugin's framing, run by the loops like a built-in one.
pub struct PluginProtocol {
    table: Table,
    name: String,
    /// Keeps the table (and the plugin's code) alive: the binding's handle on the object
    /// that owns it (the capsule). Every connection's state holds it too, so no state can
    /// outlive the code that frees it.
    owner: Arc<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for PluginProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginProtocol")
            .field("name", &self.name)
            .finish()
    }
}

type NewState = unsafe extern "C" fn(*const c_void) -> *mut c_void;
type FreeState = unsafe extern "C" fn(*const c_void, *mut c_void);
type Unpack = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    *const u8,
    usize,
    *mut c_void,
    PushFn,
    *mut usize,
    *mut ErrorOut,
) -> i32;
type Check = unsafe extern "C" fn(*const c_void, *const u8, usize, *mut ErrorOut) -> i32;
type Pack = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    *const u8,
    usize,
    *mut c_void,
    AppendFn,
    *mut ErrorOut,
) -> i32;

/// Version 1 of the table as pygev reads it: the same layout as [`ProtocolTable`], with
/// every function pointer nullable, so that a table written in C with a missing function
/// is refused instead of being undefined behaviour.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawTableV1 {
    magic: u64,
    abi_version: u32,
    flags: u32,
    size: usize,
    instance: *const c_void,
    name: *const c_char,
    max_buffered_input: usize,
    new_state: Option<NewState>,
    free_state: Option<FreeState>,
    unpack: Option<Unpack>,
    check: Option<Check>,
    pack: Option<Pack>,
    free_instance: Option<unsafe extern "C" fn(*const c_void)>,
}

/// The checked table: every function pygev calls is there.
#[derive(Clone, Copy)]
struct Table {
    flags: u32,
    instance: *const c_void,
    max_buffered_input: usize,
    new_state: NewState,
    free_state: FreeState,
    unpack: Unpack,
    check: Check,
    pack: Pack,
}

// SAFETY: the ABI requires a table's functions to be callable from any thread, and its
// instance to be shareable between them; the table is never mutated.
unsafe impl Send for Table {}
// SAFETY: as above.
unsafe impl Sync for Table {}

/// One connection's plugin state, freed through the table.
struct PluginState {
    ptr: *mut c_void,
    instance: *const c_void,
    free: FreeState,
    /// The plugin stays loaded until this state is freed.
    _owner: Arc<dyn Any + Send + Sync>,
}

// SAFETY: the ABI lets a state move between threads as long as one uses it at a time.
unsafe impl Send for PluginState {}

impl Drop for PluginState {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from this table's `new_state` (it may be null, which the ABI
        // requires `free_state` to accept) and is freed once, here.
        unsafe { (self.free)(self.instance, self.ptr) }
    }
}

impl PluginProtocol {
    /// Checks and adopts the table at `table`.
    ///
    /// # Safety
    ///
    /// `table` must be null or point to readable memory that begins like a
    /// [`ProtocolTable`] (magic, version, flags, size); `size` readable bytes must be
    /// there, and its functions must stay valid while `owner` lives.
    pub unsafe fn from_table(
        table: *const ProtocolTable,
        owner: Box<dyn Any + Send + Sync>,
    ) -> Result<Self, String> {
        if table.is_null() {
            return Err("pygev: the plugin's capsule holds a null table".into());
        }
        // SAFETY: per the contract the head (the same in every ABI version) is readable;
        // read unaligned, as C may have put it anywhere.
        let head = unsafe { std::ptr::read_unaligned(table.cast::<[u64; 2]>()) };
        let magic = head[0];
        let version = head[1].to_ne_bytes()[..4]
            .try_into()
            .map(u32::from_ne_bytes)
            .unwrap_or(0);
        if magic != MAGIC {
            return Err(format!(
                "pygev: not a pygev protocol table (magic {magic:#018x}, expected {MAGIC:#018x})"
            ));
        }
        if version != ABI_VERSION {
            return Err(format!(
                "pygev: the plugin was built for protocol ABI version {version}; this pygev \
                 speaks version {ABI_VERSION} (rebuild the plugin against a matching \
                 pygev-plugin)"
            ));
        }
        // SAFETY: the head is readable (above); `size` follows magic, version and flags.
        let size = unsafe { std::ptr::read_unaligned(table.cast::<u8>().add(16).cast::<usize>()) };
        let needed = std::mem::size_of::<RawTableV1>();
        if size < needed {
            return Err(format!(
                "pygev: the plugin's table has {size} bytes, fewer than version {ABI_VERSION}'s \
                 {needed}"
            ));
        }
        // SAFETY: `size` bytes are readable (the contract) and cover the version-1 fields,
        // whose function pointers are read as nullable; later fields are not read.
        let raw = unsafe { std::ptr::read_unaligned(table.cast::<RawTableV1>()) };
        let missing = |what: &str| format!("pygev: the plugin's table has no {what} function");
        let table = Table {
            flags: raw.flags,
            instance: raw.instance,
            max_buffered_input: raw.max_buffered_input,
            new_state: raw.new_state.ok_or_else(|| missing("new_state"))?,
            free_state: raw.free_state.ok_or_else(|| missing("free_state"))?,
            unpack: raw.unpack.ok_or_else(|| missing("unpack"))?,
            check: raw.check.ok_or_else(|| missing("check"))?,
            pack: raw.pack.ok_or_else(|| missing("pack"))?,
        };
        let name = if raw.name.is_null() {
            "plugin".to_string()
        } else {
            // SAFETY: the ABI requires a NUL-terminated name alive as long as the table.
            unsafe { CStr::from_ptr(raw.name) }
                .to_string_lossy()
                .into_owned()
        };
        Ok(PluginProtocol {
            table,
            name,
            owner: Arc::from(owner),
        })
    }

    fn flag(&self, bit: u32) -> bool {
        self.table.flags & bit != 0
    }

    fn state_ptr(state: &mut ProtocolState) -> *mut c_void {
        state
            .as_mut()
            .and_then(|s| s.downcast_mut::<PluginState>())
            .map_or(std::ptr::null_mut(), |s| s.ptr)
    }

    /// Turns a failed call's code and message into an error.
    fn error(&self, code: i32, what: &str, message: &[u8]) -> ProtocolError {
        let message = String::from_utf8_lossy(message);
        let kind = if code == PANIC { "panicked" } else { "failed" };
        ProtocolError::new(format!(
            "pygev: plugin {} {kind} in {what}: {message}",
            self.name
        ))
    }
}

/// Receives a frame from the plugin.
///
/// # Safety
///
/// `sink` is the `FrameSink` passed to the plugin for this call; `data` has `len` bytes.
unsafe extern "C" fn push_frame(sink: *mut c_void, data: *const u8, len: usize) {
    // SAFETY: the plugin passes `len` readable bytes.
    let frame = unsafe { bytes(data, len) };
    // SAFETY: `sink` is the FrameSink we passed, alive for the duration of the call.
    unsafe { (*sink.cast::<FrameSink>()).push(frame) }
}

/// Receives (part of) a plugin's error message, keeping at most `ERROR_CAP` bytes.
///
/// # Safety
///
/// `sink` is the `Vec<u8>` passed in the call's `ErrorOut`; `data` has `len` bytes.
unsafe extern "C" fn append_message(sink: *mut c_void, data: *const u8, len: usize) {
    // SAFETY: `sink` is the Vec we passed, alive for the duration of the call.
    let message = unsafe { &mut *sink.cast::<Vec<u8>>() };
    let room = ERROR_CAP.saturating_sub(message.len());
    // SAFETY: the plugin passes `len` readable bytes.
    let data = unsafe { bytes(data, len) };
    message.extend_from_slice(&data[..len.min(room)]);
}

/// Receives output bytes from the plugin.
///
/// # Safety
///
/// `out` is the `Vec<u8>` passed to the plugin for this call; `data` has `len` bytes.
unsafe extern "C" fn append_bytes(out: *mut c_void, data: *const u8, len: usize) {
    // SAFETY: the plugin passes `len` readable bytes.
    let data = unsafe { bytes(data, len) };
    // SAFETY: `out` is the Vec we passed, alive for the duration of the call.
    unsafe { (*out.cast::<Vec<u8>>()).extend_from_slice(data) }
}

impl Protocol for PluginProtocol {
    fn name(&self) -> &str {
        &self.name
    }

    fn new_state(&self) -> ProtocolState {
        // SAFETY: the table's own instance, as the ABI requires.
        let ptr = unsafe { (self.table.new_state)(self.table.instance) };
        Some(Box::new(PluginState {
            ptr,
            instance: self.table.instance,
            free: self.table.free_state,
            _owner: self.owner.clone(),
        }))
    }

    fn unpack(
        &self,
        state: &mut ProtocolState,
        input: &[u8],
        frames: &mut FrameSink,
    ) -> Result<usize, ProtocolError> {
        let mut message = Vec::new();
        let mut error = ErrorOut {
            sink: (&mut message as *mut Vec<u8>).cast(),
            append: append_message,
        };
        let mut used = 0usize;
        // SAFETY: every pointer is valid for the call: the input slice, the sink (which
        // `push_frame` casts back), `used` and `error`; the state is this table's.
        let code = unsafe {
            (self.table.unpack)(
                self.table.instance,
                Self::state_ptr(state),
                input.as_ptr(),
                input.len(),
                (frames as *mut FrameSink).cast(),
                push_frame,
                &mut used,
                &mut error,
            )
        };
        if code != OK {
            return Err(self.error(code, "unpack", &message));
        }
        if used > input.len() {
            return Err(ProtocolError::new(format!(
                "pygev: plugin {} reported {used} bytes used of {}",
                self.name,
                input.len()
            )));
        }
        Ok(used)
    }

    fn check_payload(&self, payload: &[u8]) -> Result<(), ProtocolError> {
        let mut message = Vec::new();
        let mut error = ErrorOut {
            sink: (&mut message as *mut Vec<u8>).cast(),
            append: append_message,
        };
        // SAFETY: the payload slice and `error` are valid for the call.
        let code = unsafe {
            (self.table.check)(
                self.table.instance,
                payload.as_ptr(),
                payload.len(),
                &mut error,
            )
        };
        if code != OK {
            let message = String::from_utf8_lossy(&message);
            return Err(ProtocolError::new(format!("pygev: {message}")));
        }
        Ok(())
    }

    fn pack(
        &self,
        state: &mut ProtocolState,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        let mut message = Vec::new();
        let mut error = ErrorOut {
            sink: (&mut message as *mut Vec<u8>).cast(),
            append: append_message,
        };
        // SAFETY: the payload slice, `out` (which `append_bytes` casts back) and `error`
        // are valid for the call; the state is this table's (or null when packing away
        // from the loop, which the plugin allowed with FLAG_PACK_STATELESS).
        let code = unsafe {
            (self.table.pack)(
                self.table.instance,
                Self::state_ptr(state),
                payload.as_ptr(),
                payload.len(),
                (out as *mut Vec<u8>).cast(),
                append_bytes,
                &mut error,
            )
        };
        if code != OK {
            return Err(self.error(code, "pack", &message));
        }
        Ok(())
    }

    fn max_buffered_input(&self) -> usize {
        self.table.max_buffered_input
    }

    fn pack_is_stateless(&self) -> bool {
        self.flag(FLAG_PACK_STATELESS)
    }

    fn pack_is_identity(&self) -> bool {
        self.flag(FLAG_PACK_IDENTITY)
    }
}

//! Protocol plugins: a [`pygev_plugin::ProtocolTable`] (a third party's framing, built
//! into its own Python extension) run as an ordinary [`Protocol`].

use std::any::Any;
use std::ffi::{c_void, CStr};

use pygev_plugin::{bytes, ErrorOut, FLAG_PACK_IDENTITY, FLAG_PACK_STATELESS, OK, PANIC};
pub use pygev_plugin::{ProtocolTable, ABI_VERSION, CAPSULE_NAME, MAGIC};

use crate::protocols::{FrameSink, Protocol, ProtocolError, ProtocolState};

/// The most of a plugin's error message that is kept.
const ERROR_CAP: usize = 1024;

/// A plugin's framing, run by the loops like a built-in one.
pub struct PluginProtocol {
    table: ProtocolTable,
    name: String,
    /// Keeps the table (and the plugin's code) alive: the binding's handle on the object
    /// that owns it (the capsule).
    _owner: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for PluginProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginProtocol")
            .field("name", &self.name)
            .finish()
    }
}

// SAFETY: the ABI requires a table's functions to be callable from any thread, and a
// state to be used by one thread at a time (a connection's state stays in its loop).
unsafe impl Send for PluginProtocol {}
// SAFETY: as above; the table is never mutated.
unsafe impl Sync for PluginProtocol {}

/// One connection's plugin state, freed through the table.
struct PluginState {
    ptr: *mut c_void,
    instance: *const c_void,
    free: unsafe extern "C" fn(*const c_void, *mut c_void),
}

// SAFETY: the ABI lets a state move between threads as long as one uses it at a time.
unsafe impl Send for PluginState {}

impl Drop for PluginState {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from this table's `new_state` and is freed once, here.
        unsafe { (self.free)(self.instance, self.ptr) }
    }
}

impl PluginProtocol {
    /// Checks and adopts the table at `table`.
    ///
    /// # Safety
    ///
    /// `table` must be null or point to readable memory laid out as a [`ProtocolTable`] of
    /// some ABI version (its magic, version and size are checked before anything else is
    /// read), whose functions stay valid while `owner` lives.
    pub unsafe fn from_table(
        table: *const ProtocolTable,
        owner: Box<dyn Any + Send + Sync>,
    ) -> Result<Self, String> {
        if table.is_null() {
            return Err("pygev: the plugin's capsule holds a null table".into());
        }
        // SAFETY: per the contract the first fields (magic, version, flags, size) are
        // readable; they are the same in every ABI version.
        let (magic, version, size) =
            unsafe { ((*table).magic, (*table).abi_version, (*table).size) };
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
        if size < std::mem::size_of::<ProtocolTable>() {
            return Err(format!(
                "pygev: the plugin's table has {size} bytes, fewer than version {ABI_VERSION}'s {}",
                std::mem::size_of::<ProtocolTable>()
            ));
        }
        // SAFETY: the checks above show a whole version-1 table is there.
        let table = unsafe { *table };
        let name = if table.name.is_null() {
            "plugin".to_string()
        } else {
            // SAFETY: the ABI requires a NUL-terminated name alive as long as the table.
            unsafe { CStr::from_ptr(table.name) }
                .to_string_lossy()
                .into_owned()
        };
        Ok(PluginProtocol {
            table,
            name,
            _owner: owner,
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

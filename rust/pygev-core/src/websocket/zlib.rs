//! Raw deflate streams (zlib-rs through its zlib API) whose state lives in memory mapped
//! apart from the heap.
//!
//! A compressor holds about 270 KiB and a decompressor about 40 KiB, made when a connection
//! starts talking and freed when it goes quiet. Taken from the heap, the space they leave
//! is filled by the small allocations that outlive them (buffers, windows, connection
//! state), and the heap's pages stay resident for those few bytes: an idle compressed
//! connection then costs 4 to 7 KiB more than it holds (measured at 1,000). Mapped apart,
//! the heap stays dense; freed state goes back to the system, but for a bounded spare list
//! of blocks (4 MiB in all) kept for the next streams.

use std::alloc::{alloc, dealloc, Layout};
use std::ffi::{c_int, c_uint, c_void};
use std::mem::size_of;
use std::ptr;
use std::sync::{Mutex, MutexGuard};

use libz_rs_sys::{
    deflate, deflateEnd, deflateInit2_, deflateReset, inflate, inflateEnd, inflateGetDictionary,
    inflateInit2_, inflateReset, inflateResetKeep, inflateSetDictionary, uInt, voidpf, z_stream,
    zlibVersion, Z_BUF_ERROR, Z_DATA_ERROR, Z_DEFAULT_STRATEGY, Z_DEFLATED, Z_OK, Z_STREAM_END,
    Z_SYNC_FLUSH,
};

/// What one call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Input bytes taken.
    pub consumed: usize,
    /// Output bytes written.
    pub produced: usize,
    /// The stream's final block ended (inflate only).
    pub ended: bool,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The input is not valid deflate data (zlib's message).
    Invalid(String),
    /// The stream cannot go on (zlib's return code): not the input's fault.
    Broken(c_int),
}

/// A zlib entry point that runs a stream with a flush mode (`inflate`, `deflate`).
type Call = unsafe extern "C" fn(*mut z_stream, c_int) -> c_int;

/// A raw inflater.
pub struct Inflater {
    // NOTE: boxed as the zlib API asks (C zlib's state points back at its stream); zlib-rs
    // does not need it, but nothing here relies on that.
    stream: Box<z_stream>,
}

// SAFETY: the stream and the state it points to are owned by this value alone and touched
// only through `&mut self` (or `&self` for reads); nothing in them is tied to a thread, and
// the allocator they use is shared behind a lock.
unsafe impl Send for Inflater {}

impl Inflater {
    /// A raw inflater for windows up to `window_bits` (8 to 15), primed with `dictionary`
    /// (at most the window); `None` when no memory is left for its state.
    pub fn new(window_bits: u8, dictionary: &[u8]) -> Option<Self> {
        let mut stream = new_stream();
        // SAFETY: `stream` is a zeroed z_stream with our allocator set, as inflateInit2_
        // requires; version and size are the library's own.
        let rc = unsafe {
            inflateInit2_(
                &mut *stream,
                -c_int::from(window_bits),
                zlibVersion(),
                size_of::<z_stream>() as c_int,
            )
        };
        if rc != Z_OK {
            return None;
        }
        let mut inflater = Inflater { stream };
        if !dictionary.is_empty() {
            let len = c_uint::try_from(dictionary.len()).ok()?;
            // SAFETY: the stream was initialised above; the pointer and length describe
            // `dictionary`, which zlib copies into its window.
            let rc =
                unsafe { inflateSetDictionary(&mut *inflater.stream, dictionary.as_ptr(), len) };
            if rc != Z_OK {
                return None; // dropping ends the stream
            }
        }
        Some(inflater)
    }

    /// Inflates from `input` with a sync flush, appending at most `room` bytes to `out`
    /// (within its spare capacity).
    pub fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        room: usize,
    ) -> Result<Step, Failure> {
        match run(&mut self.stream, inflate, input, out, room) {
            (Z_OK | Z_BUF_ERROR, step) => Ok(step),
            (Z_STREAM_END, step) => Ok(Step {
                ended: true,
                ..step
            }),
            (Z_DATA_ERROR, _) => Err(Failure::Invalid(
                message(&self.stream)
                    .unwrap_or("invalid deflate data")
                    .to_string(),
            )),
            (rc, _) => Err(Failure::Broken(rc)),
        }
    }

    /// Ends the stream: the next input starts a new one, which may refer to what this one
    /// produced when `keep_window`, and to nothing otherwise.
    pub fn reset(&mut self, keep_window: bool) {
        // SAFETY: the stream was initialised in `new`.
        unsafe {
            if keep_window {
                inflateResetKeep(&mut *self.stream);
            } else {
                inflateReset(&mut *self.stream);
            }
        }
    }

    /// The last `at_most` bytes of output the stream's next input may refer to, oldest
    /// first.
    pub fn history(&self, at_most: usize) -> Vec<u8> {
        let mut window = [0u8; 1 << 15];
        let mut len: c_uint = 0;
        // SAFETY: the stream was initialised in `new`; the dictionary is at most 32 KiB (the
        // largest window), the size of `window`; `len` receives its length.
        let rc = unsafe { inflateGetDictionary(&*self.stream, window.as_mut_ptr(), &mut len) };
        if rc != Z_OK {
            return Vec::new();
        }
        let len = (len as usize).min(window.len());
        window[len - len.min(at_most)..len].to_vec()
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised in `new` and is ended once, here.
        unsafe { inflateEnd(&mut *self.stream) };
    }
}

/// A raw deflater.
pub struct Deflater {
    stream: Box<z_stream>,
}

// SAFETY: as for `Inflater`.
unsafe impl Send for Deflater {}

impl Deflater {
    /// A raw deflater at `level` (0 to 9) with a window of `window_bits` (9 to 15); `None`
    /// when no memory is left for its state.
    pub fn new(level: u8, window_bits: u8) -> Option<Self> {
        let mut stream = new_stream();
        // SAFETY: as for `Inflater::new`; 8 is zlib's default memory level.
        let rc = unsafe {
            deflateInit2_(
                &mut *stream,
                c_int::from(level),
                Z_DEFLATED,
                -c_int::from(window_bits),
                8,
                Z_DEFAULT_STRATEGY,
                zlibVersion(),
                size_of::<z_stream>() as c_int,
            )
        };
        (rc == Z_OK).then_some(Deflater { stream })
    }

    /// Deflates from `input` with a sync flush, appending to `out` within its spare
    /// capacity (the output ends on a byte boundary with an empty stored block once all
    /// input is taken and room is left). Z_BUF_ERROR (nothing to do) is a step that moved
    /// nothing.
    pub fn deflate(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Step, Failure> {
        let room = out.capacity() - out.len();
        match run(&mut self.stream, deflate, input, out, room) {
            (Z_OK | Z_BUF_ERROR, step) => Ok(step),
            (rc, _) => Err(Failure::Broken(rc)),
        }
    }

    /// Forgets the stream's history (the next message refers to nothing before it).
    pub fn reset(&mut self) {
        // SAFETY: the stream was initialised in `new`.
        unsafe { deflateReset(&mut *self.stream) };
    }
}

impl Drop for Deflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised in `new` and is ended once, here.
        unsafe { deflateEnd(&mut *self.stream) };
    }
}

/// Runs `call` (with a sync flush) on `stream`, an initialised stream of its kind, from
/// `input` into the spare capacity of `out` (at most `room` bytes), appending what it
/// wrote; returns zlib's code and what moved.
fn run(
    stream: &mut z_stream,
    call: Call,
    input: &[u8],
    out: &mut Vec<u8>,
    room: usize,
) -> (c_int, Step) {
    let spare = out.spare_capacity_mut();
    let (avail_in, avail_out) = (clamp(input.len()), clamp(room.min(spare.len())));
    stream.next_in = input.as_ptr();
    stream.avail_in = avail_in;
    stream.next_out = spare.as_mut_ptr().cast::<u8>();
    stream.avail_out = avail_out;
    // SAFETY: the callers pass the entry point of the kind `stream` was initialised for
    // (Inflater: inflate, Deflater: deflate); next_in/avail_in describe `input`, and
    // next_out/avail_out writable spare capacity of `out` (zlib writes there without
    // reading), both borrowed for this call only.
    let rc = unsafe { call(stream, Z_SYNC_FLUSH) };
    let step = Step {
        consumed: (avail_in - stream.avail_in) as usize,
        produced: (avail_out - stream.avail_out) as usize,
        ended: false,
    };
    stream.next_in = ptr::null();
    stream.avail_in = 0;
    stream.next_out = ptr::null_mut();
    stream.avail_out = 0;
    // SAFETY: zlib initialised the first `produced` bytes of the spare capacity, which is
    // at least that long.
    unsafe { out.set_len(out.len() + step.produced) };
    (rc, step)
}

/// A zeroed stream that takes its memory from [`zalloc`] and gives it back to [`zfree`].
fn new_stream() -> Box<z_stream> {
    let mut stream = Box::new(z_stream::default());
    stream.zalloc = Some(zalloc);
    stream.zfree = Some(zfree);
    stream.opaque = ptr::null_mut();
    stream
}

fn clamp(len: usize) -> uInt {
    uInt::try_from(len).unwrap_or(uInt::MAX)
}

fn message(stream: &z_stream) -> Option<&'static str> {
    if stream.msg.is_null() {
        return None;
    }
    // SAFETY: zlib-rs sets `msg` only to its own static, NUL-terminated messages.
    unsafe { std::ffi::CStr::from_ptr(stream.msg) }
        .to_str()
        .ok()
}

// ---- zlib's allocator ----------------------------------------------------------------------

/// Room before each block for its length and where it came from; it keeps the block
/// 64-byte aligned.
const HEADER: usize = 64;
const ALIGN: usize = 64;
/// The header's mark of a block taken from the heap (when no mapping could be made: the
/// process's mapping count is bounded).
const FROM_HEAP: usize = 1;
/// The most memory freed blocks keep for reuse, in all.
const SPARE_LIMIT: usize = 4 << 20;

/// Mapped blocks freed and kept for the next stream of the same size: a fresh mapping
/// faults in every page zlib clears at its start (about 70 for a compressor), which costs
/// far more than the compression of a short message.
static SPARE: Mutex<Spare> = Mutex::new(Spare {
    blocks: Vec::new(),
    bytes: 0,
});

struct Spare {
    /// Each block's mapping (its start) and length.
    blocks: Vec<(Mapping, usize)>,
    bytes: usize,
}

struct Mapping(*mut u8);

// SAFETY: a spare mapping is memory nothing refers to; the list that holds it owns it.
unsafe impl Send for Mapping {}

fn spare() -> MutexGuard<'static, Spare> {
    SPARE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
thread_local! {
    /// Tests: this thread's blocks come from the heap, as when no mapping can be made.
    static NO_MAPPINGS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A new private anonymous mapping of `len` bytes, or null.
fn new_mapping(len: usize) -> *mut u8 {
    #[cfg(test)]
    if NO_MAPPINGS.with(|no| no.get()) {
        return ptr::null_mut();
    }
    // SAFETY: a new private anonymous mapping overlaps no memory in use.
    let base = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        base.cast::<u8>()
    }
}

/// zlib's allocator: each block is an anonymous mapping (a spare one of its length, or a
/// new one), its length and origin in front of it; the heap when no mapping can be made.
unsafe extern "C" fn zalloc(_opaque: voidpf, items: uInt, size: uInt) -> voidpf {
    let Some(len) = (items as usize)
        .checked_mul(size as usize)
        .and_then(|n| n.checked_add(HEADER))
    else {
        return ptr::null_mut();
    };
    let reused = {
        let mut spare = spare();
        let found = spare.blocks.iter().rposition(|&(_, l)| l == len);
        found.map(|i| {
            spare.bytes -= len;
            spare.blocks.swap_remove(i).0 .0
        })
    };
    if let Some(base) = reused {
        // SAFETY: a spare block is a whole block from an earlier call, header intact.
        return unsafe { base.add(HEADER).cast::<c_void>() };
    }
    let mut base = new_mapping(len);
    let mut origin = 0;
    if base.is_null() {
        let Ok(layout) = Layout::from_size_align(len, ALIGN) else {
            return ptr::null_mut();
        };
        // SAFETY: the layout's size is at least HEADER, never zero.
        base = unsafe { alloc(layout) };
        if base.is_null() {
            return ptr::null_mut();
        }
        origin = FROM_HEAP;
    }
    // SAFETY: the block is at least HEADER bytes and 64-byte aligned: two words fit before
    // the part zlib gets, which starts HEADER bytes in.
    unsafe {
        base.cast::<usize>().write(len);
        base.cast::<usize>().add(1).write(origin);
        base.add(HEADER).cast::<c_void>()
    }
}

/// zlib's deallocator for blocks from [`zalloc`]: a mapping is kept for reuse while the
/// spare list has room, unmapped otherwise.
unsafe extern "C" fn zfree(_opaque: voidpf, block: voidpf) {
    if block.is_null() {
        return;
    }
    // SAFETY: `block` came from `zalloc` (zlib frees only what its allocator gave), so its
    // header is HEADER bytes before it: the length and origin written there, which say
    // how to give it back.
    let (base, len, origin) = unsafe {
        let base = block.cast::<u8>().sub(HEADER);
        let header = base.cast::<usize>();
        (base, header.read(), header.add(1).read())
    };
    if origin == FROM_HEAP {
        // SAFETY: `zalloc` took it from the heap with this layout (checked there).
        unsafe { dealloc(base, Layout::from_size_align_unchecked(len, ALIGN)) };
        return;
    }
    {
        let mut spare = spare();
        if spare.bytes + len <= SPARE_LIMIT {
            spare.bytes += len;
            spare.blocks.push((Mapping(base), len));
            return;
        }
    }
    // SAFETY: the mapping is this block's alone, and zlib no longer uses it.
    if unsafe { libc::munmap(base.cast::<c_void>(), len) } != 0 {
        // Splitting a merged mapping can fail at the process's mapping limit: the block
        // stays mapped (lost, not reused: nothing refers to it any more).
        log::warn!(
            "pygev: could not unmap {len} bytes of compression state: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 KiB that compress a little (a simple LCG over 16 symbols).
    fn sample() -> Vec<u8> {
        let mut seed = 7u32;
        (0..100 << 10)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b"abcdefghijklmnop"[(seed >> 28) as usize]
            })
            .collect()
    }

    fn deflate_all(deflater: &mut Deflater, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() + 1024);
        let step = deflater.deflate(input, &mut out).unwrap();
        assert_eq!(step.consumed, input.len());
        out
    }

    fn inflate_all(inflater: &mut Inflater, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 << 20);
        let step = inflater.inflate(input, &mut out, 1 << 20).unwrap();
        assert_eq!(step.consumed, input.len());
        out
    }

    #[test]
    fn round_trips_on_mapped_reused_and_heap_blocks_alike() {
        let data = sample();
        let fresh = deflate_all(&mut Deflater::new(6, 15).unwrap(), &data);
        // Dirty blocks: streams that ran and were freed leave their blocks to the next.
        for round in 0..3 {
            let mut deflater = Deflater::new(6, 15).unwrap();
            let mut inflater = Inflater::new(15, &[]).unwrap();
            let wire = deflate_all(&mut deflater, &data);
            assert_eq!(
                wire, fresh,
                "round {round}: a reused block changed the output"
            );
            assert_eq!(inflate_all(&mut inflater, &wire), data);
        }
        // The heap, when no mapping can be made: the same output, and blocks aligned.
        NO_MAPPINGS.with(|no| no.set(true));
        let mut deflater = Deflater::new(6, 15).unwrap();
        let mut inflater = Inflater::new(15, &[]).unwrap();
        NO_MAPPINGS.with(|no| no.set(false));
        assert_eq!(deflate_all(&mut deflater, &data), fresh);
        assert_eq!(inflate_all(&mut inflater, &fresh), data);
        assert!(spare().bytes <= SPARE_LIMIT);
    }

    #[test]
    fn zlibs_blocks_are_aligned_and_freed_blocks_are_kept_by_length() {
        for _ in 0..2 {
            for no_mappings in [false, true] {
                NO_MAPPINGS.with(|no| no.set(no_mappings));
                // SAFETY: a block from our allocator, given back to it at once.
                unsafe {
                    let block = zalloc(ptr::null_mut(), 3, 1000);
                    assert!(!block.is_null());
                    assert_eq!(block as usize % ALIGN, 0);
                    block.cast::<u8>().write_bytes(0xAB, 3000);
                    zfree(ptr::null_mut(), block);
                }
            }
        }
        NO_MAPPINGS.with(|no| no.set(false));
        let spare = spare();
        assert!(spare.bytes <= SPARE_LIMIT);
        assert_eq!(spare.bytes, spare.blocks.iter().map(|b| b.1).sum::<usize>());
    }

    #[test]
    fn history_is_the_newest_output_in_order_and_a_reset_keeps_it_only_when_asked() {
        let data = sample(); // past 32 KiB: the window wrapped around
        let wire = deflate_all(&mut Deflater::new(6, 15).unwrap(), &data);
        let mut inflater = Inflater::new(15, &[]).unwrap();
        assert_eq!(inflate_all(&mut inflater, &wire), data);
        assert_eq!(inflater.history(4096), &data[data.len() - 4096..]);
        assert_eq!(inflater.history(1 << 20), &data[data.len() - (1 << 15)..]);
        inflater.reset(true);
        assert_eq!(inflater.history(4096), &data[data.len() - 4096..]);
        inflater.reset(false);
        assert!(inflater.history(4096).is_empty());
    }

    #[test]
    fn a_primed_inflater_takes_references_into_its_dictionary() {
        let data = sample();
        let (first, second) = data.split_at(60 << 10);
        // The sender's stream goes on across both: the second part refers back 4 KiB.
        let mut deflater = Deflater::new(6, 12).unwrap();
        let wire_first = deflate_all(&mut deflater, first);
        let wire_second = deflate_all(&mut deflater, second);
        let mut inflater = Inflater::new(15, &[]).unwrap();
        assert_eq!(inflate_all(&mut inflater, &wire_first), first);
        let kept = inflater.history(1 << 12);
        drop(inflater);
        let mut primed = Inflater::new(15, &kept).unwrap();
        assert_eq!(inflate_all(&mut primed, &wire_second), second);
        // Garbage is invalid data, not a broken stream.
        let mut inflater = Inflater::new(15, &[]).unwrap();
        let mut out = Vec::with_capacity(64);
        let err = inflater.inflate(&[0xff, 0xff, 0xff], &mut out, 64);
        assert!(matches!(err, Err(Failure::Invalid(_))), "{err:?}");
    }

    #[test]
    fn streams_move_between_threads() {
        let data = sample();
        let mut deflater = Deflater::new(6, 15).unwrap();
        let mut inflater = Inflater::new(15, &[]).unwrap();
        let (first, second) = data.split_at(50 << 10);
        assert_eq!(
            inflate_all(&mut inflater, &deflate_all(&mut deflater, first)),
            first
        );
        let second = second.to_vec();
        let sent = second.clone();
        let handle = std::thread::spawn(move || {
            let wire = deflate_all(&mut deflater, &sent);
            inflate_all(&mut inflater, &wire)
        });
        assert_eq!(handle.join().unwrap(), second);
    }
}

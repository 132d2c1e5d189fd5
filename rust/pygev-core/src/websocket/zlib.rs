//! Raw deflate streams (zlib-rs through its zlib API) whose state lives in memory mapped
//! apart from the heap.
//!
//! A compressor holds about 270 KiB and a decompressor about 40 KiB, made when a connection
//! starts talking and freed when it goes quiet. Taken from the heap, the space they leave
//! is filled by the small allocations that outlive them (buffers, windows, connection
//! state), and the heap's pages stay resident for those few bytes: an idle compressed
//! connection then costs 4 to 7 KiB more than it holds (measured at 1,000). Mapped apart,
//! the state returns to the system whole when it is freed, and the heap stays dense.

use std::alloc::{alloc, dealloc, Layout};
use std::ffi::{c_int, c_uint, c_void};
use std::mem::size_of;
use std::ptr;
use std::sync::Mutex;

use libz_rs_sys::{
    deflate, deflateEnd, deflateInit2_, deflateReset, inflate, inflateEnd, inflateGetDictionary,
    inflateInit2_, inflateReset, inflateSetDictionary, uInt, voidpf, z_stream, zlibVersion,
    Z_BUF_ERROR, Z_DEFAULT_STRATEGY, Z_DEFLATED, Z_OK, Z_STREAM_END, Z_SYNC_FLUSH,
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

/// A raw inflater.
pub struct Inflater {
    // NOTE: boxed: the zlib API lets the state point back at its stream, which must not move.
    stream: Box<z_stream>,
}

// SAFETY: the stream and the state it points to are owned by this value alone and touched
// only through `&mut self` (or `&self` for reads); nothing in them is tied to a thread.
unsafe impl Send for Inflater {}

impl Inflater {
    /// A raw inflater for windows up to `window_bits` (8 to 15), primed with `dictionary`
    /// (at most the window); `None` when the state cannot be mapped.
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
    /// (within its spare capacity); an error carries zlib's message.
    pub fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        room: usize,
    ) -> Result<Step, String> {
        // SAFETY: the stream was initialised in `new`.
        let rc = unsafe {
            run(&mut self.stream, input, out, room, |s| {
                inflate(s, Z_SYNC_FLUSH)
            })
        };
        match rc {
            (Z_OK | Z_BUF_ERROR, step) => Ok(step),
            (Z_STREAM_END, step) => Ok(Step {
                ended: true,
                ..step
            }),
            _ => Err(message(&self.stream)
                .unwrap_or("invalid compressed data")
                .to_string()),
        }
    }

    /// Forgets the stream's history: the next input starts a new stream.
    pub fn reset(&mut self) {
        // SAFETY: the stream was initialised in `new`.
        unsafe { inflateReset(&mut *self.stream) };
    }

    /// The last `at_most` bytes of output the stream's next input may refer to.
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
    /// when the state cannot be mapped.
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
    /// input is taken and room is left).
    pub fn deflate(&mut self, input: &[u8], out: &mut Vec<u8>) -> Step {
        let room = out.capacity() - out.len();
        // SAFETY: the stream was initialised in `new`. Deflating valid memory cannot fail:
        // the return is Z_OK, or Z_BUF_ERROR when no room was left.
        unsafe {
            run(&mut self.stream, input, out, room, |s| {
                deflate(s, Z_SYNC_FLUSH)
            })
        }
        .1
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

/// Runs one zlib call on `stream` from `input` into the spare capacity of `out` (at most
/// `room` bytes), appending what it wrote; returns zlib's code and what moved.
///
/// # Safety
///
/// `stream` was initialised for the kind of call `call` makes.
unsafe fn run(
    stream: &mut z_stream,
    input: &[u8],
    out: &mut Vec<u8>,
    room: usize,
    call: impl FnOnce(&mut z_stream) -> c_int,
) -> (c_int, Step) {
    let spare = out.spare_capacity_mut();
    let (avail_in, avail_out) = (clamp(input.len()), clamp(room.min(spare.len())));
    stream.next_in = input.as_ptr();
    stream.avail_in = avail_in;
    stream.next_out = spare.as_mut_ptr().cast::<u8>();
    stream.avail_out = avail_out;
    // NOTE: next_in/avail_in describe `input`, next_out/avail_out writable spare capacity
    // of `out` (zlib writes there without reading), both borrowed for this call only: what
    // the zlib call in `call` (made under the caller's `unsafe`) requires.
    let rc = call(stream);
    let step = Step {
        consumed: (avail_in - stream.avail_in) as usize,
        produced: (avail_out - stream.avail_out) as usize,
        ended: false,
    };
    stream.next_in = ptr::null();
    stream.next_out = ptr::null_mut();
    // SAFETY: zlib initialised the first `produced` bytes of the spare capacity.
    unsafe { out.set_len(out.len() + step.produced) };
    (rc, step)
}

/// A zeroed stream that takes its memory from [`map`] and gives it back to [`unmap`].
fn new_stream() -> Box<z_stream> {
    let mut stream = Box::new(z_stream::default());
    stream.zalloc = Some(map);
    stream.zfree = Some(unmap);
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

fn spare() -> std::sync::MutexGuard<'static, Spare> {
    SPARE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// zlib's allocator: each block is an anonymous mapping (a spare one of its length, or a
/// new one), its length and origin in front of it; the heap when no mapping can be made.
unsafe extern "C" fn map(_opaque: voidpf, items: uInt, size: uInt) -> voidpf {
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
        // SAFETY: a spare block is a whole block from an earlier call: its header is intact.
        return unsafe { base.add(HEADER).cast::<c_void>() };
    }
    // SAFETY: a new private anonymous mapping overlaps no memory in use.
    let mut base = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    }
    .cast::<u8>();
    let mut origin = 0;
    if base.cast::<c_void>() == libc::MAP_FAILED {
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

/// zlib's deallocator for blocks from [`map`]: kept for reuse while the spare list has
/// room, unmapped otherwise.
unsafe extern "C" fn unmap(_opaque: voidpf, block: voidpf) {
    if block.is_null() {
        return;
    }
    // SAFETY: `block` came from `map` (zlib frees only what its allocator gave), so its
    // header is HEADER bytes before it: the length and origin written there, which say
    // how to give it back.
    let (base, len, origin) = unsafe {
        let base = block.cast::<u8>().sub(HEADER);
        let header = base.cast::<usize>();
        (base, header.read(), header.add(1).read())
    };
    if origin == FROM_HEAP {
        // SAFETY: `map` allocated it from the heap with this layout.
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
    unsafe { libc::munmap(base.cast::<c_void>(), len) };
}

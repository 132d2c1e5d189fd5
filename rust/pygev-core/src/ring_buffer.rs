//! A growable ring buffer with gev's read API.

use std::io;

/// Smallest storage allocated when a buffer first receives bytes.
const MIN_CAPACITY: usize = 256;

/// A byte ring buffer that grows on demand and gives its memory back when drained.
///
/// It offers gev's reads: [`peek`](Self::peek), [`read`](Self::read),
/// [`retrieve`](Self::retrieve), [`retrieve_all`](Self::retrieve_all),
/// [`bytes`](Self::bytes), and the virtual reads ([`virtual_read`](Self::virtual_read),
/// [`virtual_length`](Self::virtual_length), [`virtual_flush`](Self::virtual_flush),
/// [`virtual_revert`](Self::virtual_revert)) that let a parser look ahead and then either
/// commit or undo what it consumed.
///
/// An empty buffer owns no heap memory: storage is allocated on the first write and released
/// as soon as every byte has been consumed, so an idle connection costs nothing here.
///
/// # Examples
///
/// ```
/// use pygev_core::RingBuffer;
///
/// let mut buf = RingBuffer::new();
/// buf.write(b"hello world");
/// let mut head = [0u8; 5];
/// assert_eq!(buf.virtual_read(&mut head), 5);
/// assert_eq!(&head, b"hello");
/// buf.virtual_revert(); // nothing consumed after all
/// assert_eq!(buf.len(), 11);
/// buf.retrieve(6);
/// assert_eq!(buf.bytes(), b"world");
/// ```
#[derive(Default, Clone)]
pub struct RingBuffer {
    storage: Box<[u8]>,
    head: usize,
    len: usize,
    /// Bytes consumed by virtual reads but not yet flushed; always `<= len`.
    virtual_consumed: usize,
}

impl std::fmt::Debug for RingBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingBuffer")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("virtual_consumed", &self.virtual_consumed)
            .finish()
    }
}

impl RingBuffer {
    /// Creates an empty buffer that owns no memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates an empty buffer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        RingBuffer {
            storage: vec![0; capacity].into_boxed_slice(),
            ..Self::default()
        }
    }

    /// Number of bytes held (virtual reads not yet flushed still count).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of storage currently allocated.
    pub fn capacity(&self) -> usize {
        self.storage.len()
    }

    /// Appends `data`, growing the storage if needed.
    pub fn write(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let needed = self.len + data.len();
        if needed > self.capacity() {
            let new_cap = needed.max(MIN_CAPACITY).next_power_of_two();
            return self.reallocate_with(new_cap, data);
        }
        let cap = self.capacity();
        let tail = (self.head + self.len) % cap;
        let first = data.len().min(cap - tail);
        self.storage[tail..tail + first].copy_from_slice(&data[..first]);
        self.storage[..data.len() - first].copy_from_slice(&data[first..]);
        self.len += data.len();
    }

    /// Makes room for `additional` more bytes, doubling the storage as needed.
    pub fn reserve(&mut self, additional: usize) {
        let needed = self.len + additional;
        if needed <= self.capacity() {
            return;
        }
        let new_cap = needed.max(MIN_CAPACITY).next_power_of_two();
        self.reallocate(new_cap);
    }

    fn reallocate(&mut self, new_cap: usize) {
        self.reallocate_with(new_cap, &[]);
    }

    /// New storage of `new_cap` bytes holding the held bytes at its front, then `more`
    /// (counted as held). Only the space left after them is zero-filled.
    fn reallocate_with(&mut self, new_cap: usize, more: &[u8]) {
        debug_assert!(new_cap >= self.len + more.len());
        let mut storage = Vec::with_capacity(new_cap);
        let (a, b) = self.as_slices();
        storage.extend_from_slice(a);
        storage.extend_from_slice(b);
        storage.extend_from_slice(more);
        storage.resize(new_cap, 0);
        self.storage = storage.into_boxed_slice();
        self.head = 0;
        self.len += more.len();
    }

    /// The held bytes as two slices, in order (the second is empty unless the data wraps).
    pub fn as_slices(&self) -> (&[u8], &[u8]) {
        self.slices_from(0, self.len)
    }

    /// `count` bytes starting `offset` bytes past the head, as two slices.
    fn slices_from(&self, offset: usize, count: usize) -> (&[u8], &[u8]) {
        debug_assert!(offset + count <= self.len);
        if count == 0 {
            return (&[], &[]);
        }
        let cap = self.capacity();
        let start = (self.head + offset) % cap;
        let first = count.min(cap - start);
        (
            &self.storage[start..start + first],
            &self.storage[..count - first],
        )
    }

    /// Appends `data` and returns everything held as one slice. When the new bytes would
    /// wrap around the end of the storage, the held bytes move to its front first (a
    /// memmove of what is held, no allocation), so a buffer only ever written this way
    /// never wraps and never needs [`RingBuffer::make_contiguous`]'s reallocation.
    pub fn write_contiguous(&mut self, data: &[u8]) -> &[u8] {
        let needed = self.len + data.len();
        if needed > self.capacity() {
            // (Copied in with the held bytes: no zero-filling of what `data` covers.)
            let new_cap = needed.max(MIN_CAPACITY).next_power_of_two();
            self.reallocate_with(new_cap, data);
            return &self.storage[..self.len];
        } else if self.head + needed > self.capacity() {
            self.make_contiguous();
            self.storage.copy_within(self.head..self.head + self.len, 0);
            self.head = 0;
        }
        let end = self.head + self.len;
        self.storage[end..end + data.len()].copy_from_slice(data);
        self.len += data.len();
        &self.storage[self.head..self.head + self.len]
    }

    /// Rearranges the storage so the held bytes are contiguous, and returns them.
    pub fn make_contiguous(&mut self) -> &[u8] {
        if self.head + self.len > self.capacity() {
            let cap = self.capacity();
            self.reallocate(cap);
        }
        &self.storage[self.head..self.head + self.len]
    }

    /// Up to `n` bytes from the front without consuming them, as two slices.
    pub fn peek(&self, n: usize) -> (&[u8], &[u8]) {
        self.slices_from(0, n.min(self.len))
    }

    /// Copies up to `out.len()` bytes into `out` and consumes them; returns the count.
    ///
    /// Pending virtual reads are discarded first (as a real read invalidates them).
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        self.virtual_consumed = 0;
        let n = out.len().min(self.len);
        let (a, b) = self.peek(n);
        out[..a.len()].copy_from_slice(a);
        out[a.len()..n].copy_from_slice(b);
        self.retrieve(n);
        n
    }

    /// Consumes `n` bytes (or all, if fewer are held) without copying them.
    pub fn retrieve(&mut self, n: usize) {
        self.virtual_consumed = 0;
        let n = n.min(self.len);
        if n == self.len {
            self.retrieve_all();
            return;
        }
        self.head = (self.head + n) % self.capacity();
        self.len -= n;
    }

    /// Consumes everything and releases the storage.
    pub fn retrieve_all(&mut self) {
        self.storage = Box::default();
        self.head = 0;
        self.len = 0;
        self.virtual_consumed = 0;
    }

    /// A copy of every held byte, in order (consumes nothing).
    pub fn bytes(&self) -> Vec<u8> {
        let (a, b) = self.as_slices();
        let mut out = Vec::with_capacity(a.len() + b.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b);
        out
    }

    /// Copies up to `out.len()` bytes that follow the virtual cursor and advances it;
    /// nothing is consumed until [`virtual_flush`](Self::virtual_flush).
    pub fn virtual_read(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.virtual_length());
        let (a, b) = self.slices_from(self.virtual_consumed, n);
        out[..a.len()].copy_from_slice(a);
        out[a.len()..n].copy_from_slice(b);
        self.virtual_consumed += n;
        n
    }

    /// Bytes left after the virtual cursor.
    pub fn virtual_length(&self) -> usize {
        self.len - self.virtual_consumed
    }

    /// Commits the virtual reads: the bytes they covered are consumed.
    pub fn virtual_flush(&mut self) {
        let n = self.virtual_consumed;
        self.retrieve(n);
    }

    /// Undoes the virtual reads: the cursor goes back to the head.
    pub fn virtual_revert(&mut self) {
        self.virtual_consumed = 0;
    }

    /// Writes the held bytes to `writer` with one vectored write and consumes what it took.
    ///
    /// Returns the bytes written; `WouldBlock` and other errors are passed through.
    pub fn write_to<W: io::Write>(&mut self, writer: &mut W) -> io::Result<usize> {
        let (a, b) = self.as_slices();
        let n = if b.is_empty() {
            writer.write(a)?
        } else {
            writer.write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])?
        };
        self.retrieve(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_grows_keeping_order() {
        let mut buf = RingBuffer::with_capacity(8);
        buf.write(b"abcdef");
        buf.retrieve(4);
        buf.write(b"ghij"); // wraps
        assert_eq!(buf.capacity(), 8);
        assert_eq!(buf.bytes(), b"efghij");
        buf.write(b"klmnop"); // grows
        assert_eq!(buf.bytes(), b"efghijklmnop");
        assert_eq!(buf.make_contiguous(), b"efghijklmnop");
    }

    #[test]
    fn drained_buffer_releases_memory() {
        let mut buf = RingBuffer::new();
        assert_eq!(buf.capacity(), 0);
        buf.write(&[1; 1000]);
        assert!(buf.capacity() >= 1000);
        let mut out = [0u8; 1000];
        assert_eq!(buf.read(&mut out), 1000);
        assert_eq!(buf.capacity(), 0);
    }
}

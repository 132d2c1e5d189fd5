//! A connection's input or output buffer: a [`RingBuffer`] that exists only while it holds
//! bytes, so that an idle connection's two buffers cost a pointer each.

use std::io;

use crate::ring_buffer::RingBuffer;

/// Bytes a connection holds one way (unparsed input, or output the socket did not take).
#[derive(Debug, Default)]
pub(crate) struct Buffer(Option<Box<RingBuffer>>);

impl Buffer {
    /// Bytes held.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |ring| ring.len())
    }

    /// Whether nothing is held.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn ring(&mut self) -> &mut RingBuffer {
        self.0.get_or_insert_with(Box::default)
    }

    /// Frees the ring once it holds nothing.
    fn release_if_empty(&mut self) {
        if self.0.as_ref().is_some_and(|ring| ring.is_empty()) {
            self.0 = None;
        }
    }

    /// Appends `data`.
    pub(crate) fn write(&mut self, data: &[u8]) {
        if !data.is_empty() {
            self.ring().write(data);
        }
    }

    /// Appends `data` and returns everything held as one slice (see
    /// [`RingBuffer::write_contiguous`]).
    pub(crate) fn write_contiguous(&mut self, data: &[u8]) -> &[u8] {
        if data.is_empty() && self.0.is_none() {
            return &[]; // no ring for nothing: empty means none
        }
        self.ring().write_contiguous(data)
    }

    /// Consumes `n` bytes.
    pub(crate) fn retrieve(&mut self, n: usize) {
        if let Some(ring) = self.0.as_mut() {
            ring.retrieve(n);
        }
        self.release_if_empty();
    }

    /// Writes what is held to `writer` (one vectored write) and consumes what it took.
    pub(crate) fn write_to<W: io::Write>(&mut self, writer: &mut W) -> io::Result<usize> {
        let Some(ring) = self.0.as_mut() else {
            return Ok(0);
        };
        let written = ring.write_to(writer);
        self.release_if_empty();
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_exists_only_while_it_holds_bytes() {
        let mut buffer = Buffer::default();
        assert!(buffer.write_contiguous(b"").is_empty());
        buffer.write(b"");
        assert!(buffer.is_empty() && buffer.0.is_none());
        assert_eq!(buffer.write_contiguous(b"abc"), b"abc");
        buffer.retrieve(1);
        assert_eq!(buffer.len(), 2);
        assert!(buffer.0.is_some(), "a partial retrieve keeps it");
        buffer.retrieve(2);
        assert!(buffer.0.is_none(), "a full retrieve frees it");
        buffer.write(b"hello");
        let mut out = Vec::new();
        assert_eq!(buffer.write_to(&mut out).unwrap(), 5);
        assert_eq!(out, b"hello");
        assert!(buffer.0.is_none(), "a draining write frees it");
        assert_eq!(buffer.write_to(&mut out).unwrap(), 0);
    }
}

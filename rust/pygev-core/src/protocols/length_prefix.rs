//! Length-prefixed framing: a 1, 2, 4 or 8-byte unsigned length, then that many bytes.

use super::{FrameSink, Protocol, ProtocolError, ProtocolState};

/// Byte order of a length header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    /// Most significant byte first (network order).
    Big,
    /// Least significant byte first.
    Little,
}

/// Frames made of a fixed-size unsigned length header followed by that many payload bytes.
///
/// Incoming frames whose header declares more than `max_frame_size` bytes are refused as
/// soon as the header is complete, before any of their payload is buffered.
///
/// # Examples
///
/// ```
/// use pygev_core::{ByteOrder, FrameSink, LengthPrefix, Protocol};
///
/// let framing = LengthPrefix::new(2, ByteOrder::Big, 1024).unwrap();
/// let mut state = framing.new_state();
/// let mut wire = Vec::new();
/// framing.pack(&mut state, b"hi", &mut wire).unwrap();
/// assert_eq!(wire, b"\x00\x02hi");
///
/// let mut frames = FrameSink::new();
/// let used = framing.unpack(&mut state, b"\x00\x02hi\x00", &mut frames).unwrap();
/// assert_eq!(used, 4); // the lone header byte waits for the rest
/// assert_eq!(frames.drain().collect::<Vec<_>>(), vec![b"hi".to_vec()]);
/// ```
#[derive(Debug, Clone)]
pub struct LengthPrefix {
    header_size: usize,
    order: ByteOrder,
    max_frame_size: usize,
    name: String,
}

impl LengthPrefix {
    /// A framing with a `header_size`-byte header (1, 2, 4 or 8) in `order`, accepting
    /// payloads of at most `max_frame_size` bytes (which must fit in the header).
    pub fn new(
        header_size: usize,
        order: ByteOrder,
        max_frame_size: usize,
    ) -> Result<Self, String> {
        if ![1, 2, 4, 8].contains(&header_size) {
            return Err(format!(
                "pygev: header_size must be 1, 2, 4 or 8, got {header_size}"
            ));
        }
        let header_max = header_capacity(header_size);
        if max_frame_size as u64 > header_max {
            return Err(format!(
                "pygev: max_frame_size {max_frame_size} does not fit in a {header_size}-byte \
                 header (at most {header_max})"
            ));
        }
        Ok(LengthPrefix {
            header_size,
            order,
            max_frame_size,
            name: format!(
                "length-prefix({header_size}, {})",
                match order {
                    ByteOrder::Big => "big",
                    ByteOrder::Little => "little",
                }
            ),
        })
    }

    /// The header's size in bytes.
    pub fn header_size(&self) -> usize {
        self.header_size
    }

    /// The header's byte order.
    pub fn byte_order(&self) -> ByteOrder {
        self.order
    }

    /// The largest payload accepted, in bytes.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    fn read_header(&self, header: &[u8]) -> u64 {
        // NOTE: a byte loop, not a copy into a u64: the copy's runtime length made it a
        // memcpy call, a third of the time per 64-byte frame (examples/plugin_parity.rs).
        let fold = |n: u64, b: &u8| n << 8 | u64::from(*b);
        match self.order {
            ByteOrder::Big => header.iter().fold(0, fold),
            ByteOrder::Little => header.iter().rev().fold(0, fold),
        }
    }
}

/// The largest length a header of `size` bytes can hold.
fn header_capacity(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * size)) - 1
    }
}

impl Protocol for LengthPrefix {
    fn name(&self) -> &str {
        &self.name
    }

    fn unpack(
        &self,
        _state: &mut ProtocolState,
        input: &[u8],
        frames: &mut FrameSink,
    ) -> Result<usize, ProtocolError> {
        let mut used = 0;
        while input.len() - used >= self.header_size {
            let header = &input[used..used + self.header_size];
            let declared = self.read_header(header);
            if declared > self.max_frame_size as u64 {
                return Err(ProtocolError::new(format!(
                    "pygev: frame declares {declared} bytes, over max_frame_size {}",
                    self.max_frame_size
                )));
            }
            let start = used + self.header_size;
            if declared > (input.len() - start) as u64 {
                break; // the payload is not all here yet
            }
            let end = start + declared as usize;
            frames.push(&input[start..end]);
            used = end;
        }
        Ok(used)
    }

    fn check_payload(&self, payload: &[u8]) -> Result<(), ProtocolError> {
        if payload.len() as u64 > header_capacity(self.header_size) {
            return Err(ProtocolError::new(format!(
                "pygev: a payload of {} bytes does not fit in a {}-byte length header",
                payload.len(),
                self.header_size
            )));
        }
        Ok(())
    }

    fn pack(
        &self,
        _state: &mut ProtocolState,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        let len = payload.len() as u64;
        debug_assert!(len <= header_capacity(self.header_size));
        match self.order {
            ByteOrder::Big => out.extend_from_slice(&len.to_be_bytes()[8 - self.header_size..]),
            ByteOrder::Little => out.extend_from_slice(&len.to_le_bytes()[..self.header_size]),
        }
        out.extend_from_slice(payload);
        Ok(())
    }

    fn max_buffered_input(&self) -> usize {
        self.max_frame_size.saturating_add(self.header_size)
    }

    fn pack_is_stateless(&self) -> bool {
        true
    }
}

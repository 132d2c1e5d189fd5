//! A reference plugin: length-prefixed framing written against this crate only.

use crate::{Frames, Framing, Output};

/// Length-prefixed frames: a plugin twin of pygev's built-in `LengthPrefix`, used to show
/// that a plugin runs as fast as a built-in framing, and as a model for plugin authors.
pub struct LengthPrefix {
    header_size: usize,
    big_endian: bool,
    max_frame_size: u64,
    /// A frame or payload equal to this makes the plugin panic (tests of the boundary).
    panic_on: Option<Vec<u8>>,
}

impl LengthPrefix {
    /// A framing with a `header_size`-byte (1, 2, 4 or 8) length header in big- or
    /// little-endian order, refusing frames over `max_frame_size`; a frame or payload equal
    /// to `panic_on` makes it panic (for tests of the boundary).
    pub fn new(
        header_size: usize,
        big_endian: bool,
        max_frame_size: u64,
        panic_on: Option<Vec<u8>>,
    ) -> Result<Self, String> {
        if ![1, 2, 4, 8].contains(&header_size) {
            return Err("header_size must be 1, 2, 4 or 8".into());
        }
        let capacity = if header_size == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * header_size)) - 1
        };
        Ok(LengthPrefix {
            header_size,
            big_endian,
            max_frame_size: max_frame_size.min(capacity),
            panic_on,
        })
    }

    fn header(&self, bytes: &[u8]) -> u64 {
        let mut n = 0u64;
        if self.big_endian {
            for b in bytes {
                n = n << 8 | u64::from(*b);
            }
        } else {
            for b in bytes.iter().rev() {
                n = n << 8 | u64::from(*b);
            }
        }
        n
    }

    fn maybe_panic(&self, data: &[u8]) {
        if self.panic_on.as_deref() == Some(data) {
            panic!("asked to panic on {data:?}");
        }
    }
}

impl Framing for LengthPrefix {
    type State = ();

    fn name(&self) -> &str {
        "length-prefix-plugin"
    }

    fn new_state(&self) {}

    fn unpack(&self, _: &mut (), input: &[u8], frames: &mut Frames<'_>) -> Result<usize, String> {
        let mut used = 0;
        while input.len() - used >= self.header_size {
            let declared = self.header(&input[used..used + self.header_size]);
            if declared > self.max_frame_size {
                return Err(format!(
                    "frame declares {declared} bytes, over max_frame_size {}",
                    self.max_frame_size
                ));
            }
            let start = used + self.header_size;
            if declared > (input.len() - start) as u64 {
                break;
            }
            let end = start + declared as usize;
            self.maybe_panic(&input[start..end]);
            frames.push(&input[start..end]);
            used = end;
        }
        Ok(used)
    }

    fn check(&self, payload: &[u8]) -> Result<(), String> {
        let capacity = if self.header_size >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * self.header_size)) - 1
        };
        if payload.len() as u64 > capacity {
            return Err(format!(
                "a payload of {} bytes does not fit in a {}-byte length header",
                payload.len(),
                self.header_size
            ));
        }
        Ok(())
    }

    fn pack(&self, _: Option<&mut ()>, payload: &[u8], out: &mut Output<'_>) -> Result<(), String> {
        self.maybe_panic(payload);
        let len = payload.len() as u64;
        if self.big_endian {
            out.extend(&len.to_be_bytes()[8 - self.header_size..]);
        } else {
            out.extend(&len.to_le_bytes()[..self.header_size]);
        }
        out.extend(payload);
        Ok(())
    }

    fn max_buffered_input(&self) -> usize {
        usize::try_from(self.max_frame_size)
            .unwrap_or(usize::MAX)
            .saturating_add(self.header_size)
    }

    fn pack_is_stateless(&self) -> bool {
        true
    }
}

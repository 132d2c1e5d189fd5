//! Delimited framing: each frame ends with a delimiter of 1 to 16 bytes.

use memchr::memmem;

use super::{FrameSink, Protocol, ProtocolError, ProtocolState};

/// The longest delimiter accepted.
pub const MAX_DELIMITER: usize = 16;

/// Frames that end with a fixed delimiter (`b"\r\n"`, `b"\0"`, ...), removed from the
/// payload handed over and appended to every payload sent.
///
/// The search is incremental: when a frame arrives in many pieces, the bytes already
/// searched are not searched again. A frame longer than `max_frame_size` closes the
/// connection as soon as that many bytes have arrived without a delimiter.
///
/// # Examples
///
/// ```
/// use pygev_core::{Delimited, FrameSink, Protocol};
///
/// let framing = Delimited::new(b"\r\n", 1024).unwrap();
/// let mut state = framing.new_state();
/// let mut frames = FrameSink::new();
/// let used = framing.unpack(&mut state, b"GET\r\nHE", &mut frames).unwrap();
/// assert_eq!(used, 5);
/// assert_eq!(frames.drain().collect::<Vec<_>>(), vec![b"GET".to_vec()]);
///
/// let mut wire = Vec::new();
/// framing.pack(&mut state, b"OK", &mut wire).unwrap();
/// assert_eq!(wire, b"OK\r\n");
/// ```
#[derive(Debug, Clone)]
pub struct Delimited {
    delimiter: Vec<u8>,
    finder: memmem::Finder<'static>,
    max_frame_size: usize,
}

/// How far into a connection's unconsumed input the search for the delimiter got.
#[derive(Debug, Default)]
struct Searched {
    /// No delimiter starts before this offset.
    upto: usize,
}

impl Delimited {
    /// A framing ending frames with `delimiter` (1 to 16 bytes) and accepting frames of at
    /// most `max_frame_size` bytes, delimiter not counted.
    pub fn new(delimiter: &[u8], max_frame_size: usize) -> Result<Self, String> {
        if delimiter.is_empty() || delimiter.len() > MAX_DELIMITER {
            return Err(format!(
                "pygev: the delimiter must be 1 to {MAX_DELIMITER} bytes, got {}",
                delimiter.len()
            ));
        }
        Ok(Delimited {
            delimiter: delimiter.to_vec(),
            finder: memmem::Finder::new(delimiter).into_owned(),
            max_frame_size,
        })
    }

    /// The delimiter.
    pub fn delimiter(&self) -> &[u8] {
        &self.delimiter
    }

    /// The largest frame accepted, delimiter not counted.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    fn too_long(&self, at_least: usize) -> ProtocolError {
        ProtocolError::new(format!(
            "pygev: no delimiter within max_frame_size {} bytes (frame of at least {at_least} \
             bytes)",
            self.max_frame_size
        ))
    }
}

impl Protocol for Delimited {
    fn name(&self) -> &str {
        "delimited"
    }

    fn new_state(&self) -> ProtocolState {
        Some(Box::new(Searched::default()))
    }

    fn unpack(
        &self,
        state: &mut ProtocolState,
        input: &[u8],
        frames: &mut FrameSink,
    ) -> Result<usize, ProtocolError> {
        let searched = state
            .as_mut()
            .and_then(|s| s.downcast_mut::<Searched>())
            .ok_or_else(|| ProtocolError::new("pygev: delimited framing lost its state"))?;
        let dlen = self.delimiter.len();
        let mut used = 0; // start of the current frame
        let mut from = searched.upto.min(input.len()); // where the search resumes
        loop {
            match self.finder.find(&input[from..]) {
                Some(offset) => {
                    let end = from + offset;
                    if end - used > self.max_frame_size {
                        return Err(self.too_long(end - used));
                    }
                    frames.push(&input[used..end]);
                    used = end + dlen;
                    from = used;
                }
                None => {
                    // Positions from which a whole delimiter no longer fits were not
                    // really searched: resume there when more bytes come.
                    let upto = (input.len() + 1).saturating_sub(dlen).max(used);
                    if upto - used > self.max_frame_size {
                        return Err(self.too_long(upto - used));
                    }
                    searched.upto = upto - used;
                    return Ok(used);
                }
            }
        }
    }

    fn check_payload(&self, payload: &[u8]) -> Result<(), ProtocolError> {
        let dlen = self.delimiter.len();
        // The first delimiter in payload + delimiter must be the appended one.
        let tail_start = payload.len().saturating_sub(dlen - 1);
        let mut tail = Vec::with_capacity(2 * MAX_DELIMITER);
        tail.extend_from_slice(&payload[tail_start..]);
        tail.extend_from_slice(&self.delimiter);
        let inside = self.finder.find(payload).is_some()
            || self.finder.find(&tail) != Some(payload.len() - tail_start);
        if inside {
            return Err(ProtocolError::new(format!(
                "pygev: a payload of {} bytes contains the delimiter {:?}, so the peer would \
                 split it",
                payload.len(),
                String::from_utf8_lossy(&self.delimiter)
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
        out.reserve(payload.len() + self.delimiter.len());
        out.extend_from_slice(payload);
        out.extend_from_slice(&self.delimiter);
        Ok(())
    }

    fn max_buffered_input(&self) -> usize {
        // The frame, its delimiter, and what one read may bring after it.
        self.max_frame_size.saturating_add(2 * self.delimiter.len())
    }

    fn pack_is_stateless(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upto(state: &ProtocolState) -> usize {
        state
            .as_ref()
            .and_then(|s| s.downcast_ref::<Searched>())
            .unwrap()
            .upto
    }

    #[test]
    fn the_search_resumes_where_it_stopped() {
        let framing = Delimited::new(b"END", 1 << 20).unwrap();
        let mut state = framing.new_state();
        let mut sink = FrameSink::new();
        let mut input = Vec::new();
        for piece in [&b"abcd"[..], b"efgE", b"N", b"D!"] {
            input.extend_from_slice(piece);
            let used = framing.unpack(&mut state, &input, &mut sink).unwrap();
            input.drain(..used);
            if sink.is_empty() {
                // Every position from which "END" could no longer start was searched once.
                assert_eq!(upto(&state), input.len() + 1 - 3);
            }
        }
        assert_eq!(sink.drain().collect::<Vec<_>>(), vec![b"abcdefg".to_vec()]);
        assert_eq!(input, b"!");
        assert_eq!(upto(&state), 0);
    }
}

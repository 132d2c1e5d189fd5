//! RESP2 request framing (what Redis clients send) as a pygev protocol plugin.
//!
//! Each whole command becomes one frame for the handler: its arguments, each as a 4-byte
//! little-endian length and the bytes (`pygev_resp.args(frame)` splits them). Commands come
//! as RESP arrays of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or as inline commands
//! (`PING\r\n`). Replies are RESP already (`pygev_resp.simple("OK")` and friends), so
//! packing is the identity.

use pygev_plugin::{Frames, Framing, Output};
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

/// Longest inline command line.
const MAX_INLINE: usize = 64 << 10;
/// Most arguments in one command.
const MAX_ARGS: usize = 1 << 20;

/// A parsed command: its arguments as ranges of the input, and where it ends.
type Command = (Vec<(usize, usize)>, usize);

struct Resp {
    /// Largest command, all arguments together.
    max_command_size: usize,
}

/// Where a line ends (the index of its `\r`), if it is all there.
fn line_end(input: &[u8], from: usize) -> Option<usize> {
    memchr_crlf(&input[from..]).map(|i| from + i)
}

fn memchr_crlf(input: &[u8]) -> Option<usize> {
    input.windows(2).position(|w| w == b"\r\n")
}

/// A decimal number of a header line.
fn number(digits: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "Protocol error: invalid number {:?}",
                String::from_utf8_lossy(digits)
            )
        })
}

impl Resp {
    /// Parses one command at `input[at..]`: `Ok(None)` while incomplete, else the arguments
    /// as (start, end) ranges and where the command ends.
    fn command(&self, input: &[u8], at: usize) -> Result<Option<Command>, String> {
        if input[at] != b'*' {
            let Some(end) = line_end(input, at) else {
                if input.len() - at > MAX_INLINE {
                    return Err(format!(
                        "Protocol error: inline command over {MAX_INLINE} bytes"
                    ));
                }
                return Ok(None);
            };
            let mut args = Vec::new();
            let mut i = at;
            while i < end {
                while i < end && input[i].is_ascii_whitespace() {
                    i += 1;
                }
                let start = i;
                while i < end && !input[i].is_ascii_whitespace() {
                    i += 1;
                }
                if i > start {
                    args.push((start, i));
                }
            }
            return Ok(Some((args, end + 2)));
        }
        let Some(end) = line_end(input, at) else {
            return Ok(None);
        };
        let count = number(&input[at + 1..end])?;
        if !(0..=MAX_ARGS as i64).contains(&count) {
            return Err(format!("Protocol error: invalid multibulk length {count}"));
        }
        let mut args = Vec::with_capacity(count as usize);
        let mut pos = end + 2;
        let mut total = 0usize;
        for _ in 0..count {
            if pos >= input.len() {
                return Ok(None);
            }
            if input[pos] != b'$' {
                return Err(format!(
                    "Protocol error: expected '$', got '{}'",
                    input[pos] as char
                ));
            }
            let Some(end) = line_end(input, pos) else {
                return Ok(None);
            };
            let len = number(&input[pos + 1..end])?;
            if len < 0 || len as usize > self.max_command_size - total.min(self.max_command_size) {
                return Err(format!(
                    "Protocol error: invalid bulk length {len} (max_command_size {})",
                    self.max_command_size
                ));
            }
            let len = len as usize;
            total += len;
            let start = end + 2;
            if input.len() < start + len + 2 {
                return Ok(None);
            }
            if &input[start + len..start + len + 2] != b"\r\n" {
                return Err("Protocol error: bulk string not followed by CRLF".into());
            }
            args.push((start, start + len));
            pos = start + len + 2;
        }
        Ok(Some((args, pos)))
    }
}

impl Framing for Resp {
    type State = Vec<u8>; // the frame being built, reused

    fn name(&self) -> &str {
        "resp"
    }

    fn new_state(&self) -> Vec<u8> {
        Vec::new()
    }

    fn unpack(
        &self,
        frame: &mut Vec<u8>,
        input: &[u8],
        frames: &mut Frames<'_>,
    ) -> Result<usize, String> {
        let mut used = 0;
        while used < input.len() {
            let Some((args, end)) = self.command(input, used)? else {
                break;
            };
            if !args.is_empty() {
                frame.clear();
                for (start, stop) in args {
                    frame.extend_from_slice(&((stop - start) as u32).to_le_bytes());
                    frame.extend_from_slice(&input[start..stop]);
                }
                frames.push(frame);
            }
            used = end;
        }
        if frame.capacity() > 64 << 10 {
            *frame = Vec::new(); // an idle connection keeps no large buffer
        }
        Ok(used)
    }

    fn pack(
        &self,
        _: Option<&mut Vec<u8>>,
        payload: &[u8],
        out: &mut Output<'_>,
    ) -> Result<(), String> {
        out.extend(payload);
        Ok(())
    }

    fn max_buffered_input(&self) -> usize {
        // The arguments, and their headers (bounded by the line lengths).
        self.max_command_size
            .saturating_mul(2)
            .saturating_add(MAX_INLINE)
    }

    fn pack_is_stateless(&self) -> bool {
        true
    }

    fn pack_is_identity(&self) -> bool {
        true
    }
}

/// The capsule pygev takes as `protocol=`: RESP2 requests, commands of at most
/// `max_command_size` bytes.
#[pyfunction]
#[pyo3(signature = (max_command_size = 64 << 20))]
fn capsule(py: Python<'_>, max_command_size: usize) -> PyResult<Bound<'_, PyCapsule>> {
    pygev_plugin::capsule!(py, Resp { max_command_size })
}

#[pymodule]
fn _pygev_resp(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(capsule, m)?)
}

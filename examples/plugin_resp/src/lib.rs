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
/// Longest `*<count>` or `$<length>` line (Redis's limits fit in far less).
const MAX_HEADER: usize = 32;
/// Most arguments in one command.
const MAX_ARGS: usize = 1 << 20;

struct Resp {
    /// Largest command, all arguments together (at most `u32::MAX`).
    max_command_size: usize,
}

/// How far the parse of the (incomplete) command at the start of the input got, so that
/// more bytes do not make it start over (a command trickling in stays linear).
#[derive(Default)]
struct Progress {
    /// Bytes of the command parsed so far (its header line and whole arguments).
    pos: usize,
    /// Arguments still to come; `None` until the `*<count>` line is read.
    remaining: Option<usize>,
    /// The arguments found so far, as ranges of the input.
    args: Vec<(usize, usize)>,
    /// Their bytes, summed (against `max_command_size`).
    total: usize,
    /// For an inline command: how far the search for its end has gone.
    scanned: usize,
}

/// One connection's state.
#[derive(Default)]
struct State {
    progress: Progress,
    /// The frame being built, reused.
    frame: Vec<u8>,
}

/// Where the line starting at `from` ends (the index of its `\r`), looking at most `limit`
/// bytes ahead: `Ok(None)` if not there yet, an error past the limit.
fn line_end(input: &[u8], from: usize, limit: usize, what: &str) -> Result<Option<usize>, String> {
    let window = &input[from..input.len().min(from + limit + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(from + i)),
        None if input.len() - from > limit + 1 => {
            Err(format!("Protocol error: {what} line over {limit} bytes"))
        }
        None => Ok(None),
    }
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
    /// Parses the command at the start of `input`, resuming from `p`: `Ok(None)` while it
    /// is incomplete, else where it ends (its arguments are in `p.args`).
    fn command(&self, input: &[u8], p: &mut Progress) -> Result<Option<usize>, String> {
        if input[0] != b'*' {
            return self.inline(input, p);
        }
        if p.remaining.is_none() {
            let Some(end) = line_end(input, 0, MAX_HEADER, "multibulk length")? else {
                return Ok(None);
            };
            let count = number(&input[1..end])?;
            if !(0..=MAX_ARGS as i64).contains(&count) {
                return Err(format!("Protocol error: invalid multibulk length {count}"));
            }
            p.remaining = Some(count as usize);
            p.args = Vec::with_capacity((count as usize).min(64));
            p.pos = end + 2;
        }
        while p.remaining > Some(0) {
            if p.pos >= input.len() {
                return Ok(None);
            }
            if input[p.pos] != b'$' {
                return Err(format!(
                    "Protocol error: expected '$', got '{}'",
                    input[p.pos] as char
                ));
            }
            let Some(end) = line_end(input, p.pos, MAX_HEADER, "bulk length")? else {
                return Ok(None);
            };
            let len = number(&input[p.pos + 1..end])?;
            let room = self.max_command_size - p.total;
            if len < 0 || len as u64 > room as u64 {
                return Err(format!(
                    "Protocol error: invalid bulk length {len} (max_command_size {})",
                    self.max_command_size
                ));
            }
            let len = len as usize;
            let start = end + 2;
            if input.len() < start + len + 2 {
                return Ok(None); // the argument is not all here: resume at its header
            }
            if &input[start + len..start + len + 2] != b"\r\n" {
                return Err("Protocol error: bulk string not followed by CRLF".into());
            }
            p.args.push((start, start + len));
            p.total += len;
            p.pos = start + len + 2;
            p.remaining = p.remaining.map(|n| n - 1);
        }
        Ok(Some(p.pos))
    }

    /// An inline command: whitespace-separated arguments up to CRLF.
    fn inline(&self, input: &[u8], p: &mut Progress) -> Result<Option<usize>, String> {
        let from = p.scanned.saturating_sub(1); // a CR may have been the last byte seen
        let limit = MAX_INLINE.saturating_sub(from);
        let Some(end) = line_end(input, from, limit, "inline command")? else {
            p.scanned = input.len();
            return Ok(None);
        };
        let line = &input[..end];
        let mut i = 0;
        while i < line.len() {
            while i < line.len() && line[i].is_ascii_whitespace() {
                i += 1;
            }
            let start = i;
            while i < line.len() && !line[i].is_ascii_whitespace() {
                i += 1;
            }
            if i > start {
                p.args.push((start, i));
            }
        }
        Ok(Some(end + 2))
    }
}

impl Framing for Resp {
    type State = State;

    fn name(&self) -> &str {
        "resp"
    }

    fn new_state(&self) -> State {
        State::default()
    }

    fn unpack(
        &self,
        state: &mut State,
        input: &[u8],
        frames: &mut Frames<'_>,
    ) -> Result<usize, String> {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            let Some(end) = self.command(rest, &mut state.progress)? else {
                break;
            };
            let progress = std::mem::take(&mut state.progress);
            if !progress.args.is_empty() {
                state.frame.clear();
                for (start, stop) in progress.args {
                    state
                        .frame
                        .extend_from_slice(&((stop - start) as u32).to_le_bytes());
                    state.frame.extend_from_slice(&rest[start..stop]);
                }
                frames.push(&state.frame);
            }
            used += end;
        }
        if state.frame.capacity() > 64 << 10 {
            state.frame = Vec::new(); // an idle connection keeps no large buffer
        }
        Ok(used)
    }

    fn pack(
        &self,
        _: Option<&mut State>,
        payload: &[u8],
        out: &mut Output<'_>,
    ) -> Result<(), String> {
        out.extend(payload);
        Ok(())
    }

    fn max_buffered_input(&self) -> usize {
        // The arguments, their header lines (at most MAX_HEADER + 2 each), or one inline line.
        let headers = (MAX_ARGS + 1) * (MAX_HEADER + 2);
        self.max_command_size
            .saturating_add(headers)
            .max(MAX_INLINE + 2)
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
    if max_command_size == 0 || max_command_size > u32::MAX as usize {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "max_command_size must be 1 to 4294967295 bytes",
        ));
    }
    pygev_plugin::capsule!(py, Resp { max_command_size })
}

#[pymodule]
fn _pygev_resp(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(capsule, m)?)
}

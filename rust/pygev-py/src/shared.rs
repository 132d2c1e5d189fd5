//! State shared by a server's Python objects (`Server`, `Connection`, `Timer`) and its
//! dispatcher.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pygev_core::{
    Backlog, CloseReason, Command, DispatchQueue, LoopHandle, MessageKind, Protocol, ProtocolError,
};

use crate::callback_times::CallbackTimes;
use crate::timer::Timer;
use pyo3::prelude::*;

thread_local! {
    /// The `Shared` whose dispatcher runs callbacks on this thread right now (its address),
    /// or 0. Commands issued from inside a batch are collected and posted once per batch.
    static DISPATCHING: Cell<usize> = const { Cell::new(0) };
}

/// A batch in progress on this thread (see [`Shared::begin_batch`]).
pub(crate) struct Batch<'a>(&'a Arc<Shared>);

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.0.end_batch();
    }
}

/// The dispatcher's counters.
#[derive(Default)]
pub(crate) struct DispatchStats {
    pub(crate) events: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) max_batch: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) stats: DispatchStats,
    /// How long callbacks take, when timed (the dispatcher's `CallbackClock` fills it).
    pub(crate) callback_times: Arc<CallbackTimes>,
    pub(crate) queue: Arc<DispatchQueue>,
    /// Set when the server starts.
    pub(crate) loops: OnceLock<Vec<Arc<LoopHandle>>>,
    /// Commands issued during the current batch, per loop.
    outboxes: Mutex<Vec<Vec<Command>>>,
    /// Active timers by id. Only the `Server` reports these references to the GC.
    pub(crate) timers: Mutex<HashMap<u64, Py<Timer>>>,
    /// The server's mode, chosen when it was built: its accepted connections' (and its
    /// outgoing ones', unless dialed with a protocol of their own). Only the `Server`
    /// reports its references to the GC.
    pub(crate) mode: crate::mode::SharedMode,
    /// Unsent output a connection may have (see `Connection::check_room`).
    pub(crate) max_write_buffer: usize,
    /// The server's write high- and low-water marks (connections start with these).
    pub(crate) write_limits: (usize, usize),
    next_timer_id: AtomicU64,
    /// `Server.connect()`'s requests. Only the `Server` reports their references to the GC.
    pub(crate) dials: crate::dial::DialTable,
    /// Connection ids, shared with the core (dialed connections take theirs here).
    pub(crate) ids: Arc<AtomicU64>,
    /// `await conn.drain()`'s waiters. Only the `Server` reports their references to the
    /// GC.
    pub(crate) drains: crate::drain::DrainTable,
}

impl Shared {
    pub(crate) fn new(
        queue: Arc<DispatchQueue>,
        mode: crate::mode::SharedMode,
        (max_write_buffer, write_limits): (usize, (usize, usize)),
        ids: Arc<AtomicU64>,
    ) -> Self {
        Shared {
            write_limits,
            dials: crate::dial::DialTable::default(),
            ids,
            mode,
            max_write_buffer,
            stats: DispatchStats::default(),
            callback_times: Arc::default(),
            queue,
            loops: OnceLock::new(),
            outboxes: Mutex::new(Vec::new()),
            timers: Mutex::new(HashMap::new()),
            next_timer_id: AtomicU64::new(1),
            drains: crate::drain::DrainTable::default(),
        }
    }

    fn key(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }

    /// Marks this thread as running `self`'s callbacks until the returned guard is
    /// dropped, which posts the batch's commands (also when a panic unwinds through it).
    pub(crate) fn begin_batch(self: &Arc<Self>) -> Batch<'_> {
        DISPATCHING.with(|d| d.set(self.key()));
        Batch(self)
    }

    /// Posts the commands collected during the batch: one wake-up per loop at most.
    fn end_batch(self: &Arc<Self>) {
        DISPATCHING.with(|d| d.set(0));
        let Some(loops) = self.loops.get() else {
            return;
        };
        let mut outboxes = self.lock_outboxes();
        for (handle, outbox) in loops.iter().zip(outboxes.iter_mut()) {
            posted(handle.index(), handle.post_all(outbox));
        }
    }

    fn lock_outboxes(&self) -> MutexGuard<'_, Vec<Vec<Command>>> {
        self.outboxes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the started loops and sizes the per-loop outboxes once; posts the
    /// connects requested before.
    pub(crate) fn set_loops(&self, loops: Vec<Arc<LoopHandle>>) {
        self.lock_outboxes().resize_with(loops.len(), Vec::new);
        let _ = self.loops.set(loops);
        if let Some(loops) = self.loops.get() {
            self.dials.post_waiting(loops);
        }
    }

    fn in_batch(self: &Arc<Self>) -> bool {
        DISPATCHING.with(|d| d.get()) == self.key()
    }

    /// Posts to a loop at once; false when the server is not running or the loop ended.
    fn post_to(&self, loop_index: u32, command: Command) -> bool {
        let Some(loops) = self.loops.get() else {
            return false;
        };
        posted(loop_index, loops[loop_index as usize].post(command))
    }

    /// Sends `command` (anything but a send) to loop `loop_index`: batched when called from
    /// a callback of this server, posted at once otherwise. Returns false when the server
    /// is not running.
    pub(crate) fn post(self: &Arc<Self>, loop_index: u32, command: Command) -> bool {
        if self.loops.get().is_none() {
            return false;
        }
        if self.in_batch() {
            self.lock_outboxes()[loop_index as usize].push(command);
            return true;
        }
        self.post_to(loop_index, command)
    }

    /// Like [`Shared::post`], or posted at once even inside a batch (ahead of the batch's
    /// commands) with `now`.
    pub(crate) fn post_command(
        self: &Arc<Self>,
        loop_index: u32,
        command: Command,
        now: bool,
    ) -> bool {
        match now {
            true => self.post_to(loop_index, command),
            false => self.post(loop_index, command),
        }
    }

    /// Sends `payload` to a connection framed by `framing`, charging its backlog with
    /// exactly the bytes queued (the loop credits them as it takes the send). Inside a
    /// batch, with a framing that packs without state, it is packed straight into the
    /// outbox (joining the connection's other sends of the batch). Returns false when the
    /// server is not running.
    pub(crate) fn post_send(
        self: &Arc<Self>,
        to: Target<'_>,
        payload: Cow<'_, [u8]>,
        framing: Packer<'_>,
    ) -> bool {
        if framing.packing == Packing::InLoop || !self.in_batch() {
            return self.post_message(to, payload, MessageKind::Binary);
        }
        if self.loops.get().is_none() {
            return false;
        }
        let mut outboxes = self.lock_outboxes();
        let outbox = &mut outboxes[to.loop_index as usize];
        self.push_wire(outbox, to, payload, framing);
        true
    }

    /// Sends a message of `kind` to a connection, for the loop to pack with its framing
    /// (batched inside a callback). Returns false when the server is not running.
    pub(crate) fn post_message(
        self: &Arc<Self>,
        to: Target<'_>,
        payload: Cow<'_, [u8]>,
        kind: MessageKind,
    ) -> bool {
        if self.loops.get().is_none() {
            return false;
        }
        let data = payload.into_owned();
        if !self.in_batch() {
            return self.post_to(to.loop_index, to.charged_send(data, false, kind));
        }
        to.backlog.charge_send_in_batch(data.len());
        self.lock_outboxes()[to.loop_index as usize].push(Command::Send {
            token: to.token,
            id: to.id,
            data,
            packed: false,
            kind,
        });
        true
    }

    fn spare_buffer(&self, loop_index: u32, capacity: usize) -> Option<Vec<u8>> {
        self.loops.get()?[loop_index as usize].spare_buffer(capacity)
    }

    /// Queues `payload` in wire form in a loop's outbox, charging the bytes it adds.
    ///
    /// NOTE: replies and sends to one connection within a batch become one buffer, so the
    /// loop writes them with one system call.
    fn push_wire(
        &self,
        outbox: &mut Vec<Command>,
        to: Target<'_>,
        payload: Cow<'_, [u8]>,
        framing: Packer<'_>,
    ) {
        let (token, id) = (to.token, to.id);
        let identity = framing.packing == Packing::Identity;
        match payload {
            Cow::Owned(data) if identity && !merges(outbox, token, id) => {
                // Moved, not copied.
                to.backlog.charge_send_in_batch(data.len());
                outbox.push(Command::Send {
                    token,
                    id,
                    data,
                    packed: true,
                    kind: MessageKind::Binary,
                });
            }
            payload => {
                let spare = |capacity| self.spare_buffer(to.loop_index, capacity);
                let wire = packed_tail(outbox, token, id, payload.len() + 16, spare);
                let before = wire.len();
                match pack_into(framing, &payload, wire) {
                    Ok(()) => {
                        to.backlog.charge_send_in_batch(wire.len() - before);
                    }
                    Err(err) => {
                        // A plugin failed: drop its partial frame and reset that connection.
                        wire.truncate(before);
                        let reason = format!(
                            "{err} (protocol {}, connection {id}, packing a send)",
                            framing.protocol.name()
                        );
                        outbox.push(Command::Abort {
                            token,
                            id,
                            reason: Some(reason),
                            counted_as: CloseReason::Abort,
                        });
                    }
                }
            }
        }
    }

    /// Queues the `size` bytes that `write` puts in wire form here (a WebSocket frame):
    /// inside a batch they join the connection's other small sends in one buffer. Returns
    /// false when the server is not running.
    pub(crate) fn post_wire(
        self: &Arc<Self>,
        to: Target<'_>,
        size: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> bool {
        if self.loops.get().is_none() {
            return false;
        }
        if self.in_batch() {
            let mut outboxes = self.lock_outboxes();
            let spare = |capacity| self.spare_buffer(to.loop_index, capacity);
            let outbox = &mut outboxes[to.loop_index as usize];
            let wire = packed_tail(outbox, to.token, to.id, size, spare);
            let before = wire.len();
            write(wire);
            to.backlog.charge_send_in_batch(wire.len() - before);
            return true;
        }
        let mut data = Vec::with_capacity(size);
        write(&mut data);
        let send = to.charged_send(data, true, MessageKind::Binary);
        self.post_to(to.loop_index, send)
    }

    /// Schedules `callback` at `deadline` (then every `interval`) and returns its timer.
    pub(crate) fn add_timer(
        self: &Arc<Self>,
        py: Python<'_>,
        callback: Py<PyAny>,
        deadline: Instant,
        interval: Option<Duration>,
    ) -> PyResult<Py<Timer>> {
        let id = self.next_timer_id.fetch_add(1, Ordering::Relaxed);
        let timer = Py::new(
            py,
            Timer::new(self.clone(), id, callback, deadline, interval),
        )?;
        self.lock_timers().insert(id, timer.clone_ref(py));
        self.queue.schedule_timer(deadline, id);
        Ok(timer)
    }

    /// The timer `id`, if still active.
    pub(crate) fn timer(&self, py: Python<'_>, id: u64) -> Option<Py<Timer>> {
        self.lock_timers().get(&id).map(|t| t.clone_ref(py))
    }

    /// Forgets timer `id` (cancelled or done).
    pub(crate) fn remove_timer(&self, id: u64) {
        let timer = self.lock_timers().remove(&id);
        drop(timer); // outside the lock
    }

    /// Forgets every timer (the server stopped or is being freed).
    pub(crate) fn clear_timers(&self) {
        self.queue.clear_timers();
        let timers = std::mem::take(&mut *self.lock_timers());
        for timer in timers.values() {
            timer.get().release();
        }
        drop(timers);
    }

    pub(crate) fn lock_timers(&self) -> MutexGuard<'_, HashMap<u64, Py<Timer>>> {
        self.timers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a framing's sends are put in wire form, asked of it once.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Packing {
    /// Its wire form is the payload (raw): moved or copied as it is.
    Identity,
    /// Packed without state, here in the dispatcher (length-prefix, delimited).
    Stateless,
    /// Packed by the loop, with the connection's state.
    InLoop,
}

impl Packing {
    pub(crate) fn of(protocol: &dyn Protocol) -> Packing {
        if protocol.pack_is_identity() {
            Packing::Identity
        } else if protocol.pack_is_stateless() {
            Packing::Stateless
        } else {
            Packing::InLoop
        }
    }
}

/// A framing for sends: the protocol and how it packs.
#[derive(Clone, Copy)]
pub(crate) struct Packer<'a> {
    pub(crate) protocol: &'a dyn Protocol,
    pub(crate) packing: Packing,
}

impl Packer<'static> {
    /// Bytes already in wire form (a Python framing's `packet()`).
    pub(crate) const RAW: Packer<'static> = Packer {
        protocol: &pygev_core::Raw,
        packing: Packing::Identity,
    };
}

/// Where a send goes: a connection's loop, slot and id, and the counters it charges.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) loop_index: u32,
    pub(crate) token: u32,
    pub(crate) id: u64,
    pub(crate) backlog: &'a Backlog,
}

impl Target<'_> {
    /// A send of `data` to this connection, its bytes charged to the connection's backlog
    /// (the loop credits them as it takes the command).
    fn charged_send(&self, data: Vec<u8>, packed: bool, kind: MessageKind) -> Command {
        self.backlog.charge_send(data.len());
        Command::Send {
            token: self.token,
            id: self.id,
            data,
            packed,
            kind,
        }
    }
}

/// Appends the wire form of `payload` to `wire` (identity or stateless framings only).
fn pack_into(framing: Packer<'_>, payload: &[u8], wire: &mut Vec<u8>) -> Result<(), ProtocolError> {
    if framing.packing == Packing::Identity {
        wire.extend_from_slice(payload);
        Ok(())
    } else {
        framing.protocol.pack(&mut None, payload, wire)
    }
}

/// Whether posting to loop `loop_index` went through; an ended loop is not an error worth
/// a log line (the connection is gone).
fn posted(loop_index: u32, result: std::io::Result<()>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotConnected => false,
        Err(e) => {
            log::error!("pygev: could not wake loop {loop_index}: {e}");
            false
        }
    }
}

/// Whether the outbox ends with wire bytes for this connection that more can join.
fn merges(outbox: &[Command], token: u32, id: u64) -> bool {
    matches!(
        outbox.last(),
        Some(Command::Send { token: t, id: i, packed: true, .. }) if *t == token && *i == id
    )
}

/// The wire buffer at the end of `outbox` for this connection, made if needed.
fn packed_tail(
    outbox: &mut Vec<Command>,
    token: u32,
    id: u64,
    capacity: usize,
    spare: impl FnOnce(usize) -> Option<Vec<u8>>,
) -> &mut Vec<u8> {
    // NOTE: merged buffers stay under glibc's mmap threshold (128 KiB): past it, every
    // batch's buffers were fresh mappings, and page faults took 15% of the dispatcher's
    // CPU on 16 KiB WebSocket echo. A large send starts with room for a few more like it,
    // so that merging rarely grows (and copies) a buffer.
    const MAX_MERGED: usize = 120 << 10;
    let fits = |data: &Vec<u8>| data.len() + capacity <= data.capacity().max(MAX_MERGED);
    let merge = matches!(
        outbox.last(),
        Some(Command::Send { token: t, id: i, data, packed: true, .. })
            if *t == token && *i == id && fits(data)
    );
    if !merge {
        let room = if capacity >= MAX_MERGED {
            capacity
        } else {
            (capacity * 4).min(MAX_MERGED)
        };
        outbox.push(Command::Send {
            token,
            id,
            data: spare(room).unwrap_or_else(|| Vec::with_capacity(room)),
            packed: true,
            kind: MessageKind::Binary,
        });
    }
    match outbox.last_mut() {
        Some(Command::Send { data, .. }) => {
            if data.capacity() - data.len() < capacity {
                // Grow as Vec would (doubling), but not past MAX_MERGED.
                let want = (data.len() + capacity).max(data.capacity() * 2);
                data.reserve_exact(want.min(MAX_MERGED.max(data.len() + capacity)) - data.len());
            }
            data
        }
        _ => unreachable!("a send was just pushed"),
    }
}

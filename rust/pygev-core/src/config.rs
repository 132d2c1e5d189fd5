//! Server settings shared by the acceptor and the loops.

use std::sync::Arc;
use std::time::Duration;

use crate::proxy::TrustedProxies;
use crate::tls::ServerTls;

/// How the acceptor picks the loop that takes a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Each loop in turn.
    #[default]
    RoundRobin,
    /// The loop with the fewest open connections.
    LeastConnections,
}

/// Every tunable of a server, with production defaults.
///
/// # Examples
///
/// ```
/// use pygev_core::Config;
///
/// let config = Config { num_loops: 2, ..Config::default() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Number of loop threads (at least 1).
    pub num_loops: usize,
    /// One SO_REUSEPORT listener per loop instead of one acceptor thread.
    pub reuse_port: bool,
    /// How the acceptor spreads connections over loops.
    pub strategy: Strategy,
    /// Close connections that made no progress, reading or writing, for this long (a peer
    /// that stopped reading is idle too, however much output waits for it).
    pub idle_timeout: Option<Duration>,
    /// A frame (or WebSocket message) that started arriving must be complete within this
    /// long, or the connection is reset: a slowloris peer cannot hold it open by trickling.
    pub frame_timeout: Option<Duration>,
    /// listen(2) backlog.
    pub backlog: i32,
    /// Permissions of a Unix socket file the server makes (e.g. 0o660); `None` keeps what
    /// the process's umask gives.
    pub unix_mode: Option<u32>,
    /// How long `close()` and server stop wait for pending output before closing anyway.
    pub drain_timeout: Duration,
    /// Output bytes past which a connection stops reading until its output drains to
    /// `write_low_water` (each connection may set its own: [`Backlog::set_write_limits`](crate::Backlog::set_write_limits)).
    pub write_high_water: usize,
    /// Output bytes at or under which a connection reads again, and `drain()` returns.
    pub write_low_water: usize,
    /// Output bytes past which a connection is closed (a peer that never reads).
    pub max_write_buffer: usize,
    /// Bytes of unparsed input a connection may hold before it is closed; raised, for each
    /// framing, to the largest frame it accepts (`Protocol::max_buffered_input`).
    pub max_input_buffer: usize,
    /// Dispatch cost (bytes held plus [`EVENT_COST`](crate::EVENT_COST) per event) a loop
    /// may have queued for the dispatcher before it stops reading and accepting.
    pub dispatch_high_water: usize,
    /// Dispatch cost one connection may have queued before the loop stops reading it (the
    /// others are still read): a loud client cannot fill the queue ahead of everyone.
    pub conn_dispatch_high_water: usize,
    /// The most handler calls the dispatcher makes in one batch; between batches replies go
    /// out and paused reads resume, and connections with much queued take turns.
    pub max_batch_events: usize,
    /// Size of each loop's read buffer (one read(2) reads at most this much).
    pub read_buffer_size: usize,
    /// Bytes a loop reads before it hands what it has to the dispatcher and yields its CPU.
    /// Small batches stay in the CPU cache from read(2) through the handler to write(2).
    pub batch_bytes: usize,
    /// TLS on every accepted connection (`None`: plain).
    pub tls: Option<Arc<ServerTls>>,
    /// How long an accepted connection's TLS handshake may take before it is closed.
    pub tls_handshake_timeout: Duration,
    /// TLS handshakes a loop runs at once with accepted connections: past it, a new
    /// connection is refused (reset), so that a flood of clients that never finish their
    /// handshake cannot take the loop's memory (each may hold a handshake message, up to
    /// 64 KiB) while established connections go on.
    pub tls_max_handshakes: usize,
    /// Read a PROXY protocol header (v1 or v2) first on every accepted connection, from
    /// these peers only (`None`: no header expected). A peer not trusted, a header that
    /// is malformed or missing, or none within `proxy_header_timeout`, closes the
    /// connection (reset) with a log line before the dispatcher hears of it.
    pub proxy_protocol: Option<TrustedProxies>,
    /// How long an accepted connection may take to send its PROXY protocol header.
    pub proxy_header_timeout: Duration,
}

/// The largest `max_write_buffer`: a connection's unsent output is counted in 32 bits
/// (see [`Backlog`](crate::Backlog)).
pub const MAX_WRITE_BUFFER: usize = 1 << 31;

/// How long an accepted connection may take to send its PROXY protocol header by default
/// (a proxy sends it at once).
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for Config {
    fn default() -> Self {
        Config {
            num_loops: 1,
            reuse_port: false,
            strategy: Strategy::RoundRobin,
            idle_timeout: None,
            frame_timeout: Some(Duration::from_secs(60)),
            backlog: 1024,
            unix_mode: None,
            drain_timeout: Duration::from_secs(5),
            write_high_water: 1 << 20,
            write_low_water: 1 << 19,
            max_write_buffer: 64 << 20,
            max_input_buffer: 64 << 20,
            dispatch_high_water: 32 << 20,
            conn_dispatch_high_water: 256 << 10,
            max_batch_events: 2048,
            read_buffer_size: 64 << 10,
            batch_bytes: 256 << 10,
            tls: None,
            tls_handshake_timeout: Duration::from_secs(10),
            tls_max_handshakes: 1024,
            proxy_protocol: None,
            proxy_header_timeout: PROXY_HEADER_TIMEOUT,
        }
    }
}

impl Config {
    /// Checks the settings; the error message names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_loops == 0 || self.num_loops > 1024 {
            return Err(format!(
                "pygev: num_loops must be between 1 and 1024, got {}",
                self.num_loops
            ));
        }
        if let Some(idle) = self.idle_timeout {
            if idle.is_zero() {
                return Err("pygev: idle_timeout must be positive".into());
            }
        }
        if self.frame_timeout.is_some_and(|t| t.is_zero()) {
            return Err("pygev: frame_timeout must be positive".into());
        }
        if self.backlog < 1 {
            return Err(format!(
                "pygev: backlog must be positive, got {}",
                self.backlog
            ));
        }
        if self.max_write_buffer > MAX_WRITE_BUFFER {
            return Err(format!(
                "pygev: max_write_buffer is at most {MAX_WRITE_BUFFER} (2 GiB), got {}",
                self.max_write_buffer
            ));
        }
        if self.write_high_water == 0 || self.max_write_buffer < self.write_high_water {
            return Err(format!(
                "pygev: need 0 < write_high_water <= max_write_buffer, got {} and {}",
                self.write_high_water, self.max_write_buffer
            ));
        }
        if self.write_low_water > self.write_high_water || self.write_high_water > u32::MAX as usize
        {
            return Err(format!(
                "pygev: need write_low_water <= write_high_water <= 4 GiB, got {} and {}",
                self.write_low_water, self.write_high_water
            ));
        }
        if self.max_input_buffer == 0
            || self.dispatch_high_water == 0
            || self.conn_dispatch_high_water == 0
        {
            return Err("pygev: buffer limits must be positive".into());
        }
        if self.max_batch_events == 0 {
            return Err("pygev: max_batch_events must be positive".into());
        }
        if self.read_buffer_size < 512 {
            return Err(format!(
                "pygev: read_buffer_size must be at least 512, got {}",
                self.read_buffer_size
            ));
        }
        if self.batch_bytes == 0 {
            return Err("pygev: batch_bytes must be positive".into());
        }
        Ok(())
    }
}

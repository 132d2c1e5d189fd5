//! Why connections closed, in a few kinds an operator can act on.

/// Why a connection closed: the cause that began its close, counted per loop in
/// [`LoopStatsSnapshot::closed_by_reason`](crate::LoopStatsSnapshot::closed_by_reason).
///
/// The first cause wins: a connection the handler closed stays [`Local`](Self::Local)
/// even if flushing its output then runs past `drain_timeout`, and one whose peer sent
/// EOF or a WebSocket close stays [`Peer`](Self::Peer) although the dispatcher then
/// closes it.
///
/// # Examples
///
/// ```
/// use pygev_core::CloseReason;
///
/// assert_eq!(CloseReason::Idle.name(), "idle");
/// assert_eq!(CloseReason::ALL.len(), CloseReason::COUNT);
/// assert!(CloseReason::ALL.iter().enumerate().all(|(i, r)| r.index() == i));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CloseReason {
    /// The peer ended it: its EOF, a reset or broken pipe, its WebSocket close frame.
    Peer,
    /// Our side closed it: `conn.close()`, a callback that raised, a handshake the
    /// `on_handshake` hook refused.
    Local,
    /// The server stopped (closes asked for while it stops count here too).
    Stop,
    /// No progress either way for `idle_timeout`.
    Idle,
    /// Another deadline passed: `frame_timeout`, the WebSocket handshake timeout, an
    /// unanswered keepalive ping.
    Timeout,
    /// The peer broke its framing's rules or a size limit on input: a malformed or
    /// oversized frame or message, bad UTF-8, `max_input_buffer`.
    Protocol,
    /// We reset it for anything else: output over `max_write_buffer` (a peer that does
    /// not read), a framing or plugin that failed to pack, a Python `Protocol` that raised.
    Abort,
    /// The socket failed with an error other than the peer's reset.
    Error,
    /// It closed during its TLS handshake (failed, timed out, or refused).
    Tls,
}

impl CloseReason {
    /// How many reasons there are.
    pub const COUNT: usize = 9;

    /// Every reason, in the order of [`CloseReason::index`].
    pub const ALL: [CloseReason; CloseReason::COUNT] = [
        CloseReason::Peer,
        CloseReason::Local,
        CloseReason::Stop,
        CloseReason::Idle,
        CloseReason::Timeout,
        CloseReason::Protocol,
        CloseReason::Abort,
        CloseReason::Error,
        CloseReason::Tls,
    ];

    /// Its position in [`CloseReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its name in `server.stats()` and in metric labels.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Peer => "peer",
            CloseReason::Local => "local",
            CloseReason::Stop => "stop",
            CloseReason::Idle => "idle",
            CloseReason::Timeout => "timeout",
            CloseReason::Protocol => "protocol",
            CloseReason::Abort => "abort",
            CloseReason::Error => "error",
            CloseReason::Tls => "tls",
        }
    }
}

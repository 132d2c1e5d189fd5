//! What crosses between a framing and the dispatcher besides message bytes: a message's
//! kind, a framing's news about its connection ([`Signal`], loop to dispatcher) and
//! instructions to it ([`Control`], dispatcher to loop). Typed, so that no payload carries
//! a marker byte in front of it.

use crate::websocket::client_handshake::{Accepted, HandshakeFailure};
use crate::websocket::handshake::UpgradeRequest;
use crate::websocket::http_request::HttpRequest;

/// What a message is, for framings whose messages have kinds (WebSocket's text and
/// binary); every other framing's messages are `Binary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MessageKind {
    /// Bytes.
    #[default]
    Binary,
    /// Valid UTF-8 text (checked by the framing that read it).
    Text,
}

/// A framing's news about its connection, queued in order with the connection's messages.
#[derive(Debug)]
pub enum Signal {
    /// WebSocket: an upgrade request held for the dispatcher's handshake hook. The
    /// connection reads nothing more until [`Control::Accept`] answers it (or it closes).
    Upgrade(Box<UpgradeRequest>),
    /// WebSocket: a plain HTTP request (not an upgrade) held for the dispatcher's HTTP
    /// hook, which answers it and closes the connection.
    HttpRequest(Box<HttpRequest>),
    /// WebSocket: the handshake completed (a server's loop answered the upgrade itself,
    /// or a client's got its 101).
    Opened {
        /// permessage-deflate was agreed: sends are compressed in the loop.
        compressed: bool,
        /// The server's answer: the subprotocol it chose and its response's header fields
        /// (a client's connection only).
        answer: Option<Box<Accepted>>,
    },
    /// WebSocket client: the server refused the upgrade, answered it wrongly, or not in
    /// time. The loop closes the connection (it was never open for messages).
    HandshakeFailed(Box<HandshakeFailure>),
    /// WebSocket: the connection ends after the messages queued before this signal, and
    /// reads no more. The dispatcher sends `close` (a close frame's payload: code and
    /// reason) with [`Control::Close`] after their replies, if it is `Some` (`None`: ours
    /// went out already), then closes.
    Ending {
        /// The close frame still to send.
        close: Option<Vec<u8>>,
    },
}

/// An instruction to a connection's framing, posted in order with its sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// WebSocket: the hook accepted the upgrade; the complete 101 response, written before
    /// any frame. Input held back meanwhile is read on.
    Accept(Vec<u8>),
    /// WebSocket: start (or answer) the closing handshake with this close frame payload:
    /// code and reason, at most 125 bytes.
    Close(Vec<u8>),
}

impl Signal {
    /// About the memory the signal holds (an upgrade request's text), for dispatch
    /// backpressure.
    pub fn held_bytes(&self) -> usize {
        match self {
            Signal::Upgrade(request) => {
                let fields = request.headers.iter().map(|(n, v)| n.len() + v.len() + 48);
                std::mem::size_of::<UpgradeRequest>() + request.path.len() + fields.sum::<usize>()
            }
            Signal::HttpRequest(request) => request.held_bytes(),
            Signal::Opened { answer, .. } => answer.as_ref().map_or(0, |a| a.held_bytes()),
            Signal::HandshakeFailed(failure) => failure.held_bytes(),
            Signal::Ending { close } => close.as_ref().map_or(0, Vec::capacity),
        }
    }
}

impl Control {
    /// A short name for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Control::Accept(_) => "accept",
            Control::Close(_) => "close",
        }
    }
}

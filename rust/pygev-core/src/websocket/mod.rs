//! WebSocket (RFC 6455), natively in the loop threads. Work in progress (issue 4): the
//! upgrade handshake and the frame reader/writer are here; the protocol that ties them to a
//! connection, and permessage-deflate, follow.

pub mod frames;
pub mod handshake;

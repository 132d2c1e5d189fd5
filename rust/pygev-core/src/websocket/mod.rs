//! WebSocket (RFC 6455), natively in the loop threads. Work in progress (issue 4): the
//! upgrade handshake, the frame reader/writer and permessage-deflate are here; the protocol
//! that ties them to a connection follows.

pub mod deflate;
pub mod frames;
pub mod handshake;

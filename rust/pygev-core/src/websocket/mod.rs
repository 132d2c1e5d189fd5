//! WebSocket (RFC 6455), natively in the loop threads. Work in progress (issue 4): the
//! upgrade handshake is here; frames, the protocol itself and permessage-deflate follow.

pub mod handshake;

//! WebSocket (RFC 6455) with permessage-deflate (RFC 7692), natively in the loop threads:
//! the upgrade handshake, the frame reader and writer, compression, and the [`WebSocket`]
//! framing that ties them to a connection.

pub mod client;
pub mod client_handshake;
pub mod deflate;
pub mod frames;
pub mod handshake;
pub mod http_request;
pub mod masking;
mod protocol;
pub mod reader;
mod session;
mod state;
mod zlib;

pub use protocol::{Settings, WebSocket};

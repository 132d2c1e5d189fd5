//! pygev's reactor core: mio event loops on several threads, per-connection ring buffers,
//! native framing, and the batched queue that carries whole messages to a dispatcher.
//!
//! The crate knows nothing of Python; `pygev-py` binds it. A [`Server`] binds, then
//! [`Server::start`] spawns the loops; whoever drives it drains the [`DispatchQueue`] and
//! posts [`Command`]s back through each loop's [`LoopHandle`].
#![deny(missing_docs)]

mod acceptor;
mod address;
mod backlog;
mod clock;
mod close_reason;
mod config;
mod connection;
mod deadlines;
mod dispatch_queue;
mod event;
mod event_loop;
mod listener;
mod loop_handle;
pub mod plugin;
mod protocols;
pub mod proxy;
mod ring_buffer;
mod server;
mod stats;
mod tls;
mod transport;
pub mod websocket;

pub use address::{parse_inet, Address, UnixAddress};
pub use backlog::Backlog;
pub use close_reason::CloseReason;
pub use config::{Config, Strategy};
pub use dispatch_queue::{DispatchQueue, Found};
pub use event::{Command, ConnectInfo, Event, EVENT_COST};
pub use loop_handle::LoopHandle;
pub use protocols::{
    ByteOrder, Control, Delimited, FrameSink, Frames, Item, LengthPrefix, MessageKind, Protocol,
    ProtocolError, ProtocolState, Raw, Signal, Taken, MAX_DELIMITER,
};
pub use ring_buffer::RingBuffer;
pub use server::{Running, Server};
pub use stats::{LoopStats, LoopStatsSnapshot};
pub use tls::{
    ClientAuth, ClientTls, KeyPair, Opened, ServerTls, TlsError, TlsInfo, TlsSession, TlsSettings,
    TlsTarget, TlsVersion,
};
pub use transport::{Credentials, Transport};

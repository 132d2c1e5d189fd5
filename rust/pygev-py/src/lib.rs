//! `pygev._pygev`: the compiled half of pygev. Users import `pygev`, never this module.

mod address;
mod bytes_like;
mod callback_times;
mod connection;
mod dial;
mod dispatcher;
mod drain;
mod errors;
mod http_request;
mod logging;
mod mode;
mod package;
mod plugin_fixture;
mod protocols;
mod ring_buffer;
mod server;
mod shared;
mod slow_callbacks;
mod timer;
mod tls;
mod websocket;
mod ws_client;

/// pygev's compiled core: Server, Connection, Timer, protocols.
#[pyo3::pymodule]
mod _pygev {
    #[pymodule_export]
    use crate::connection::Connection;
    #[pymodule_export]
    use crate::errors::{ConnectionClosed, WebSocketHandshakeError};
    #[pymodule_export]
    use crate::http_request::PyHttpRequest;
    #[pymodule_export]
    use crate::package::_register_classes;
    #[pymodule_export]
    use crate::plugin_fixture::_length_prefix_plugin;
    #[pymodule_export]
    use crate::protocols::{Delimited, LengthPrefix, Raw};
    #[pymodule_export]
    use crate::ring_buffer::RingBuffer;
    #[pymodule_export]
    use crate::server::Server;
    #[pymodule_export]
    use crate::timer::Timer;
    #[pymodule_export]
    use crate::tls::{Tls, TlsInfoObject};
    #[pymodule_export]
    use crate::websocket::{WebSocket, WebSocketRequest};

    use pyo3::prelude::*;

    /// The package's version: the workspace's (Cargo.toml), its one source; and the
    /// address a server listens on when none is given.
    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("DEFAULT_ADDRESS", crate::server::DEFAULT_ADDRESS)
    }
}

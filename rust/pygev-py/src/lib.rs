//! `pygev._pygev`: the compiled half of pygev. Users import `pygev`, never this module.

mod connection;
mod dispatcher;
mod errors;
mod logging;
mod protocols;
mod server;
mod shared;
mod timer;

// NOTE: measured on raw echo (50 connections, 4 KiB messages): with glibc malloc, buffers
// allocated on a loop thread and freed on the dispatcher thread made the arenas trim and
// re-fault pages (16% of server CPU in page faults).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// pygev's compiled core: Server, Connection, Timer, protocols.
#[pyo3::pymodule]
mod _pygev {
    #[pymodule_export]
    use crate::connection::Connection;
    #[pymodule_export]
    use crate::errors::ConnectionClosed;
    #[pymodule_export]
    use crate::protocols::Raw;
    #[pymodule_export]
    use crate::server::Server;
    #[pymodule_export]
    use crate::timer::Timer;
}

//! TLS in the loops, with rustls: a connection's record layer ([`TlsSession`]), the
//! configurations that make sessions ([`ServerTls`], [`ClientTls`]) from what the user
//! gives ([`TlsSettings`]), and what a handshake negotiated ([`TlsInfo`]).
//!
//! No byte of a handshake or a record reaches Python: the loop opens what it reads and
//! seals what it writes, and framing sees plaintext only.

mod error;
mod info;
mod session;
mod settings;
mod sni;

pub use error::TlsError;
pub use info::TlsInfo;
pub use session::{Opened, TlsSession};
pub use settings::{ClientAuth, ClientTls, KeyPair, ServerTls, TlsSettings, TlsTarget, TlsVersion};

//! What goes wrong with TLS: a setting or file (when a configuration is built), or the
//! peer or a record (on a connection). The message says which, and names the file.

use std::fmt;

/// A TLS failure, with the message to log or raise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

impl From<rustls::Error> for TlsError {
    fn from(err: rustls::Error) -> Self {
        TlsError(err.to_string())
    }
}

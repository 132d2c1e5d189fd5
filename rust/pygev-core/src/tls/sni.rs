//! Choosing a server certificate by the name the client asks for (SNI), and telling the
//! session which name that was.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

thread_local! {
    /// The SNI of the ClientHello being processed on this thread, while a session watches.
    static SEEN: RefCell<Option<Option<Box<str>>>> = const { RefCell::new(None) };
}

/// Starts recording the SNI the resolver sees on this thread.
pub(super) fn watch() {
    SEEN.with(|seen| *seen.borrow_mut() = Some(None));
}

/// Stops recording; returns the SNI seen meanwhile.
pub(super) fn seen() -> Option<Box<str>> {
    SEEN.with(|seen| seen.borrow_mut().take().flatten())
}

/// The server's certificates: a default one, and others by exact name or by wildcard
/// (`*.example.com` covers `a.example.com`, not `a.b.example.com`).
#[derive(Debug)]
pub(super) struct CertificateBySni {
    pub(super) default: Arc<CertifiedKey>,
    pub(super) by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl CertificateBySni {
    fn lookup(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.by_name.get(&name) {
            return Some(key);
        }
        let (_, parent) = name.split_once('.')?;
        self.by_name.get(&format!("*.{parent}"))
    }
}

impl ResolvesServerCert for CertificateBySni {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = client_hello.server_name();
        SEEN.with(|seen| {
            if let Some(slot) = seen.borrow_mut().as_mut() {
                *slot = name.map(Box::from);
            }
        });
        let chosen = name.and_then(|name| self.lookup(name));
        Some(chosen.unwrap_or(&self.default).clone())
    }
}

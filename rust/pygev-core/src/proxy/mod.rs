//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer that forwards a TCP
//! connection says first whose it is. The header is read in the loop before TLS and any
//! framing ([`header`]), and only from peers the server trusts ([`trust`]); the
//! connection is announced with the client's address in it.

pub mod header;
pub mod trust;

pub use header::{parse, Header, Parsed, ProxyError};
pub use trust::{Network, TrustedProxies};

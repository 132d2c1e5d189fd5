//! A connection's peer address as it is kept: IPv4 (the many) in 8 bytes.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use pygev_core::Address;

/// An IPv4 peer's address, and whether the socket gave it mapped into IPv6.
#[derive(Clone, Copy)]
pub(super) enum PeerV4 {
    Plain(SocketAddrV4),
    Mapped(SocketAddrV4),
}

impl PeerV4 {
    /// `address` when it is IPv4, or IPv4 mapped into IPv6 with no flow or scope.
    pub(super) fn of(address: &Address) -> Option<PeerV4> {
        match address {
            Address::Inet(SocketAddr::V4(v4)) => Some(PeerV4::Plain(*v4)),
            Address::Inet(SocketAddr::V6(v6)) if v6.flowinfo() == 0 && v6.scope_id() == 0 => {
                let ip = v6.ip().to_ipv4_mapped()?;
                Some(PeerV4::Mapped(SocketAddrV4::new(ip, v6.port())))
            }
            _ => None,
        }
    }

    /// The address as the socket gave it.
    pub(super) fn address(self) -> Address {
        Address::Inet(match self {
            PeerV4::Plain(v4) => SocketAddr::V4(v4),
            PeerV4::Mapped(v4) => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
        })
    }
}

//! Which peers may send a PROXY protocol header: networks of trusted proxies. Anyone else
//! could claim any address, so a header is read only from them; a peer on a Unix socket is
//! always trusted (the socket file's permissions say who connects).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::address::Address;

/// An IP network, `address/prefix` (a lone address is a network of one).
///
/// # Examples
///
/// ```
/// use pygev_core::proxy::Network;
///
/// let net: Network = "10.0.0.0/8".parse().unwrap();
/// assert!(net.contains("10.1.2.3".parse().unwrap()));
/// assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()), "IPv4-mapped counts");
/// assert!("10.0.0.1/8".parse::<Network>().is_err(), "host bits set");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether `ip` is in the network. An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`,
    /// as a dual-stack listener sees IPv4 peers) counts as the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let ((net, width), (ip, ip_width)) = (bits(self.address), bits(ip));
        // The same family, and no difference in the first `prefix` bits.
        let host_bits = width - u32::from(self.prefix);
        width == ip_width && (net ^ ip).checked_shr(host_bits).unwrap_or(0) == 0
    }
}

/// An address as a number, and its width in bits (32 or 128).
fn bits(address: IpAddr) -> (u128, u32) {
    match address {
        IpAddr::V4(a) => (u128::from(a.to_bits()), 32),
        IpAddr::V6(a) => (a.to_bits(), 128),
    }
}

/// Whether the bits of `address` past the first `prefix` are all zero.
fn host_bits_zero(address: IpAddr, prefix: u8) -> bool {
    let (bits, width) = bits(address);
    bits.trailing_zeros() >= width - u32::from(prefix)
}

impl FromStr for Network {
    type Err = String;

    /// `"10.0.0.0/8"`, `"192.0.2.7"`, `"fd00::/8"`, `"::1"`; host bits must be zero.
    fn from_str(text: &str) -> Result<Network, String> {
        let bad = || format!("pygev: {text:?} is not an IP network (\"10.0.0.0/8\", \"::1\")");
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = ip.trim().parse().map_err(|_| bad())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
        };
        let network = Network { address, prefix };
        // Host bits set ("10.0.0.1/8") is usually a typo for a narrower network: refused.
        if !host_bits_zero(address, prefix) {
            return Err(format!(
                "pygev: {text:?} has host bits set (a network is given by its first address)"
            ));
        }
        Ok(network)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// The peers a header is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<Network>,
}

impl TrustedProxies {
    /// Trusts the peers in `networks` (and Unix-socket peers).
    pub fn new(networks: Vec<Network>) -> TrustedProxies {
        TrustedProxies { networks }
    }

    /// Trusts loopback peers only (and Unix-socket peers): a proxy on the same host.
    pub fn loopback() -> TrustedProxies {
        let networks = ["127.0.0.0/8", "::1/128"];
        TrustedProxies::new(networks.iter().map(|n| n.parse().expect("valid")).collect())
    }

    /// Whether a header from `peer` is believed.
    ///
    /// # Examples
    ///
    /// ```
    /// use pygev_core::proxy::TrustedProxies;
    /// use pygev_core::Address;
    ///
    /// let trusted = TrustedProxies::new(vec!["192.0.2.0/24".parse().unwrap()]);
    /// assert!(trusted.trusts(&Address::parse("192.0.2.9:4000").unwrap()));
    /// assert!(!trusted.trusts(&Address::parse("127.0.0.1:4000").unwrap()));
    /// assert!(trusted.trusts(&Address::parse("unix:@proxy").unwrap()), "a Unix peer");
    /// ```
    pub fn trusts(&self, peer: &Address) -> bool {
        match peer.as_inet() {
            Some(addr) => self.networks.iter().any(|n| n.contains(addr.ip())),
            None => true, // a Unix socket's peer
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks() {
        let net: Network = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.255.0.1")));
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("::1")));
        let one: Network = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.6")));
        let odd: Network = "172.16.0.0/12".parse().unwrap();
        assert!(odd.contains(ip("172.31.255.255")) && !odd.contains(ip("172.32.0.0")));
        let v6: Network = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fdab::1")) && !v6.contains(ip("fe80::1")));
        let all: Network = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let all6: Network = "::/0".parse().unwrap();
        assert!(all6.contains(ip("2001:db8::1")) && !all6.contains(ip("8.8.8.8")));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "::1/129",
            "nonsense",
            "10.0.0.0/x",
            "",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_and_unix_are_trusted_by_default() {
        let trusted = TrustedProxies::loopback();
        assert!(trusted.trusts(&Address::parse("127.0.0.9:1").unwrap()));
        assert!(trusted.trusts(&Address::parse("[::1]:1").unwrap()));
        assert!(!trusted.trusts(&Address::parse("192.0.2.1:1").unwrap()));
        assert!(trusted.trusts(&Address::parse("unix:@peer").unwrap()));
    }

    proptest! {
        /// A network holds exactly the addresses that share its first `prefix` bits.
        #[test]
        fn contains_matches_the_prefix(a in any::<u32>(), b in any::<u32>(), prefix in 0u8..=32) {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            let net: Network = format!("{}/{prefix}", std::net::Ipv4Addr::from(a & mask)).parse().unwrap();
            prop_assert_eq!(net.contains(IpAddr::V4(b.into())), a & mask == b & mask);
        }
    }
}

//! Addresses: internet (`"host:port"`) or Unix domain (`"unix:/path"`, `"unix:@name"` in
//! Linux's abstract namespace), for binding, connecting, and a connection's two ends.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::net::SocketAddr as StdUnixAddr;
use std::path::Path;

/// Where a socket is, or is to be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// IPv4 or IPv6, with a port.
    Inet(SocketAddr),
    /// A Unix domain socket.
    Unix(UnixAddress),
}

/// The name of a Unix domain socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UnixAddress {
    /// A socket file.
    Path(Box<Path>),
    /// A name in Linux's abstract namespace (no file; gone with the last socket).
    Abstract(Box<[u8]>),
    /// No name: the client end of a connection that did not bind.
    Unnamed,
}

/// The prefix of Unix addresses in text.
const UNIX: &str = "unix:";

impl Address {
    /// Parses `"host:port"` (resolved; `"[::1]:port"` for IPv6, an empty host is every
    /// IPv4 interface), `"unix:/path/to.sock"` or `"unix:@name"`.
    ///
    /// # Examples
    ///
    /// ```
    /// use pygev_core::{Address, UnixAddress};
    ///
    /// let inet = Address::parse("127.0.0.1:80").unwrap();
    /// assert_eq!(inet.to_string(), "127.0.0.1:80");
    /// let named = Address::parse("unix:@pygev").unwrap();
    /// assert_eq!(named, Address::Unix(UnixAddress::Abstract(b"pygev".as_slice().into())));
    /// assert_eq!(named.to_string(), "unix:@pygev");
    /// ```
    pub fn parse(text: &str) -> io::Result<Address> {
        let Some(name) = text.strip_prefix(UNIX) else {
            return parse_inet(text).map(Address::Inet);
        };
        if let Some(abstract_name) = name.strip_prefix('@') {
            if abstract_name.is_empty() {
                return Err(invalid(format!(
                    "pygev: empty abstract socket name in {text:?}"
                )));
            }
            return Ok(Address::Unix(UnixAddress::Abstract(
                abstract_name.as_bytes().into(),
            )));
        }
        if name.is_empty() {
            return Err(invalid(format!("pygev: no socket path in {text:?}")));
        }
        if name.len() >= 108 {
            // sun_path holds 108 bytes with the terminating NUL.
            return Err(invalid(format!(
                "pygev: socket path {name:?} is {} bytes, over the 107 a Unix socket takes",
                name.len()
            )));
        }
        Ok(Address::Unix(UnixAddress::Path(Path::new(name).into())))
    }

    /// The internet address, if it is one.
    pub fn as_inet(&self) -> Option<SocketAddr> {
        match self {
            Address::Inet(addr) => Some(*addr),
            Address::Unix(_) => None,
        }
    }

    /// The address of a Unix socket as the system reports it.
    ///
    /// # Examples
    ///
    /// ```
    /// use pygev_core::Address;
    ///
    /// let (ours, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    /// assert_eq!(Address::from_unix(&ours.local_addr().unwrap()).to_string(), "unix:");
    /// let named = Address::parse("unix:@pygev-doc").unwrap();
    /// assert_eq!(Address::from_unix(&named.to_unix().unwrap().unwrap()), named);
    /// ```
    pub fn from_unix(addr: &StdUnixAddr) -> Address {
        use std::os::linux::net::SocketAddrExt;
        let name = if let Some(path) = addr.as_pathname() {
            UnixAddress::Path(path.into())
        } else if let Some(name) = addr.as_abstract_name() {
            UnixAddress::Abstract(name.into())
        } else {
            UnixAddress::Unnamed
        };
        Address::Unix(name)
    }

    /// The system's form of a Unix address (`None` for an internet one, or unnamed).
    pub fn to_unix(&self) -> io::Result<Option<StdUnixAddr>> {
        use std::os::linux::net::SocketAddrExt;
        match self {
            Address::Unix(UnixAddress::Path(path)) => StdUnixAddr::from_pathname(path).map(Some),
            Address::Unix(UnixAddress::Abstract(name)) => {
                StdUnixAddr::from_abstract_name(name).map(Some)
            }
            _ => Ok(None),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Inet(addr) => write!(f, "{addr}"),
            Address::Unix(UnixAddress::Path(path)) => write!(f, "{UNIX}{}", path.display()),
            Address::Unix(UnixAddress::Abstract(name)) => {
                write!(f, "{UNIX}@{}", String::from_utf8_lossy(name))
            }
            Address::Unix(UnixAddress::Unnamed) => write!(f, "{UNIX}"),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Address {
        Address::Inet(addr)
    }
}

impl Address {
    /// Every address `text` names, in the resolver's order: one for a Unix address or an
    /// IP literal, all of a host name's (`"localhost:80"` may give `[::1]:80` and
    /// `127.0.0.1:80`), for a dialer to try in turn.
    pub fn resolve_all(text: &str) -> io::Result<Vec<Address>> {
        if text.starts_with(UNIX) {
            return Address::parse(text).map(|a| vec![a]);
        }
        Ok(resolve_inet(text)?.into_iter().map(Address::Inet).collect())
    }
}

/// Resolves `"host:port"` to its first address; an empty host (`":1833"`) means every IPv4
/// interface.
pub fn parse_inet(address: &str) -> io::Result<SocketAddr> {
    Ok(resolve_inet(address)?[0])
}

/// Every address `"host:port"` resolves to (at least one), in the resolver's order.
fn resolve_inet(address: &str) -> io::Result<Vec<SocketAddr>> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let (host, port) = address.rsplit_once(':').ok_or_else(|| {
        invalid(format!(
            "pygev: address must be \"host:port\" (\"[::1]:port\" for IPv6) or \
             \"unix:/path\", got {address:?}"
        ))
    })?;
    let port: u16 = port
        .parse()
        .map_err(|_| invalid(format!("pygev: bad port in address {address:?}")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    let mut all: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| invalid(format!("pygev: cannot resolve address {address:?}: {e}")))?
        .collect();
    all.dedup();
    if all.is_empty() {
        return Err(invalid(format!(
            "pygev: address {address:?} resolves to nothing"
        )));
    }
    Ok(all)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

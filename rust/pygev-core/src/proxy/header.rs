//! Parsing a PROXY protocol header, version 1 (a text line) or 2 (binary), from the first
//! bytes of a connection (<https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>).
//!
//! [`parse`] is given what arrived so far: it answers [`Parsed::Incomplete`] while a
//! header may still be coming, and fails as soon as the bytes cannot start one, so a
//! client that speaks first without a header is told at once.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest version 1 header, CRLF included (the specification's limit).
const MAX_V1_LEN: usize = 107;

/// What starts a version 2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// What starts a version 1 header.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// A version 2 header's fixed part: signature, version and command, family and
/// transport, length.
const V2_FIXED: usize = 16;

/// A complete header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its length: the connection's own bytes start after it.
    pub len: usize,
    /// The client's address and the one it connected to; `None` when the header carries
    /// none (version 1 `UNKNOWN`, version 2 `LOCAL`, such as a proxy's own health check,
    /// or an address family other than IPv4 and IPv6): the connection is the proxy's own.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// What the bytes so far come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A header may still be coming: read more.
    Incomplete,
    /// A complete header.
    Done(Header),
}

/// Why the bytes are not a PROXY protocol header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError(String);

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProxyError {}

fn error<T>(message: impl Into<String>) -> Result<T, ProxyError> {
    Err(ProxyError(message.into()))
}

/// Parses the header at the start of `data` (what arrived so far).
///
/// # Examples
///
/// ```
/// use pygev_core::proxy::{parse, Parsed};
///
/// let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
/// let Parsed::Done(header) = parse(line).unwrap() else { panic!() };
/// assert_eq!(&line[header.len..], b"GET /");
/// assert_eq!(header.addresses.unwrap().0.to_string(), "192.0.2.1:56324");
/// assert_eq!(parse(b"PROXY TCP4 192.0").unwrap(), Parsed::Incomplete);
/// assert!(parse(b"GET / HTTP/1.1\r\n").is_err());
/// ```
pub fn parse(data: &[u8]) -> Result<Parsed, ProxyError> {
    match data.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'P') => parse_v1(data),
        Some(b'\r') => parse_v2(data),
        Some(_) => error("no PROXY protocol header (the connection starts with other bytes)"),
    }
}

fn parse_v1(data: &[u8]) -> Result<Parsed, ProxyError> {
    let prefix = data.len().min(V1_PREFIX.len());
    if data[..prefix] != V1_PREFIX[..prefix] {
        return error("no PROXY protocol header (the connection starts with other bytes)");
    }
    let window = &data[..data.len().min(MAX_V1_LEN)];
    let end = match window.iter().position(|&b| b == b'\n') {
        Some(lf) if lf > 0 && window[lf - 1] == b'\r' => lf - 1,
        Some(_) => return error("PROXY v1 header ends with a bare LF, not CRLF"),
        None if window.len() == MAX_V1_LEN => {
            return error("PROXY v1 header without CRLF within 107 bytes")
        }
        None => return Ok(Parsed::Incomplete),
    };
    let line = std::str::from_utf8(&window[V1_PREFIX.len()..end])
        .map_err(|_| ProxyError("PROXY v1 header is not ASCII".into()))?;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or("");
    let addresses = match family {
        "UNKNOWN" => None, // the rest of the line is to be ignored
        "TCP4" | "TCP6" => {
            let fields: Vec<&str> = fields.collect();
            let [source, destination, source_port, destination_port] = fields[..] else {
                return error(format!(
                    "PROXY v1 {family} header needs 4 fields after the family, got {}",
                    fields.len()
                ));
            };
            let v6 = family == "TCP6";
            Some((
                v1_address(source, source_port, v6)?,
                v1_address(destination, destination_port, v6)?,
            ))
        }
        other => return error(format!("PROXY v1 header with unknown family {other:?}")),
    };
    Ok(Parsed::Done(Header {
        len: end + 2,
        addresses,
    }))
}

fn v1_address(ip: &str, port: &str, v6: bool) -> Result<SocketAddr, ProxyError> {
    let ip: IpAddr = if v6 {
        ip.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        ip.parse::<Ipv4Addr>().map(IpAddr::V4)
    }
    .map_err(|_| ProxyError(format!("PROXY v1 header with a bad address {ip:?}")))?;
    let valid = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && (port == "0" || !port.starts_with('0'));
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|_| valid)
        .ok_or_else(|| ProxyError(format!("PROXY v1 header with a bad port {port:?}")))?;
    Ok(SocketAddr::new(ip, port))
}

fn parse_v2(data: &[u8]) -> Result<Parsed, ProxyError> {
    let prefix = data.len().min(V2_SIGNATURE.len());
    if data[..prefix] != V2_SIGNATURE[..prefix] {
        return error("no PROXY protocol header (the connection starts with other bytes)");
    }
    if data.len() < V2_FIXED {
        return Ok(Parsed::Incomplete);
    }
    let (version, command) = (data[12] >> 4, data[12] & 0x0f);
    if version != 2 {
        return error(format!("PROXY v2 header with version {version}"));
    }
    let (family, transport) = (data[13] >> 4, data[13] & 0x0f);
    let len = V2_FIXED + usize::from(u16::from_be_bytes([data[14], data[15]]));
    if data.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &data[V2_FIXED..len];
    let addresses = match command {
        0x0 => None, // LOCAL: the proxy's own connection (a health check); body ignored
        0x1 => {
            if transport > 0x2 {
                return error(format!("PROXY v2 header with transport {transport}"));
            }
            match family {
                0x0 => None, // UNSPEC: addresses unknown
                0x1 => {
                    check_stream(transport)?;
                    let b = fixed::<12>(body, "IPv4")?;
                    let ip = |at: usize| {
                        IpAddr::V4(Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]))
                    };
                    Some((
                        SocketAddr::new(ip(0), u16::from_be_bytes([b[8], b[9]])),
                        SocketAddr::new(ip(4), u16::from_be_bytes([b[10], b[11]])),
                    ))
                }
                0x2 => {
                    check_stream(transport)?;
                    let b = fixed::<36>(body, "IPv6")?;
                    let ip = |at: usize| {
                        let mut octets = [0u8; 16];
                        octets.copy_from_slice(&b[at..at + 16]);
                        IpAddr::V6(Ipv6Addr::from(octets))
                    };
                    Some((
                        SocketAddr::new(ip(0), u16::from_be_bytes([b[32], b[33]])),
                        SocketAddr::new(ip(16), u16::from_be_bytes([b[34], b[35]])),
                    ))
                }
                0x3 => None, // AF_UNIX: no address a peer_addr could show; the proxy's
                other => return error(format!("PROXY v2 header with family {other}")),
            }
        }
        other => return error(format!("PROXY v2 header with command {other}")),
    };
    Ok(Parsed::Done(Header { len, addresses }))
}

/// Only stream connections are forwarded to a TCP server.
fn check_stream(transport: u8) -> Result<(), ProxyError> {
    match transport {
        0x1 => Ok(()),
        other => error(format!(
            "PROXY v2 header for transport {other}, not a stream"
        )),
    }
}

/// The first `N` bytes of a v2 header's address block (TLVs may follow).
fn fixed<'a, const N: usize>(body: &'a [u8], family: &str) -> Result<&'a [u8; N], ProxyError> {
    body.get(..N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            ProxyError(format!(
                "PROXY v2 {family} header too short: {}",
                body.len()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn done(data: &[u8]) -> Header {
        match parse(data) {
            Ok(Parsed::Done(header)) => header,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let h = done(b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\nrest");
        assert_eq!(h.len, 36);
        let (src, dst) = h.addresses.unwrap();
        assert_eq!(src.to_string(), "[2001:db8::1]:65535");
        assert_eq!(dst.to_string(), "[::1]:0");
        let h = done(b"PROXY UNKNOWN whatever follows\r\n");
        assert_eq!(h.addresses, None);
        assert_eq!(done(b"PROXY UNKNOWN\r\n").len, 15);
    }

    #[test]
    fn v1_refusals() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"[..],
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXX ",
            b"\x00",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 100]].concat();
        assert!(parse(&long).is_err(), "no CRLF within 107 bytes");
    }

    #[test]
    fn v2_inet_inet6_local_and_tlvs() {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb];
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0x07]); // a TLV (NOOP)
        let data = [v2(1, 0x11, &body), b"hello".to_vec()].concat();
        let h = done(&data);
        assert_eq!(&data[h.len..], b"hello");
        let (src, dst) = h.addresses.unwrap();
        assert_eq!(src.to_string(), "192.0.2.1:56324");
        assert_eq!(dst.to_string(), "198.51.100.2:443");
        let mut body6 = vec![0u8; 36];
        body6[15] = 1;
        body6[31] = 2;
        body6[32..36].copy_from_slice(&[0, 80, 1, 0]);
        let (src, dst) = done(&v2(1, 0x21, &body6)).addresses.unwrap();
        assert_eq!(src.to_string(), "[::1]:80");
        assert_eq!(dst.to_string(), "[::2]:256");
        assert_eq!(done(&v2(0, 0x00, &[])).addresses, None);
        assert_eq!(
            done(&v2(0, 0x11, &body)).addresses,
            None,
            "LOCAL ignores its body"
        );
        assert_eq!(done(&v2(1, 0x31, &[0u8; 216])).addresses, None);
    }

    #[test]
    fn v2_refusals() {
        let body = [0u8; 12];
        for bad in [
            v2(2, 0x11, &body),      // command 2
            v2(1, 0x12, &body),      // DGRAM
            v2(1, 0x11, &body[..8]), // too short for IPv4
            v2(1, 0x41, &body),      // family 4
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
        let mut version1 = v2(1, 0x11, &body);
        version1[12] = 0x11;
        assert!(parse(&version1).is_err());
    }

    proptest! {
        /// Any header, cut anywhere before its end, is incomplete (never an error or a
        /// wrong header); whole, it parses to its length whatever follows.
        #[test]
        fn prefixes_are_incomplete(
            v1 in any::<bool>(),
            a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), p in any::<u16>(), q in any::<u16>(),
            tlv in proptest::collection::vec(any::<u8>(), 0..64),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (src, dst) = (Ipv4Addr::from(a), Ipv4Addr::from(b));
            let header = if v1 {
                format!("PROXY TCP4 {src} {dst} {p} {q}\r\n").into_bytes()
            } else {
                let mut body = [a, b].concat();
                body.extend_from_slice(&p.to_be_bytes());
                body.extend_from_slice(&q.to_be_bytes());
                body.extend_from_slice(&tlv);
                v2(1, 0x11, &body)
            };
            for cut in 0..header.len() {
                prop_assert_eq!(parse(&header[..cut]).unwrap(), Parsed::Incomplete);
            }
            let data = [header.clone(), tail].concat();
            let h = done(&data);
            prop_assert_eq!(h.len, header.len());
            let expected = (SocketAddr::new(src.into(), p), SocketAddr::new(dst.into(), q));
            prop_assert_eq!(h.addresses, Some(expected));
        }

        /// Arbitrary bytes never panic, and a header found lies within them.
        #[test]
        fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Parsed::Done(h)) = parse(&data) {
                prop_assert!(h.len <= data.len());
            }
        }
    }
}

//! What a TLS handshake negotiated, as the dispatcher hands it to Python (`conn.tls`).

/// The negotiated parameters of a TLS connection, taken when its handshake completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `"TLSv1.2"` or `"TLSv1.3"`.
    pub version: &'static str,
    /// The cipher suite's IANA name, e.g. `"TLS13_AES_128_GCM_SHA256"`.
    pub cipher: String,
    /// The application protocol agreed through ALPN.
    pub alpn: Option<Vec<u8>>,
    /// The server name the client asked for (SNI): the client's on a server, ours on a
    /// client.
    pub server_name: Option<Box<str>>,
    /// The peer's end-entity certificate (DER), when it presented one.
    pub peer_certificate: Option<Vec<u8>>,
}

impl TlsInfo {
    pub(super) fn of(common: &rustls::CommonState, server_name: Option<Box<str>>) -> TlsInfo {
        let version = match common.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        let cipher = common
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or("unknown")
            .to_string();
        TlsInfo {
            version,
            cipher,
            alpn: common.alpn_protocol().map(<[u8]>::to_vec),
            server_name,
            peer_certificate: common
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| cert.as_ref().to_vec()),
        }
    }
}

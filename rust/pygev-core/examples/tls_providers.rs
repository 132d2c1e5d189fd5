//! Which crypto provider does pygev's TLS work faster: rustls on aws-lc-rs (what pygev
//! uses) or on ring. Measures, in memory, what a server spends per full handshake (TLS 1.3,
//! X25519, an ECDSA P-256 certificate) and per echoed record of 64 B and 16 KiB (opening
//! the client's, sealing the reply), for each provider, several rounds interleaved.
//!
//!     cargo run --release --example tls_providers

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};
use rustls::{ServerConnection, SupportedCipherSuite};

const HANDSHAKES: usize = 1000;
const ROUNDS: usize = 5;

struct Side {
    name: &'static str,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

fn provider(name: &str) -> CryptoProvider {
    // Both on X25519 and AES-256-GCM (what an OpenSSL client gets from pygev): aws-lc-rs
    // would otherwise prefer its post-quantum hybrid, which ring does not have.
    let (mut provider, kx, suite): (CryptoProvider, _, SupportedCipherSuite) = match name {
        "aws-lc-rs" => (
            rustls::crypto::aws_lc_rs::default_provider(),
            rustls::crypto::aws_lc_rs::kx_group::X25519,
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ),
        // (Deprecated by rustls for lacking post-quantum key exchange: not used here.)
        #[allow(deprecated)]
        _ => (
            rustls::crypto::ring::default_provider(),
            rustls::crypto::ring::kx_group::X25519,
            rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ),
    };
    provider.kx_groups = vec![kx];
    provider.cipher_suites = vec![suite];
    provider
}

fn side(name: &'static str, cert: &CertificateDer<'static>, key: &[u8]) -> Side {
    let provider = Arc::new(provider(name));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Side {
        name,
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

/// Moves what `from` has to send into `to` and lets `to` process it; returns the time `to`
/// took (its share) and the time `from` took to produce it.
fn pump(from: &mut Connection, to: &mut Connection) -> (Duration, Duration) {
    let mut wire = Vec::new();
    let t = Instant::now();
    while from.wants_write() {
        from.write_tls(&mut wire).unwrap();
    }
    let produced = t.elapsed();
    let t = Instant::now();
    let mut input = &wire[..];
    while !input.is_empty() {
        to.read_tls(&mut input).unwrap();
        to.process_new_packets().unwrap();
    }
    (t.elapsed(), produced)
}

/// A full handshake; returns the server's time in it, and the connected pair.
fn handshake(side: &Side) -> (Duration, Connection, Connection) {
    let name = "localhost".try_into().unwrap();
    let mut client = Connection::from(ClientConnection::new(side.client.clone(), name).unwrap());
    let t = Instant::now();
    let mut server = Connection::from(ServerConnection::new(side.server.clone()).unwrap());
    let mut spent = t.elapsed();
    while client.is_handshaking() || server.is_handshaking() || client.wants_write() {
        let (server_in, _) = pump(&mut client, &mut server);
        let (_, server_out) = pump(&mut server, &mut client);
        spent += server_in + server_out;
    }
    (spent, client, server)
}

/// The server's time per echoed message of `size` bytes: opening it, sealing the reply.
fn records(
    client: &mut Connection,
    server: &mut Connection,
    size: usize,
    count: usize,
) -> Duration {
    let payload = vec![7u8; size];
    let mut got = vec![0u8; size];
    let mut spent = Duration::ZERO;
    for _ in 0..count {
        client.writer().write_all(&payload).unwrap();
        let (server_in, _) = pump(client, server);
        let t = Instant::now();
        server.reader().read_exact(&mut got).unwrap();
        server.writer().write_all(&got).unwrap();
        spent += server_in + t.elapsed();
        let (_, server_out) = pump(server, client);
        spent += server_out;
        client.reader().read_exact(&mut got).unwrap();
    }
    spent / count as u32
}

fn main() {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = made.cert.der().clone();
    let key = made.key_pair.serialize_der();
    let sides = [side("aws-lc-rs", &cert, &key), side("ring", &cert, &key)];
    let mut results: Vec<[Vec<f64>; 3]> = vec![Default::default(), Default::default()];
    for _ in 0..ROUNDS {
        for (i, side) in sides.iter().enumerate() {
            let mut total = Duration::ZERO;
            for _ in 0..HANDSHAKES {
                total += handshake(side).0;
            }
            results[i][0].push(total.as_secs_f64() * 1e6 / HANDSHAKES as f64);
            let (_, mut client, mut server) = handshake(side);
            let small = records(&mut client, &mut server, 64, 50_000);
            let large = records(&mut client, &mut server, 16 * 1024, 5_000);
            results[i][1].push(small.as_secs_f64() * 1e9);
            results[i][2].push(large.as_secs_f64() * 1e9);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!("server cost, median of {ROUNDS} rounds (TLS 1.3, X25519, ECDSA P-256, AES-256-GCM)");
    println!(
        "{:<10} {:>16} {:>18} {:>20}",
        "provider", "handshake (us)", "64 B echo (ns)", "16 KiB echo (ns)"
    );
    for (side, r) in sides.iter().zip(&results) {
        println!(
            "{:<10} {:>16.1} {:>18.0} {:>20.0}",
            side.name,
            median(&r[0]),
            median(&r[1]),
            median(&r[2])
        );
    }
}

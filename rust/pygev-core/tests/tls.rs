//! TLS sessions over buffers, without sockets: a client and a server session talk through
//! byte vectors, split at random places.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use pygev_core::{ClientTls, KeyPair, ServerTls, TlsSession, TlsSettings, TlsVersion};
use rustls::pki_types::pem::PemObject;

struct Files {
    dir: PathBuf,
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A self-signed certificate for `names`, written as cert.pem and key.pem in a fresh folder.
fn files(names: &[&str]) -> Files {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "pygev-tls-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let made = rcgen::generate_simple_self_signed(names).unwrap();
    std::fs::write(dir.join("cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), made.key_pair.serialize_pem()).unwrap();
    Files { dir }
}

impl Files {
    fn pair(&self) -> KeyPair {
        KeyPair {
            certfile: self.dir.join("cert.pem"),
            keyfile: self.dir.join("key.pem"),
        }
    }
    fn server(&self) -> TlsSettings {
        TlsSettings {
            identity: Some(self.pair()),
            ..TlsSettings::default()
        }
    }
    fn client(&self) -> TlsSettings {
        TlsSettings {
            ca_file: Some(self.dir.join("cert.pem")),
            ..TlsSettings::default()
        }
    }
}

/// Moves what `from` wrote to `to`, in pieces of at most `step` bytes; returns the
/// plaintext `to` got.
fn deliver(wire: &mut Vec<u8>, to: &mut TlsSession, reply: &mut Vec<u8>, step: usize) -> Vec<u8> {
    let mut plaintext = Vec::new();
    let bytes = std::mem::take(wire);
    for chunk in bytes.chunks(step.max(1)) {
        let mut chunk = chunk.to_vec();
        to.open(&mut chunk, &mut plaintext, reply).unwrap();
    }
    plaintext
}

/// Runs the handshake to its end; returns (client, server).
fn connected(files: &Files, step: usize) -> (TlsSession, TlsSession) {
    let server_tls = ServerTls::new(&files.server()).unwrap();
    let client_tls = ClientTls::new(&files.client()).unwrap();
    let mut server = server_tls.session().unwrap();
    let mut client = client_tls.session("localhost").unwrap();
    let mut to_server = Vec::new();
    let mut to_client = Vec::new();
    client.start(&mut to_server).unwrap();
    for _ in 0..10 {
        if !client.is_handshaking() && !server.is_handshaking() && to_server.is_empty() {
            break;
        }
        deliver(&mut to_server, &mut server, &mut to_client, step);
        deliver(&mut to_client, &mut client, &mut to_server, step);
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    (client, server)
}

#[test]
fn a_handshake_then_data_both_ways_and_close_notify() {
    let files = files(&["localhost"]);
    let (mut client, mut server) = connected(&files, 4096);
    let info = server.info();
    assert_eq!(info.version, "TLSv1.3");
    assert_eq!(info.server_name.as_deref(), Some("localhost"));
    assert!(info.cipher.starts_with("TLS13_"), "{}", info.cipher);
    assert_eq!(info.peer_certificate, None);
    assert!(client.info().peer_certificate.is_some());

    let mut wire = Vec::new();
    client.seal(b"hello", &mut wire).unwrap();
    let mut reply = Vec::new();
    assert_eq!(deliver(&mut wire, &mut server, &mut reply, 7), b"hello");
    assert_eq!(server.held(), 0, "an idle session holds no record bytes");
    server.seal(&vec![7u8; 100_000], &mut wire).unwrap();
    assert_eq!(
        deliver(&mut wire, &mut client, &mut reply, 1000),
        vec![7u8; 100_000]
    );

    client.close(&mut wire);
    let mut plaintext = Vec::new();
    let opened = server.open(&mut wire, &mut plaintext, &mut reply).unwrap();
    assert!(opened.peer_closed && server.peer_closed());
    assert!(plaintext.is_empty());
}

/// A client that speaks TLS 1.2 only (not something `TlsSettings` makes: it caps nothing).
fn tls12_client(files: &Files) -> TlsSession {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(files.dir.join("cert.pem")).unwrap();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    TlsSession::client(Arc::new(config), name).unwrap()
}

#[test]
fn tls12_is_served_unless_min_version_is_tls13() {
    let files = files(&["localhost"]);
    let mut server = ServerTls::new(&files.server()).unwrap().session().unwrap();
    let mut client = tls12_client(&files);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    client.start(&mut a).unwrap();
    for _ in 0..5 {
        deliver(&mut a, &mut server, &mut b, 100_000);
        deliver(&mut b, &mut client, &mut a, 100_000);
    }
    assert!(!server.is_handshaking());
    assert_eq!(server.info().version, "TLSv1.2");
    assert!(
        server.info().cipher.starts_with("TLS_ECDHE_"),
        "{}",
        server.info().cipher
    );

    let only_13 = ServerTls::new(&TlsSettings {
        min_version: TlsVersion::Tls13,
        ..files.server()
    })
    .unwrap();
    let mut server = only_13.session().unwrap();
    let mut client = tls12_client(&files);
    let (mut hello, mut alert, mut plaintext) = (Vec::new(), Vec::new(), Vec::new());
    client.start(&mut hello).unwrap();
    let err = server
        .open(&mut hello, &mut plaintext, &mut alert)
        .unwrap_err();
    assert!(err.0.contains("Tls12NotOfferedOrEnabled"), "{err}");
    assert_eq!(alert.first(), Some(&21), "refused with an alert");
}

#[test]
fn garbage_is_an_error_with_an_alert() {
    let files = files(&["localhost"]);
    let mut server = ServerTls::new(&files.server()).unwrap().session().unwrap();
    let mut plaintext = Vec::new();
    let mut wire = Vec::new();
    let mut request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let err = server
        .open(&mut request, &mut plaintext, &mut wire)
        .unwrap_err();
    assert!(!err.0.is_empty());
    assert!(plaintext.is_empty());
    assert_eq!(
        wire.first(),
        Some(&21),
        "an alert record goes back: {wire:?}"
    );
}

#[test]
fn a_wrong_name_is_refused_by_the_client() {
    let files = files(&["localhost"]);
    let mut server = ServerTls::new(&files.server()).unwrap().session().unwrap();
    let mut client = ClientTls::new(&files.client())
        .unwrap()
        .session("example.com")
        .unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    client.start(&mut a).unwrap();
    deliver(&mut a, &mut server, &mut b, 100_000);
    let mut plaintext = Vec::new();
    let err = client.open(&mut b, &mut plaintext, &mut a).unwrap_err();
    assert!(err.0.contains("certificate"), "{err}");
}

/// The error `ServerTls::new` gives for this certificate and key.
fn server_error(certfile: PathBuf, keyfile: PathBuf) -> String {
    let settings = TlsSettings {
        identity: Some(KeyPair { certfile, keyfile }),
        ..TlsSettings::default()
    };
    ServerTls::new(&settings).unwrap_err().0
}

#[test]
fn configuration_errors_name_the_file() {
    let files = files(&["localhost"]);
    let other = self::files(&["other"]);
    let err = server_error(files.dir.join("nope.pem"), files.dir.join("key.pem"));
    assert!(
        err.contains("nope.pem") && err.contains("certfile"),
        "{err}"
    );
    let err = server_error(files.dir.join("cert.pem"), other.dir.join("key.pem"));
    assert!(err.contains("does not belong"), "{err}");
    let err = server_error(files.dir.join("key.pem"), files.dir.join("cert.pem"));
    assert!(err.contains("key.pem"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the socket splits, every byte sealed is opened once and in order.
    #[test]
    fn records_survive_any_split(
        sends in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40_000), 1..6),
        step in 1usize..20_000,
    ) {
        let files = files(&["localhost"]);
        let (mut client, mut server) = connected(&files, step);
        let mut wire = Vec::new();
        for data in &sends {
            client.seal(data, &mut wire).unwrap();
        }
        let mut reply = Vec::new();
        let got = deliver(&mut wire, &mut server, &mut reply, step);
        prop_assert_eq!(got, sends.concat());
        prop_assert_eq!(server.held(), 0);
    }

    /// Reads of every size in turn (a record's front held, then completed by a read that
    /// goes on past it): every byte sealed is opened once and in order, and what is held
    /// never exceeds one record.
    #[test]
    fn records_survive_reads_of_varying_sizes(
        sends in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40_000), 1..6),
        steps in proptest::collection::vec(1usize..70_000, 1..40),
    ) {
        let files = files(&["localhost"]);
        let (mut client, mut server) = connected(&files, 1000);
        let mut wire = Vec::new();
        for data in &sends {
            client.seal(data, &mut wire).unwrap();
        }
        let (mut got, mut reply) = (Vec::new(), Vec::new());
        let mut at = 0;
        for step in steps.iter().cycle() {
            if at == wire.len() {
                break;
            }
            let end = (at + step).min(wire.len());
            let mut chunk = wire[at..end].to_vec();
            server.open(&mut chunk, &mut got, &mut reply).unwrap();
            prop_assert!(server.held() <= 5 + 16 * 1024 + 256);
            at = end;
        }
        prop_assert_eq!(got, sends.concat());
        prop_assert_eq!(server.held(), 0);
    }
}

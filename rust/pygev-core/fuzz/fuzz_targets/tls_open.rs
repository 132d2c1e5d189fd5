//! TLS sessions fed arbitrary input, never panicking:
//! - a fresh server or client session fed arbitrary bytes at arbitrary splits (the
//!   handshake's parsing), and once it has failed it is not fed again (as the loop closes
//!   the connection);
//! - a connected server session fed a real client's records at arbitrary splits, one byte
//!   flipped or not: without the flip it opens every byte once and in order and ends
//!   holding nothing; with it, it fails or opens a prefix of the data, never more.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pygev_core::{ClientTls, KeyPair, ServerTls, TlsSession, TlsSettings};

struct Configs {
    server: ServerTls,
    client: ClientTls,
}

fn configs() -> &'static Configs {
    static CONFIGS: OnceLock<Configs> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pygev-fuzz-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.join("cert.pem"), made.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), made.key_pair.serialize_pem()).unwrap();
        let pair = KeyPair {
            certfile: dir.join("cert.pem"),
            keyfile: dir.join("key.pem"),
        };
        let server = ServerTls::new(&TlsSettings {
            identity: Some(pair),
            ..TlsSettings::default()
        })
        .unwrap();
        let client = ClientTls::new(&TlsSettings {
            ca_file: Some(dir.join("cert.pem")),
            ..TlsSettings::default()
        })
        .unwrap();
        Configs { server, client }
    })
}

/// A client and a server session that completed their handshake.
fn connected() -> (TlsSession, TlsSession) {
    let configs = configs();
    let mut server = configs.server.session().unwrap();
    let mut client = configs.client.session("localhost").unwrap();
    let (mut to_server, mut to_client, mut sink) = (Vec::new(), Vec::new(), Vec::new());
    client.start(&mut to_server).unwrap();
    while client.is_handshaking() || server.is_handshaking() || !to_server.is_empty() {
        server
            .open(&mut to_server, &mut sink, &mut to_client)
            .unwrap();
        to_server.clear();
        client
            .open(&mut to_client, &mut sink, &mut to_server)
            .unwrap();
        to_client.clear();
    }
    (client, server)
}

fn garbage(config: u8, data: &[u8]) {
    let configs = configs();
    let mut session = if config & 2 == 0 {
        configs.server.session().unwrap()
    } else {
        let mut session = configs.client.session("localhost").unwrap();
        let mut hello = Vec::new();
        session.start(&mut hello).unwrap();
        session
    };
    let step = 1 + (config >> 2) as usize;
    let (mut plaintext, mut wire) = (Vec::new(), Vec::new());
    let mut given = 0;
    for chunk in data.chunks(step) {
        let mut chunk = chunk.to_vec();
        given += chunk.len();
        if session.open(&mut chunk, &mut plaintext, &mut wire).is_err() {
            return;
        }
        assert!(session.held() <= given);
    }
}

fn records(config: u8, data: &[u8]) {
    let (mut client, mut server) = connected();
    let mut wire = Vec::new();
    // The data in messages of the sizes the input's own bytes say.
    let mut rest = data;
    while !rest.is_empty() {
        let size = (1 + rest[0] as usize * 97).min(rest.len());
        client.seal(&rest[..size], &mut wire).unwrap();
        rest = &rest[size..];
    }
    let flip = (config & 4 != 0 && !wire.is_empty()).then(|| data.len() * 31 % wire.len());
    if let Some(at) = flip {
        wire[at] ^= 0x40;
    }
    let (mut got, mut answer) = (Vec::new(), Vec::new());
    let mut at = 0;
    let mut step = 1 + (config as usize >> 3) * 131;
    let mut failed = false;
    while at < wire.len() {
        let end = (at + step).min(wire.len());
        let mut chunk = wire[at..end].to_vec();
        if server.open(&mut chunk, &mut got, &mut answer).is_err() {
            failed = true;
            break;
        }
        assert!(
            server.held() <= 5 + 16 * 1024 + 256,
            "at most one record is held"
        );
        at = end;
        step = step * 7 % 20_011 + 1;
    }
    match flip {
        None => {
            assert_eq!(got, data);
            assert_eq!(server.held(), 0);
        }
        Some(_) => assert!(failed || data.starts_with(&got) && got.len() <= data.len()),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&config, data)) = input.split_first() else {
        return;
    };
    if config & 1 == 0 {
        garbage(config, data);
    } else {
        records(config, data);
    }
});

//! A TLS session (server or client side) fed arbitrary bytes split at arbitrary points:
//! never panics, and once it has failed it is not fed again (as the loop closes the
//! connection); what it holds of an unfinished record never exceeds what it was given.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pygev_core::{ClientTls, KeyPair, ServerTls, TlsSettings};

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

fuzz_target!(|input: &[u8]| {
    let Some((&config, data)) = input.split_first() else {
        return;
    };
    let configs = configs();
    let mut session = if config & 1 == 0 {
        configs.server.session().unwrap()
    } else {
        let mut session = configs.client.session("localhost").unwrap();
        let mut hello = Vec::new();
        session.start(&mut hello).unwrap();
        session
    };
    let step = 1 + (config >> 1) as usize;
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
});

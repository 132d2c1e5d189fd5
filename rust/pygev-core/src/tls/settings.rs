//! TLS settings as a user gives them (files, names, policies), turned into rustls's
//! configurations: a server's, which can be swapped for new connections, and a client's.
//! Every error names the file and the reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use super::error::TlsError;
use super::session::TlsSession;
use super::sni::CertificateBySni;

/// Whether a server asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// It does not ask.
    #[default]
    None,
    /// It asks; a client without one is served, one with a bad one is refused.
    Optional,
    /// A client must present a certificate signed by `ca_file`'s authorities.
    Required,
}

/// The oldest TLS version a side accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// A certificate chain and its private key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// PEM: the end-entity certificate first, then its intermediates.
    pub certfile: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1; PKCS#8 may be encrypted).
    pub keyfile: PathBuf,
}

/// Everything TLS takes from the user, for a server or a client.
///
/// # Examples
///
/// ```
/// use pygev_core::{TlsSettings, ClientTls};
///
/// // A client that trusts the system's roots (or, failing those, Mozilla's).
/// let client = ClientTls::new(&TlsSettings::default()).unwrap();
/// assert!(client.session("example.com").is_ok());
/// ```
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// The certificate and key presented (a server's; a client's for client auth).
    pub identity: Option<KeyPair>,
    /// The password of an encrypted private key.
    pub password: Option<Vec<u8>>,
    /// PEM bundle of the authorities trusted to sign the peer's certificate: clients'
    /// for a server, servers' for a client (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Whether a server asks clients for a certificate.
    pub client_auth: ClientAuth,
    /// Application protocols offered (client) or accepted (server), in preference order.
    pub alpn: Vec<Vec<u8>>,
    /// The oldest version accepted.
    pub min_version: TlsVersion,
    /// A server's other certificates, by the name a client asks for (exact, or
    /// `*.example.com`); `identity` serves every other name.
    pub sni: Vec<(String, KeyPair)>,
}

fn error(message: impl Into<String>) -> TlsError {
    TlsError(message.into())
}

/// The crypto provider every configuration uses.
// NOTE: aws-lc-rs builds here with the C compiler alone (no cmake).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    static BOTH: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static ONLY_13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::Tls12 => &BOTH,
        TlsVersion::Tls13 => &ONLY_13,
    }
}

/// A server's TLS configuration; [`ServerTls::reload`] swaps it for connections accepted
/// afterwards (those made before keep theirs).
#[derive(Debug)]
pub struct ServerTls {
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Builds the configuration: loads and checks every file.
    pub fn new(settings: &TlsSettings) -> Result<Self, TlsError> {
        Ok(ServerTls {
            current: RwLock::new(server_config(settings)?),
        })
    }

    /// Loads `settings` and uses them for connections accepted from now on. On an error
    /// the configuration in use stays.
    pub fn reload(&self, settings: &TlsSettings) -> Result<(), TlsError> {
        let config = server_config(settings)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// A session for a connection just accepted.
    pub fn session(&self) -> Result<TlsSession, TlsError> {
        let config = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        TlsSession::server(config)
    }
}

/// A client's TLS configuration.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl ClientTls {
    /// Builds the configuration: the trusted roots (`ca_file`, else the system's), the
    /// client certificate if any, ALPN, versions.
    pub fn new(settings: &TlsSettings) -> Result<Self, TlsError> {
        let roots = match &settings.ca_file {
            Some(path) => roots_from(path)?,
            None => system_roots(),
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions(settings.min_version))
            .map_err(|e| error(format!("pygev: TLS versions: {e}")))?
            .with_root_certificates(roots);
        let mut config = match &settings.identity {
            Some(pair) => {
                let (chain, key) = load_pair(pair, settings.password.as_deref())?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| error(format!("pygev: {}: {e}", pair.certfile.display())))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = settings.alpn.clone();
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// A session for a connection to `server_name` (a DNS name or an IP address), which
    /// the server's certificate must name.
    pub fn session(&self, server_name: &str) -> Result<TlsSession, TlsError> {
        self.target(server_name)?.session()
    }

    /// What a connection to `server_name` needs to start its TLS (the name checked now,
    /// the session made by the loop that dials).
    pub fn target(&self, server_name: &str) -> Result<TlsTarget, TlsError> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| TlsError(format!("pygev: bad TLS server name {server_name:?}: {e}")))?;
        Ok(TlsTarget {
            config: self.config.clone(),
            name,
        })
    }
}

/// A client configuration and the server name to verify: a dialed connection's TLS.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsTarget {
    /// A client session; its ClientHello goes out with [`TlsSession::start`].
    pub fn session(&self) -> Result<TlsSession, TlsError> {
        TlsSession::client(self.config.clone(), self.name.clone())
    }
}

fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let Some(identity) = &settings.identity else {
        return Err(error("pygev: a TLS server needs a certfile and a keyfile"));
    };
    let password = settings.password.as_deref();
    let default = certified_key(identity, password, &provider)?;
    let mut by_name = HashMap::new();
    for (name, pair) in &settings.sni {
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() {
            return Err(error("pygev: an SNI name is empty"));
        }
        by_name.insert(name, certified_key(pair, password, &provider)?);
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(settings.min_version))
        .map_err(|e| error(format!("pygev: TLS versions: {e}")))?;
    let builder = match settings.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        mode => {
            let Some(ca_file) = &settings.ca_file else {
                return Err(error(
                    "pygev: client_auth needs ca_file: the authorities that sign client \
                     certificates",
                ));
            };
            let roots = Arc::new(roots_from(ca_file)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = if mode == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| error(format!("pygev: ca_file {}: {e}", ca_file.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(CertificateBySni { default, by_name }));
    config.alpn_protocols = settings.alpn.clone();
    Ok(Arc::new(config))
}

/// Loads a certificate chain and its key, and checks that they belong together.
fn certified_key(
    pair: &KeyPair,
    password: Option<&[u8]>,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let (chain, key) = load_pair(pair, password)?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| error(format!("pygev: keyfile {}: {e}", pair.keyfile.display())))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        error(format!(
            "pygev: the private key in {} does not belong to the certificate in {}",
            pair.keyfile.display(),
            pair.certfile.display()
        ))
    })?;
    Ok(Arc::new(certified))
}

fn load_pair(
    pair: &KeyPair,
    password: Option<&[u8]>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = certificates(&pair.certfile, "certfile")?;
    let key = private_key(&pair.keyfile, password)?;
    Ok((chain, key))
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path)
        .map_err(|e| error(format!("pygev: cannot read {what} {}: {e}", path.display())))
}

/// Every certificate in a PEM file (at least one).
fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path, what)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("pygev: {what} {}: {e}", path.display())))?;
    if chain.is_empty() {
        return Err(error(format!(
            "pygev: {what} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(chain)
}

/// The private key of a PEM file; an encrypted PKCS#8 key is decrypted with `password`.
fn private_key(path: &Path, password: Option<&[u8]>) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path, "keyfile")?;
    let name = path.display();
    if pem
        .windows(b"ENCRYPTED PRIVATE KEY".len())
        .any(|w| w == b"ENCRYPTED PRIVATE KEY")
    {
        let Some(password) = password else {
            return Err(error(format!(
                "pygev: keyfile {name} is encrypted: give its password"
            )));
        };
        let text = std::str::from_utf8(&pem)
            .map_err(|_| error(format!("pygev: keyfile {name} is not PEM text")))?;
        let (_, document) = pkcs8::SecretDocument::from_pem(text)
            .map_err(|e| error(format!("pygev: keyfile {name}: {e}")))?;
        let encrypted = pkcs8::EncryptedPrivateKeyInfo::try_from(document.as_bytes())
            .map_err(|e| error(format!("pygev: keyfile {name}: {e}")))?;
        let key = encrypted.decrypt(password).map_err(|_| {
            error(format!(
                "pygev: keyfile {name}: cannot decrypt the key (wrong password?)"
            ))
        })?;
        return Ok(PrivatePkcs8KeyDer::from(key.as_bytes().to_vec()).into());
    }
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            error(format!("pygev: keyfile {name} holds no PEM private key"))
        }
        e => error(format!("pygev: keyfile {name}: {e}")),
    })
}

/// The authorities of a PEM bundle.
fn roots_from(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, "ca_file")? {
        roots
            .add(cert)
            .map_err(|e| error(format!("pygev: ca_file {}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// The system's trusted roots; Mozilla's (compiled in) where the system has none.
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

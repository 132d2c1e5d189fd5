//! `pygev.TLS`, the TLS settings a server (`tls=`) or an outgoing connection uses, and
//! `pygev.TLSInfo`, what a connection's handshake negotiated (`conn.tls`). The record layer
//! itself runs in the loops (`pygev_core::tls`); nothing of it reaches Python.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use pygev_core::{
    ClientAuth, ClientTls, KeyPair, ServerTls, TlsInfo, TlsSettings, TlsTarget, TlsVersion,
};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::Error;

/// How long a handshake may take by default.
const HANDSHAKE_TIMEOUT: f64 = 10.0;
/// Handshakes a loop runs at once by default.
const MAX_HANDSHAKES: usize = 1024;

/// TLS settings: a certificate and key for a server, trusted roots and an optional client
/// certificate for a client. Files are read when a server or a connection uses them.
#[pyclass(module = "pygev._pygev", name = "TLS", frozen)]
pub struct Tls {
    settings: TlsSettings,
    pub(crate) handshake_timeout: Duration,
    /// Handshakes a loop runs at once with accepted connections.
    pub(crate) max_handshakes: usize,
    /// The client side, built on first use (loading the system's roots takes a while).
    client: OnceLock<ClientTls>,
}

impl Tls {
    /// The server side: every file loaded and checked now.
    pub(crate) fn server(&self) -> Result<ServerTls, Error> {
        ServerTls::new(&self.settings).map_err(|e| Error::Value(e.0))
    }

    /// Makes `server` use these settings for the connections it accepts from now on.
    pub(crate) fn reload(&self, server: &ServerTls) -> Result<(), Error> {
        server.reload(&self.settings).map_err(|e| Error::Value(e.0))
    }

    /// The client side (built once).
    pub(crate) fn client(&self) -> Result<&ClientTls, Error> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let client = ClientTls::new(&self.settings).map_err(|e| Error::Value(e.0))?;
        Ok(self.client.get_or_init(|| client))
    }

    /// The settings of `tls=True`: the system's roots, nothing else.
    pub(crate) fn default_client() -> &'static Tls {
        static DEFAULT: OnceLock<Tls> = OnceLock::new();
        DEFAULT.get_or_init(|| Tls {
            settings: TlsSettings::default(),
            handshake_timeout: Duration::from_secs_f64(HANDSHAKE_TIMEOUT),
            max_handshakes: MAX_HANDSHAKES,
            client: OnceLock::new(),
        })
    }
}

/// What `connect(tls=..., server_hostname=...)` asks for on a connection to `address`:
/// `None`/`False` plain, `True` the system's roots, or a `pygev.TLS`; the name the server
/// must have defaults to the address's host.
pub(crate) fn dial_target(
    py: Python<'_>,
    tls: Option<&Bound<'_, PyAny>>,
    server_hostname: Option<&str>,
    address: &str,
) -> Result<Option<Box<TlsTarget>>, Error> {
    let plain = || match server_hostname {
        Some(_) => Err(Error::Value(
            "pygev: server_hostname= is for TLS connections (give tls= too)".into(),
        )),
        None => Ok(None),
    };
    let tls = match tls {
        None => return plain(),
        Some(tls) => match tls.extract::<bool>() {
            Ok(false) => return plain(),
            Ok(true) => Tls::default_client(),
            Err(_) => match tls.cast::<Tls>() {
                Ok(tls) => tls.get(),
                Err(_) => {
                    return Err(Error::Type(
                        "pygev: tls must be a pygev.TLS, True, False or None".into(),
                    ))
                }
            },
        },
    };
    let name = match server_hostname {
        Some(name) => name.to_string(),
        None => host_of(address).ok_or_else(|| {
            Error::Value(format!(
                "pygev: a TLS connection to {address} needs server_hostname="
            ))
        })?,
    };
    // (The first use loads the system's roots: not with the GIL held.)
    let client = py.detach(|| tls.client())?;
    let target = client.target(&name).map_err(|e| Error::Value(e.0))?;
    Ok(Some(Box::new(target)))
}

/// The host of `host:port` or `[v6]:port`; none for a Unix socket.
fn host_of(address: &str) -> Option<String> {
    if address.starts_with("unix:") {
        return None;
    }
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map(|(host, _)| host.to_string());
    }
    let (host, _) = address.rsplit_once(':')?;
    (!host.is_empty()).then(|| host.to_string())
}

/// A key file given without its certificate, or the reverse, is a mistake.
fn pair(certfile: Option<PathBuf>, keyfile: Option<PathBuf>) -> Result<Option<KeyPair>, Error> {
    match (certfile, keyfile) {
        (Some(certfile), Some(keyfile)) => Ok(Some(KeyPair { certfile, keyfile })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(Error::Value(
            "pygev: TLS certfile given without a keyfile".into(),
        )),
        (None, Some(_)) => Err(Error::Value(
            "pygev: TLS keyfile given without a certfile".into(),
        )),
    }
}

#[pymethods]
impl Tls {
    #[new]
    #[pyo3(signature = (
        certfile = None,
        keyfile = None,
        *,
        password = None,
        ca_file = None,
        client_auth = "none",
        alpn = Vec::new(),
        min_version = "1.2",
        sni = None,
        handshake_timeout = HANDSHAKE_TIMEOUT,
        max_handshakes = MAX_HANDSHAKES as i64,
    ), text_signature = "(certfile=None, keyfile=None, *, password=None, ca_file=None, \
        client_auth='none', alpn=(), min_version='1.2', sni=None, handshake_timeout=10.0, \
        max_handshakes=1024)")]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        certfile: Option<PathBuf>,
        keyfile: Option<PathBuf>,
        password: Option<&Bound<'_, PyAny>>,
        ca_file: Option<PathBuf>,
        client_auth: &str,
        alpn: Vec<String>,
        min_version: &str,
        sni: Option<HashMap<String, (PathBuf, PathBuf)>>,
        handshake_timeout: f64,
        max_handshakes: i64,
    ) -> PyResult<Self> {
        let client_auth = match client_auth {
            "none" => ClientAuth::None,
            "optional" => ClientAuth::Optional,
            "required" => ClientAuth::Required,
            other => {
                return Err(Error::Value(format!(
                    "pygev: client_auth must be \"none\", \"optional\" or \"required\", got \
                     {other:?}"
                ))
                .into())
            }
        };
        let min_version = match min_version {
            "1.2" => TlsVersion::Tls12,
            "1.3" => TlsVersion::Tls13,
            other => {
                return Err(Error::Value(format!(
                    "pygev: min_version must be \"1.2\" or \"1.3\", got {other:?}"
                ))
                .into())
            }
        };
        let password = match password {
            None => None,
            Some(p) => Some(match p.extract::<String>() {
                Ok(text) => text.into_bytes(),
                Err(_) => p
                    .extract::<Vec<u8>>()
                    .map_err(|_| Error::Type("pygev: TLS password must be str or bytes".into()))?,
            }),
        };
        if alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
            return Err(Error::Value(
                "pygev: each ALPN protocol name must be 1 to 255 bytes".into(),
            )
            .into());
        }
        let mut sni: Vec<(String, KeyPair)> = sni
            .unwrap_or_default()
            .into_iter()
            .map(|(name, (certfile, keyfile))| (name, KeyPair { certfile, keyfile }))
            .collect();
        sni.sort_by(|a, b| a.0.cmp(&b.0));
        let handshake_timeout =
            crate::server::seconds("handshake_timeout", handshake_timeout, false)?;
        let max_handshakes = usize::try_from(max_handshakes)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                Error::Value(format!(
                    "pygev: max_handshakes must be positive, got {max_handshakes}"
                ))
            })?;
        Ok(Tls {
            settings: TlsSettings {
                identity: pair(certfile, keyfile)?,
                password,
                ca_file,
                client_auth,
                alpn: alpn.into_iter().map(String::into_bytes).collect(),
                min_version,
                sni,
            },
            handshake_timeout,
            max_handshakes,
            client: OnceLock::new(),
        })
    }

    fn __repr__(&self) -> String {
        let s = &self.settings;
        let certfile = s.identity.as_ref().map_or("None".into(), |p| {
            format!("{:?}", p.certfile.display().to_string())
        });
        format!(
            "<pygev.TLS certfile={certfile} client_auth={:?} min_version={:?} sni={}>",
            s.client_auth,
            s.min_version,
            s.sni.len()
        )
    }
}

/// What a connection's TLS handshake negotiated.
#[pyclass(module = "pygev._pygev", name = "TLSInfo", frozen)]
pub struct TlsInfoObject {
    info: TlsInfo,
}

impl TlsInfoObject {
    pub(crate) fn new(info: TlsInfo) -> Self {
        TlsInfoObject { info }
    }
}

#[pymethods]
impl TlsInfoObject {
    /// `"TLSv1.3"` or `"TLSv1.2"`.
    #[getter]
    fn version(&self) -> &'static str {
        self.info.version
    }

    /// The cipher suite's IANA name, e.g. `"TLS13_AES_256_GCM_SHA384"`.
    #[getter]
    fn cipher(&self) -> &str {
        &self.info.cipher
    }

    /// The ALPN protocol agreed on, or `None`.
    #[getter]
    fn alpn(&self) -> Option<String> {
        (self.info.alpn.as_deref()).map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// The server name (SNI) the client asked for, or `None`.
    #[getter]
    fn server_name(&self) -> Option<&str> {
        self.info.server_name.as_deref()
    }

    /// The peer's certificate (DER), or `None` when it presented none.
    #[getter]
    fn peer_certificate<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        (self.info.peer_certificate.as_deref()).map(|der| PyBytes::new(py, der))
    }

    fn __repr__(&self) -> String {
        let text = |value: Option<&str>| value.map_or("None".into(), |v| format!("{v:?}"));
        format!(
            "<pygev.TLSInfo {} {} alpn={} server_name={}>",
            self.info.version,
            self.info.cipher,
            text(self.alpn().as_deref()),
            text(self.info.server_name.as_deref())
        )
    }
}

//! `server.connect("ws://...")`: the URL, the upgrade request it makes (with the
//! `pygev.WebSocket` settings' side of permessage-deflate, subprotocols, origin and extra
//! headers), and the client framing a dial runs with, shared by dials that ask the same.

use std::sync::{Arc, Mutex};

use pygev_core::websocket::client::{ClientSettings, WebSocketClient};
use pygev_core::websocket::client_handshake::{DeflateOffer, Offer};
use pygev_core::websocket::Settings;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyMapping};

use crate::errors::Error;

/// Where a `ws://` or `wss://` URL leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    /// What to dial: `host:port` (`[v6]:port`).
    pub(crate) address: String,
    /// The `Host` header: the host, with the port when not the scheme's own.
    pub(crate) host_header: String,
    /// The request target: path and query (`/` at least).
    pub(crate) target: String,
    /// `wss://`.
    pub(crate) secure: bool,
    /// `ws://` or `wss://`, the host and the path, for messages (the query may hold a
    /// secret).
    shown: String,
}

impl Url {
    /// Parses `text` if it is a WebSocket URL (`None`: another kind of address).
    pub(crate) fn parse(text: &str) -> Result<Option<Url>, Error> {
        let has_scheme = |scheme: &str| {
            (text.get(..scheme.len())).is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        };
        let (secure, rest) = if has_scheme("wss://") {
            (true, &text[6..])
        } else if has_scheme("ws://") {
            (false, &text[5..])
        } else {
            return Ok(None);
        };
        let bad = |why: &str| Error::Value(format!("pygev: bad WebSocket URL {text:?}: {why}"));
        if text.contains('#') {
            return Err(bad("a WebSocket URL has no fragment (RFC 6455 3)"));
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.contains('@') {
            return Err(bad(
                "credentials in the URL are not supported (give headers=)",
            ));
        }
        let (host, port) = match authority.rfind(':') {
            // (An empty port is the scheme's own: RFC 3986 3.2.3.)
            Some(colon) if authority[colon + 1..].is_empty() => (&authority[..colon], None),
            Some(colon) if !authority[colon..].contains(']') => {
                let port = authority[colon + 1..]
                    .parse::<u16>()
                    .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
                (&authority[..colon], Some(port))
            }
            _ => (authority, None),
        };
        let bracketed = host.starts_with('[') && host.ends_with(']');
        if host.is_empty() || (host.contains(':') && !bracketed) {
            return Err(bad("no host, or an IPv6 address without brackets"));
        }
        if host.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("the host has spaces or control characters"));
        }
        let default_port = if secure { 443 } else { 80 };
        let host_header = match port {
            Some(port) if port != default_port => format!("{host}:{port}"),
            _ => host.to_string(),
        };
        let target = match target {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        let path = target.split('?').next().unwrap_or("/");
        let shown = format!("{}://{authority}{path}", if secure { "wss" } else { "ws" });
        Ok(Some(Url {
            address: format!("{host}:{}", port.unwrap_or(default_port)),
            host_header,
            target,
            secure,
            shown,
        }))
    }

    /// The URL as messages show it: without its query.
    pub(crate) fn shown(&self) -> String {
        self.shown.clone()
    }

    /// The `tls=` argument for this URL: `wss://` speaks TLS (`True`, the system's roots,
    /// unless a `pygev.TLS` is given), `ws://` does not.
    pub(crate) fn tls<'py>(
        &self,
        py: Python<'py>,
        tls: Option<&Bound<'py, PyAny>>,
    ) -> Result<Option<Bound<'py, PyAny>>, Error> {
        let off = tls.is_none_or(|t| t.extract::<bool>().ok() == Some(false));
        match (self.secure, off) {
            (true, true) if tls.is_some() => Err(Error::Value(
                "pygev: a wss:// URL speaks TLS: tls=False contradicts it (use ws://)".into(),
            )),
            (true, true) => Ok(Some(PyBool::new(py, true).to_owned().into_any())),
            (true, false) => Ok(tls.cloned()),
            (false, true) => Ok(None),
            (false, false) => Err(Error::Value(
                "pygev: a ws:// URL is plain; use wss:// for TLS".into(),
            )),
        }
    }
}

/// `headers=`: a mapping or a sequence of `(name, value)` pairs.
pub(crate) fn header_pairs(headers: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<(String, String)>> {
    let Some(headers) = headers else {
        return Ok(Vec::new());
    };
    match headers.cast::<PyMapping>() {
        Ok(mapping) => mapping.items()?.extract(),
        Err(_) => headers.extract().map_err(|_| {
            Error::Type(
                "pygev: headers must be a mapping or a sequence of (name, value) strings".into(),
            )
            .into()
        }),
    }
}

/// What a dial asks for besides the URL.
pub(crate) struct Asks {
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) subprotocols: Vec<String>,
    pub(crate) origin: Option<String>,
}

/// A client's settings from `ws` (a `pygev.WebSocket`'s): we offer permessage-deflate when
/// it has compression, asking the server for its `server_*` parameters and promising its
/// `client_no_context_takeover`; we compress with at most `client_max_window_bits`.
pub(crate) fn client_settings(ws: &Settings, url: &Url, asks: Asks) -> ClientSettings {
    let deflate = &ws.deflate;
    let offer = Offer {
        host: url.host_header.clone(),
        target: url.target.clone(),
        key: String::new(),
        origin: asks.origin,
        protocols: asks.subprotocols,
        headers: asks.headers,
        deflate: deflate.enabled.then_some(DeflateOffer {
            server_no_context_takeover: deflate.server_no_context_takeover,
            client_no_context_takeover: deflate.client_no_context_takeover,
            server_max_window_bits: deflate.server_max_window_bits,
            client_max_window_bits: true,
        }),
    };
    ClientSettings {
        offer,
        max_message_size: ws.max_message_size,
        handshake_timeout: ws.handshake_timeout,
        threshold: deflate.threshold,
        own_window_bits: deflate.client_max_window_bits,
        ping_interval: ws.ping_interval,
        ping_timeout: ws.ping_timeout,
    }
}

/// How many distinct client framings a server keeps for reuse.
const KEPT: usize = 16;

/// The client framings of recent dials: a loop holds one entry per framing in use (at most
/// 65,535), so dials that ask the same share one.
#[derive(Default)]
pub(crate) struct Framings(Mutex<Vec<Arc<WebSocketClient>>>);

impl Framings {
    /// The framing for `settings`: a recent one asking the same, or a new one (`Err`:
    /// the request cannot be made, e.g. a header with a line break).
    pub(crate) fn get(&self, settings: ClientSettings) -> Result<Arc<WebSocketClient>, Error> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = kept.iter().position(|f| *f.settings() == settings) {
            let framing = kept.remove(at);
            kept.push(framing.clone()); // most recent last
            return Ok(framing);
        }
        let framing = Arc::new(WebSocketClient::new(settings).map_err(Error::Value)?);
        if kept.len() == KEPT {
            kept.remove(0);
        }
        kept.push(framing.clone());
        Ok(framing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap().unwrap()
    }

    #[test]
    fn urls_give_address_host_and_target() {
        let u = url("ws://example.com/chat?room=1");
        assert_eq!(u.shown(), "ws://example.com/chat");
        assert_eq!(u.address, "example.com:80");
        assert_eq!(u.host_header, "example.com");
        assert_eq!(u.target, "/chat?room=1");
        assert!(!u.secure);
        let u = url("WSS://127.0.0.1:8443");
        assert_eq!(
            (u.address.as_str(), u.host_header.as_str()),
            ("127.0.0.1:8443", "127.0.0.1:8443")
        );
        assert_eq!(u.target, "/");
        assert!(u.secure);
        let u = url("ws://[::1]:9000?x=1");
        assert_eq!(
            (u.address.as_str(), u.target.as_str()),
            ("[::1]:9000", "/?x=1")
        );
        assert_eq!(url("wss://h:443/").host_header, "h");
        let u = url("ws://h:/x");
        assert_eq!((u.address.as_str(), u.host_header.as_str()), ("h:80", "h"));
        assert!(Url::parse("127.0.0.1:80").unwrap().is_none());
        assert!(Url::parse("unix:/tmp/x").unwrap().is_none());
    }

    #[test]
    fn bad_urls_are_refused() {
        for bad in [
            "ws://",
            "ws:///path",
            "ws://host:99999/",
            "ws://host:port/",
            "ws://user:pw@host/",
            "ws://host/#frag",
            "ws://::1/",
            "ws://ho st/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}

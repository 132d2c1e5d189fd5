//! `Server.connect()`: what a dial needs (its mode: the server's, one of its own, or a
//! WebSocket client's for a `ws://` URL; its TLS; its addresses, resolved without the
//! GIL), then the request handed to the loops (`dial.rs`).

use std::sync::atomic::Ordering;

use pygev_core::Address;
use pyo3::prelude::*;

use super::{seconds, Server, STOPPED};
use crate::address::address_text;
use crate::dial::{self, Dial};
use crate::dispatcher::Callbacks;
use crate::errors::Error;
use crate::mode;
use crate::ws_client;

impl Server {
    /// `connect()`'s work, its arguments checked one by one; returns the future.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dial<'py>(
        &self,
        py: Python<'py>,
        address: &Bound<'py, PyAny>,
        handler: Option<&Bound<'py, PyAny>>,
        protocol: Option<&Bound<'py, PyAny>>,
        timeout: f64,
        tls: Option<&Bound<'py, PyAny>>,
        server_hostname: Option<String>,
        asks: ws_client::Asks,
    ) -> PyResult<Py<PyAny>> {
        let text = address_text(address)?;
        let handler_or_servers = || -> PyResult<Bound<'py, PyAny>> {
            match handler {
                Some(handler) => Ok(handler.clone()),
                None => Ok(self.handler(py)?.into_bound(py)),
            }
        };
        let url = match address.is_instance_of::<pyo3::types::PyString>() {
            true => ws_client::Url::parse(&text)?,
            false => None,
        };
        let (own_mode, text, tls) = match &url {
            Some(url) => {
                let settings = mode::client_settings(&handler_or_servers()?, protocol)?;
                let settings = ws_client::client_settings(&settings, url, asks);
                let framing = self.ws_framings.get(settings)?;
                let mode = mode::shared(mode::WebSocketMode::client(framing, url.shown()));
                (Some(mode), url.address.clone(), url.tls(py, tls)?)
            }
            None => {
                if !(asks.headers.is_empty() && asks.subprotocols.is_empty())
                    || asks.origin.is_some()
                {
                    return Err(Error::Value(
                        "pygev: headers=, subprotocols= and origin= are for ws:// and wss:// \
                         URLs"
                            .into(),
                    )
                    .into());
                }
                let own_mode = match protocol {
                    Some(protocol) => Some(mode::choose(&handler_or_servers()?, Some(protocol))?),
                    None => None,
                };
                own_mode
                    .as_ref()
                    .unwrap_or(&self.shared.mode)
                    .check_dial()?;
                (own_mode, text, tls.cloned())
            }
        };
        if self.state.load(Ordering::Acquire) >= STOPPED {
            return Err(Error::State("pygev: server was stopped".into()).into());
        }
        let timeout = seconds("timeout", timeout, false)?;
        let tls = crate::tls::dial_target(py, tls.as_ref(), server_hostname.as_deref(), &text)?;
        // A host name is resolved here: without the GIL, so callbacks go on meanwhile.
        let mut addresses = py
            .detach(|| Address::resolve_all(&text))
            .map_err(Error::Io)?;
        let address = addresses.remove(0);
        addresses.reverse(); // tried in the resolver's order, last popped first
        let callbacks = handler
            .map(|h| Callbacks::of(h, false).map(Box::new))
            .transpose()?;
        let future = py
            .import("concurrent.futures")?
            .getattr("Future")?
            .call0()?
            .unbind();
        let id = self.shared.ids.fetch_add(1, Ordering::Relaxed);
        let dial = Dial {
            future: future.clone_ref(py),
            callbacks,
            mode: own_mode,
            address,
            fallbacks: addresses,
            timeout,
            tls,
        };
        if let Err(dial) = self.shared.dials.add(id, dial, self.shared.loops.get()) {
            dial::abort(py, &dial, "pygev: the server stopped");
        }
        Ok(future)
    }
}

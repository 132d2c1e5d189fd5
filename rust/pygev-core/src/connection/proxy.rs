//! The PROXY protocol header on an accepted connection: read before TLS and any framing,
//! from trusted peers only. Until it is complete the connection is unannounced (the
//! dispatcher hears of it with the client's address from the header, or after the TLS
//! handshake that follows); only the header's deadline runs.

use super::set::Connections;
use super::{flag, CloseCause};
use crate::address::Address;
use crate::close_reason::CloseReason;
use crate::proxy::{self, Parsed};

impl Connections {
    /// Whether an accepted connection from `peer` may go on: true when no header is
    /// expected or the peer is a trusted proxy. Otherwise it is said why, once a second at
    /// most with how many were refused (a scanner must not flood the log), and the caller
    /// drops the connection.
    pub(super) fn proxy_admits(&mut self, peer: &Address) -> bool {
        let Some(trusted) = &self.config.proxy_protocol else {
            return true;
        };
        if trusted.trusts(peer) {
            return true;
        }
        crate::stats::LoopStats::add(&self.handle.stats.refused_untrusted, 1);
        if let Some(count) = self.untrusted.note(self.instant) {
            log::warn!(
                "pygev: refused {count} connection(s) not from a trusted proxy (proxy_protocol \
                 is on; trusted_proxies), the last from {peer}"
            );
        }
        false
    }

    /// A newly accepted connection waits for its header; `false` when it is not expected.
    pub(super) fn await_proxy_header(&mut self, token: usize) -> bool {
        if self.config.proxy_protocol.is_none() {
            return false;
        }
        let deadline = self.now.after(self.config.proxy_header_timeout);
        let conn = &mut self.conns[token];
        conn.flags |= flag::PROXY_HEADER;
        conn.close_deadline = conn.close_deadline.min(deadline);
        true
    }

    /// Takes the `n` bytes just read into the scratch buffer as (part of) the header. Once
    /// it is complete, the connection goes on with what followed it: announced with the
    /// client's address (or first through its TLS handshake), then framed.
    pub(super) fn read_proxy_header(&mut self, token: usize, n: usize) -> Result<(), CloseCause> {
        debug_assert_eq!(
            self.scratch.len(),
            n,
            "the scratch buffer holds just this read"
        );
        let conn = &mut self.conns[token];
        // NOTE: a header that came whole in one read (the usual) is parsed where it was
        // read; only one split across reads is gathered in the connection's input.
        let held = !conn.input.is_empty();
        let parsed = match held {
            true => proxy::parse(conn.input.write_contiguous(&self.scratch)),
            false => proxy::parse(&self.scratch),
        };
        let header = match parsed {
            Ok(Parsed::Incomplete) => {
                if !held {
                    conn.input.write(&self.scratch);
                }
                self.scratch.clear();
                return Ok(());
            }
            Ok(Parsed::Done(header)) => header,
            Err(err) => {
                self.scratch.clear();
                conn.note_close(CloseReason::Protocol);
                let peer = conn.peer_text();
                return Err(CloseCause::Abort(format!(
                    "pygev: connection {} from {peer}: {err}",
                    conn.id
                )));
            }
        };
        conn.flags &= !flag::PROXY_HEADER;
        // What came after the header is read again, as if it had just arrived.
        if held {
            self.scratch.clear();
            conn.input.retrieve(header.len);
            self.scratch
                .extend_from_slice(conn.input.write_contiguous(&[]));
            conn.input.retrieve(self.scratch.len());
        } else {
            self.scratch.drain(..header.len);
        }
        let rest = self.scratch.len();
        let client = header.addresses.map(|(client, _)| Address::Inet(client));
        if conn.tls.is_some() {
            // Its handshake has its own time from here (until now, the sooner of the
            // header's and the handshake's deadlines held), and it is announced when the
            // handshake completes, with the client's address.
            conn.close_deadline = self.now.after(self.config.tls_handshake_timeout);
            if let Some(client) = client {
                self.proxied.insert(token, client);
            }
            return if rest > 0 {
                self.read_tls(token, rest)
            } else {
                Ok(())
            };
        }
        let Ok((peer, local)) = conn.transport.addresses() else {
            self.scratch.clear();
            return Err(CloseCause::Done); // reset meanwhile: never announced
        };
        conn.close_deadline = crate::clock::Millis::NEVER;
        self.announce(token, client.unwrap_or(peer), local, false, false);
        let open = self.conns.get(token).is_some_and(|c| !c.has(flag::CLOSING));
        if rest == 0 || !open {
            self.scratch.clear();
            return Ok(());
        }
        self.feed(token, rest)
    }

    /// The connection's header did not come in time (its own timeout, or its TLS
    /// handshake's when that is shorter).
    pub(super) fn proxy_header_timed_out(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        conn.note_close(CloseReason::Timeout);
        let header_timeout = self.config.proxy_header_timeout;
        let within = match conn.tls {
            Some(_) => header_timeout.min(self.config.tls_handshake_timeout),
            None => header_timeout,
        };
        let reason = format!(
            "pygev: connection {} from {} sent no complete PROXY protocol header within \
             {within:?}",
            conn.id,
            conn.peer_text(),
        );
        self.close_now(token, CloseCause::Abort(reason));
    }

    /// The peer's EOF came before its header was complete: said (at info level) when part
    /// of one had come; a connection that sent nothing ends quietly.
    pub(super) fn proxy_eof(&self, token: usize) {
        let conn = &self.conns[token];
        if conn.has(flag::PROXY_HEADER) && !conn.input.is_empty() {
            log::info!(
                "pygev: connection {} from {} closed before its PROXY protocol header was \
                 complete ({} bytes of it came)",
                conn.id,
                conn.peer_text(),
                conn.input.len()
            );
        }
    }

    /// The address a connection announced after its header is to have: the client's
    /// from the header, else the socket's own peer.
    pub(super) fn take_proxied(&mut self, token: usize) -> Option<Address> {
        if self.proxied.is_empty() {
            return None;
        }
        self.proxied.remove(&token)
    }
}

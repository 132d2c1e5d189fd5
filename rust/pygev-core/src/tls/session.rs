//! One connection's TLS: rustls's unbuffered connection, driven over buffers the loop owns.
//!
//! rustls's buffered connection keeps a 4 KiB record buffer for as long as the connection
//! lives; the unbuffered one reads records from the caller's buffer and writes them into
//! the caller's. A session therefore holds bytes only while a record is half read, and an
//! idle TLS connection holds no record buffer at all.

use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedConnectionCommon, UnbufferedStatus,
};
use rustls::{ClientConfig, ServerConfig};

use super::error::TlsError;
use super::info::TlsInfo;
use super::sni;

/// The record layer of one connection: server or client side.
pub struct TlsSession {
    side: Side,
    /// The front of a record that has not fully arrived (empty: no allocation).
    partial: Vec<u8>,
    /// The peer sent close_notify: what it sent is complete.
    peer_closed: bool,
    /// We sent close_notify: nothing more may be sealed.
    closed: bool,
    /// The name the client asked for (SNI), seen by the certificate resolver.
    sni: Option<Box<str>>,
}

enum Side {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = match self.side {
            Side::Server(_) => "server",
            Side::Client(_) => "client",
        };
        f.debug_struct("TlsSession")
            .field("side", &side)
            .field("handshaking", &self.is_handshaking())
            .field("held", &self.partial.len())
            .finish()
    }
}

/// What [`TlsSession::open`] brought.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The handshake completed in this call.
    pub handshake_done: bool,
    /// The peer's close_notify came in this call: it will send nothing more.
    pub peer_closed: bool,
}

/// Bytes a record adds to its payload (header, TLS 1.2's explicit nonce, tag, TLS 1.3's
/// content type), for sizing a seal's output; rustls says so if it needs more.
const RECORD_OVERHEAD: usize = 5 + 8 + 16 + 1;
/// rustls's largest record payload.
const MAX_FRAGMENT: usize = 16 * 1024;

impl TlsSession {
    /// The server side of a connection just accepted.
    pub fn server(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        Ok(Self::new(Side::Server(UnbufferedServerConnection::new(
            config,
        )?)))
    }

    /// The client side of a connection to `name` (sent as SNI and verified against the
    /// server's certificate). Call [`TlsSession::start`] for the ClientHello.
    pub fn client(config: Arc<ClientConfig>, name: ServerName<'static>) -> Result<Self, TlsError> {
        let sni = match &name {
            ServerName::DnsName(dns) => Some(dns.as_ref().into()),
            _ => None, // an IP address is not sent as SNI
        };
        let mut session = Self::new(Side::Client(UnbufferedClientConnection::new(config, name)?));
        session.sni = sni;
        Ok(session)
    }

    fn new(side: Side) -> Self {
        TlsSession {
            side,
            partial: Vec::new(),
            peer_closed: false,
            closed: false,
            sni: None,
        }
    }

    /// Whether the handshake is still going on.
    pub fn is_handshaking(&self) -> bool {
        match &self.side {
            Side::Server(conn) => conn.is_handshaking(),
            Side::Client(conn) => conn.is_handshaking(),
        }
    }

    /// Whether the peer sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Bytes of a record not fully arrived that the session holds.
    pub fn held(&self) -> usize {
        self.partial.len()
    }

    /// Appends what the handshake sends first (a client's ClientHello) to `wire`.
    pub fn start(&mut self, wire: &mut Vec<u8>) -> Result<(), TlsError> {
        let mut plaintext = Vec::new();
        self.open(&mut [], &mut plaintext, wire).map(|_| ())
    }

    /// Takes `ciphertext` as it came from the socket: appends the application data of
    /// every complete record to `plaintext` and what TLS must send back (handshake
    /// messages, alerts) to `wire`; keeps the front of an incomplete record. On an error,
    /// `wire` ends with the alert that tells the peer why, if there is one.
    pub fn open(
        &mut self,
        ciphertext: &mut [u8],
        plaintext: &mut Vec<u8>,
        wire: &mut Vec<u8>,
    ) -> Result<Opened, TlsError> {
        let was_handshaking = self.is_handshaking();
        let had_peer_closed = self.peer_closed;
        let mut held = std::mem::take(&mut self.partial);
        // NOTE: rustls remembers where in the buffer a handshake message it is joining
        // lies: each call gets what the last one left (the same bytes, at the same place)
        // with the new bytes after it.
        let result = if held.is_empty() {
            self.drive_in_place(ciphertext, &mut held, plaintext, wire)
        } else if was_handshaking {
            held.extend_from_slice(ciphertext);
            let (used, result) = self.drive(&mut held, plaintext, wire);
            held.drain(..used);
            result
        } else {
            // NOTE: past the handshake records stand alone: only the bytes that complete
            // the record held are copied, the rest is opened where it lies (appending a
            // whole 64 KiB read to a held record copied every byte read once more).
            let take = record_end(&held, ciphertext).min(ciphertext.len());
            held.extend_from_slice(&ciphertext[..take]);
            let (used, result) = self.drive(&mut held, plaintext, wire);
            held.drain(..used);
            let rest = &mut ciphertext[take..];
            match result {
                Ok(()) if held.is_empty() => self.drive_in_place(rest, &mut held, plaintext, wire),
                Ok(()) => {
                    held.extend_from_slice(rest); // (not a whole record yet)
                    Ok(())
                }
                Err(err) => Err(err),
            }
        };
        if let Err(err) = result {
            // rustls queued the alert that says why: it comes out first. (Only that: the
            // records after the error must not be processed again.)
            match &mut self.side {
                Side::Server(conn) => take_alert(conn, &mut held, wire),
                Side::Client(conn) => take_alert(conn, &mut held, wire),
            }
            self.partial = Vec::new();
            return Err(err);
        }
        if held.is_empty() {
            held = Vec::new(); // an idle session holds no buffer
        }
        self.partial = held;
        Ok(Opened {
            handshake_done: was_handshaking && !self.is_handshaking(),
            peer_closed: self.peer_closed && !had_peer_closed,
        })
    }

    /// Drives the records of `incoming` (nothing held before it); keeps what is left of an
    /// unfinished record in `held`.
    fn drive_in_place(
        &mut self,
        incoming: &mut [u8],
        held: &mut Vec<u8>,
        plaintext: &mut Vec<u8>,
        wire: &mut Vec<u8>,
    ) -> Result<(), TlsError> {
        let (used, result) = self.drive(incoming, plaintext, wire);
        held.extend_from_slice(&incoming[used..]);
        result
    }

    /// Encrypts `data` into records appended to `wire`.
    pub fn seal(&mut self, data: &[u8], wire: &mut Vec<u8>) -> Result<(), TlsError> {
        if self.closed {
            return Err(TlsError("pygev: TLS session already closed".into()));
        }
        self.write_traffic(Traffic::Data(data), wire)
    }

    /// Appends a close_notify alert to `wire`: we send nothing more. Does nothing before the
    /// handshake completed, or once sent.
    pub fn close(&mut self, wire: &mut Vec<u8>) {
        if self.closed || self.is_handshaking() {
            return;
        }
        let _ = self.write_traffic(Traffic::CloseNotify, wire);
        self.closed = true;
    }

    /// What was negotiated: version, cipher suite, ALPN, SNI, the peer's certificate.
    pub fn info(&self) -> TlsInfo {
        let common: &rustls::CommonState = match &self.side {
            Side::Server(conn) => conn,
            Side::Client(conn) => conn,
        };
        TlsInfo::of(common, self.sni.clone())
    }

    fn write_traffic(&mut self, what: Traffic<'_>, wire: &mut Vec<u8>) -> Result<(), TlsError> {
        let used = match &mut self.side {
            Side::Server(conn) => write_records(conn, &mut self.partial, what, wire)?,
            Side::Client(conn) => write_records(conn, &mut self.partial, what, wire)?,
        };
        self.partial.drain(..used);
        Ok(())
    }

    /// Drives the records of `incoming` until rustls needs more input or has nothing more
    /// to do; returns how many bytes of `incoming` it used (also on an error).
    fn drive(
        &mut self,
        incoming: &mut [u8],
        plaintext: &mut Vec<u8>,
        wire: &mut Vec<u8>,
    ) -> (usize, Result<(), TlsError>) {
        let mut peer_closed = false;
        let result = match &mut self.side {
            Side::Server(conn) => {
                // NOTE: rustls's unbuffered server connection does not tell the SNI it
                // saw; the certificate resolver (ours) records it for this thread while
                // the ClientHello is processed here.
                let watching = conn.is_handshaking() && self.sni.is_none();
                if watching {
                    sni::watch();
                }
                let result = drive_records(conn, incoming, plaintext, wire, &mut peer_closed);
                if watching {
                    self.sni = sni::seen();
                }
                result
            }
            Side::Client(conn) => drive_records(conn, incoming, plaintext, wire, &mut peer_closed),
        };
        self.peer_closed |= peer_closed;
        result
    }
}

/// How many bytes of `next` complete the record whose front is `held` (all of `next` when
/// even its header is not complete).
fn record_end(held: &[u8], next: &[u8]) -> usize {
    const HEADER: usize = 5;
    let mut header = [0u8; HEADER];
    let have = held.len().min(HEADER);
    header[..have].copy_from_slice(&held[..have]);
    let missing = HEADER - have;
    if next.len() < missing {
        return next.len();
    }
    header[have..].copy_from_slice(&next[..missing]);
    let total = HEADER + usize::from(u16::from_be_bytes([header[3], header[4]]));
    total.saturating_sub(held.len())
}

/// What to write in the traffic state.
#[derive(Clone, Copy)]
enum Traffic<'a> {
    Data(&'a [u8]),
    CloseNotify,
}

/// Reaches the traffic state (encoding what must go out before it into `wire`), then
/// writes `what` into `wire`; returns the bytes of `partial` rustls used meanwhile.
fn write_records<C: Records>(
    conn: &mut C,
    partial: &mut [u8],
    what: Traffic<'_>,
    wire: &mut Vec<u8>,
) -> Result<usize, TlsError> {
    let mut used = 0;
    loop {
        let UnbufferedStatus { discard, state } = conn.records(&mut partial[used..]);
        match state.map_err(TlsError::from)? {
            ConnectionState::WriteTraffic(mut traffic) => {
                let len = match what {
                    Traffic::Data(data) => data.len(),
                    Traffic::CloseNotify => 2, // the alert's level and description
                };
                let mut size = len + (len / MAX_FRAGMENT + 1) * RECORD_OVERHEAD;
                loop {
                    let start = wire.len();
                    wire.resize(start + size, 0);
                    let out = &mut wire[start..];
                    let result = match what {
                        Traffic::Data(data) => traffic.encrypt(data, out),
                        Traffic::CloseNotify => traffic.queue_close_notify(out),
                    };
                    match result {
                        Ok(n) => {
                            wire.truncate(start + n);
                            return Ok(used + discard);
                        }
                        Err(EncryptError::InsufficientSize(need)) if need.required_size > size => {
                            wire.truncate(start);
                            size = need.required_size;
                        }
                        Err(err) => {
                            wire.truncate(start);
                            return Err(TlsError(format!("pygev: TLS could not encrypt: {err}")));
                        }
                    }
                }
            }
            ConnectionState::EncodeTlsData(mut encode) => encode_into(&mut encode, wire),
            ConnectionState::TransmitTlsData(transmit) => transmit.done(),
            ConnectionState::PeerClosed => {}
            other => {
                return Err(TlsError(format!(
                    "pygev: TLS cannot send now (state {other:?})"
                )))
            }
        }
        used += discard;
    }
}

/// Encodes the alert rustls queued after an error, if it did.
fn take_alert<C: Records>(conn: &mut C, incoming: &mut [u8], wire: &mut Vec<u8>) {
    if let Ok(ConnectionState::EncodeTlsData(mut encode)) = conn.records(incoming).state {
        encode_into(&mut encode, wire);
    }
}

fn encode_into<D>(encode: &mut rustls::unbuffered::EncodeTlsData<'_, D>, wire: &mut Vec<u8>) {
    let mut size = 4096;
    loop {
        let start = wire.len();
        wire.resize(start + size, 0);
        match encode.encode(&mut wire[start..]) {
            Ok(n) => return wire.truncate(start + n),
            Err(EncodeError::InsufficientSize(need)) if need.required_size > size => {
                wire.truncate(start);
                size = need.required_size;
            }
            Err(_) => return wire.truncate(start),
        }
    }
}

/// A side of a connection: both process records into the same states.
trait Records {
    type Data;
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

/// Implements [`Records`] for a side: its `process_tls_records` is an inherent method of
/// each `UnbufferedConnectionCommon<Data>`, so generic code cannot name it directly.
macro_rules! records {
    ($conn:ty, $data:ty) => {
        impl Records for $conn {
            type Data = $data;
            fn records<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, Self::Data> {
                let common: &mut UnbufferedConnectionCommon<Self::Data> = self;
                common.process_tls_records(incoming)
            }
        }
    };
}

records!(
    UnbufferedServerConnection,
    rustls::server::ServerConnectionData
);
records!(
    UnbufferedClientConnection,
    rustls::client::ClientConnectionData
);

fn drive_records<C: Records>(
    conn: &mut C,
    incoming: &mut [u8],
    plaintext: &mut Vec<u8>,
    wire: &mut Vec<u8>,
    peer_closed: &mut bool,
) -> (usize, Result<(), TlsError>) {
    let mut used = 0;
    loop {
        let UnbufferedStatus { discard, state } = conn.records(&mut incoming[used..]);
        let state = match state {
            Ok(state) => state,
            Err(err) => return (used + discard, Err(err.into())),
        };
        let stop = match state {
            ConnectionState::ReadTraffic(mut traffic) => {
                let mut failed = None;
                while let Some(record) = traffic.next_record() {
                    match record {
                        Ok(record) => plaintext.extend_from_slice(record.payload),
                        Err(err) => {
                            failed = Some(err);
                            break;
                        }
                    }
                }
                if let Some(err) = failed {
                    return (used + discard, Err(err.into()));
                }
                false
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(&mut encode, wire);
                false
            }
            // What was encoded is in `wire`, which the caller writes before anything else.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                false
            }
            ConnectionState::PeerClosed => {
                *peer_closed = true;
                false
            }
            // More input needed (handshake), nothing more to do (traffic), or both
            // sides closed. (Early data is never enabled.)
            _ => true,
        };
        used += discard;
        if stop {
            return (used, Ok(()));
        }
    }
}

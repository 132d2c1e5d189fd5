//! Listening sockets, TCP or Unix domain: binding (a stale socket file replaced, a live
//! one refused) or adopting one already listening, accepting into a [`Transport`], and
//! removing the socket file at the end (only the listener that made it, while it owns it).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mio::event::Source;
use mio::net::{TcpListener, UnixListener};
use mio::{Interest, Registry, Token};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::address::{Address, UnixAddress};
use crate::config::Config;
use crate::transport::Transport;

/// A bound, listening, non-blocking socket.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        /// The socket file this listener made (device and inode), removed when it is
        /// dropped if it is still that file.
        file: Option<(PathBuf, u64, u64)>,
    },
}

impl Listener {
    /// Binds `address` and listens (SO_REUSEADDR on TCP, and SO_REUSEPORT when the config
    /// asks). A Unix socket file left by a process that died is replaced; one a live
    /// server listens on is refused (address in use); `config.unix_mode` sets the new
    /// file's permissions.
    pub(crate) fn bind(address: &Address, config: &Config) -> io::Result<Listener> {
        match address {
            Address::Inet(addr) => {
                let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                if config.reuse_port {
                    socket.set_reuse_port(true)?;
                }
                socket.bind(&(*addr).into())?; // keeps errno; the binding names the address
                socket.listen(config.backlog)?;
                socket.set_nonblocking(true)?;
                Ok(Listener::Tcp(TcpListener::from_std(socket.into())))
            }
            Address::Unix(UnixAddress::Path(path)) => bind_unix_file(path, config),
            Address::Unix(UnixAddress::Abstract(name)) => {
                let mut bytes = vec![0u8];
                bytes.extend_from_slice(name);
                let socket = unix_socket(&SockAddr::unix(OsStr::from_bytes(&bytes))?, config)?;
                Ok(Listener::Unix {
                    listener: socket,
                    file: None,
                })
            }
            Address::Unix(UnixAddress::Unnamed) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "pygev: a Unix socket to listen on needs a path or an abstract name",
            )),
        }
    }

    /// Takes a socket that is already listening (passed by a parent process, or by systemd),
    /// TCP or Unix, and makes it non-blocking. A Unix socket's file stays where it is: its
    /// binder removes it.
    pub(crate) fn adopt(fd: OwnedFd) -> io::Result<Listener> {
        let socket = Socket::from(fd);
        if socket.r#type()? != Type::STREAM || !socket.is_listener()? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "pygev: the socket given is not a listening stream socket (bind() and listen() \
                 it first)",
            ));
        }
        socket.set_nonblocking(true)?;
        match socket.domain()? {
            Domain::UNIX => Ok(Listener::Unix {
                listener: UnixListener::from_std(socket.into()),
                file: None,
            }),
            Domain::IPV4 | Domain::IPV6 => Ok(Listener::Tcp(TcpListener::from_std(socket.into()))),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "pygev: the socket given is neither TCP nor a Unix socket",
            )),
        }
    }

    /// A duplicate of the listening socket, for other processes to accept from, and the
    /// socket file's ownership with it: this listener no longer removes the file (whoever
    /// took the duplicate does, once every process is done with it).
    pub(crate) fn share(&mut self) -> io::Result<OwnedFd> {
        match self {
            Listener::Tcp(listener) => listener.as_fd().try_clone_to_owned(),
            Listener::Unix { listener, file } => {
                let fd = listener.as_fd().try_clone_to_owned()?;
                *file = None;
                Ok(fd)
            }
        }
    }

    /// Accepts one connection: its transport (TCP_NODELAY set on TCP) and the peer's
    /// address.
    pub(crate) fn accept(&self) -> io::Result<(Transport, Address)> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, peer) = listener.accept()?;
                // NOTE: request/response traffic needs Nagle off; failure only costs latency.
                let _ = stream.set_nodelay(true);
                Ok((Transport::Tcp(stream), Address::Inet(peer)))
            }
            Listener::Unix { listener, .. } => {
                let (stream, peer) = listener.accept()?;
                Ok((Transport::Unix(stream), Address::from_unix(&peer)))
            }
        }
    }

    /// The socket, for registering with the poller.
    fn socket(&mut self) -> &mut dyn Source {
        match self {
            Listener::Tcp(l) => l,
            Listener::Unix { listener, .. } => listener,
        }
    }

    /// The address bound (with the real port when 0 was asked).
    pub(crate) fn local_addr(&self) -> io::Result<Address> {
        match self {
            Listener::Tcp(listener) => listener.local_addr().map(Address::Inet),
            Listener::Unix { listener, .. } => {
                listener.local_addr().map(|addr| Address::from_unix(&addr))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let Listener::Unix {
            file: Some((path, dev, ino)),
            ..
        } = self
        else {
            return;
        };
        // Only our own file: another server may have replaced it since.
        let ours = std::fs::symlink_metadata(&*path)
            .is_ok_and(|meta| meta.dev() == *dev && meta.ino() == *ino);
        if ours {
            if let Err(err) = std::fs::remove_file(&*path) {
                log::warn!("pygev: could not remove {}: {err}", path.display());
            }
        }
    }
}

impl Source for Listener {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.socket().register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.socket().reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.socket().deregister(registry)
    }
}

/// A Unix socket bound to `addr`, not listening yet.
fn unix_bound(addr: &SockAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// `socket` listening, non-blocking.
fn unix_listening(socket: Socket, config: &Config) -> io::Result<UnixListener> {
    socket.listen(config.backlog)?;
    socket.set_nonblocking(true)?;
    Ok(UnixListener::from_std(socket.into()))
}

/// A listening Unix socket bound to `addr` (an abstract name: no file).
fn unix_socket(addr: &SockAddr, config: &Config) -> io::Result<UnixListener> {
    unix_listening(unix_bound(addr)?, config)
}

fn bind_unix_file(path: &Path, config: &Config) -> io::Result<Listener> {
    let addr = SockAddr::unix(path)?;
    let socket = match unix_bound(&addr) {
        Ok(socket) => socket,
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
            remove_stale_socket(path, err)?;
            unix_bound(&addr)?
        }
        Err(err) => return Err(err),
    };
    // The file is ours from here: removed again if what follows fails.
    let made = (|| {
        if let Some(mode) = config.unix_mode {
            // Before listening: no client connects while the umask's permissions hold.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        let meta = std::fs::symlink_metadata(path)?;
        Ok((unix_listening(socket, config)?, meta))
    })();
    match made {
        Ok((listener, meta)) => Ok(Listener::Unix {
            listener,
            file: Some((path.to_path_buf(), meta.dev(), meta.ino())),
        }),
        Err(err) => {
            let _ = std::fs::remove_file(path);
            Err(err)
        }
    }
}

/// Removes the socket file at `path` if no server listens on it (its process died);
/// otherwise returns `in_use`, the error binding gave.
fn remove_stale_socket(path: &Path, in_use: io::Error) -> io::Result<()> {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return Err(in_use); // not a socket file: never ours to remove
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(in_use), // a live server answers
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("pygev: replacing stale socket file {}", path.display());
            std::fs::remove_file(path)
        }
        Err(_) => Err(in_use),
    }
}

//! A connection's byte stream: every system call and `unsafe` of its I/O (reading,
//! writing, write shutdown, resets, the kernel's queue sizes), for each kind of socket.
//!
//! The loop reads, writes and closes through [`Transport`] only, so that a new kind of
//! stream (TLS, wrapping one of these) changes this module and nothing that frames bytes.

use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use mio::event::Source;

use crate::address::Address;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};

/// A connected, non-blocking stream socket.
#[derive(Debug)]
pub enum Transport {
    /// TCP over IPv4 or IPv6 (TCP_NODELAY set by whoever made it).
    Tcp(TcpStream),
    /// A Unix domain stream socket.
    Unix(UnixStream),
}

impl Transport {
    /// The socket, for registering with the poller.
    fn socket(&mut self) -> &mut dyn Source {
        match self {
            Transport::Tcp(s) => s,
            Transport::Unix(s) => s,
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Transport::Tcp(s) => s.as_raw_fd(),
            Transport::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Reads into the spare capacity of `buf` (which must be empty), without zeroing it
    /// first; returns the count, which is also `buf`'s new length (0: the peer's EOF).
    pub fn read_into(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        debug_assert!(buf.is_empty());
        let spare = buf.spare_capacity_mut();
        // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `buf`; read(2)
        // writes at most that many bytes into it and touches nothing else.
        let n = unsafe {
            libc::read(
                self.fd(),
                spare.as_mut_ptr().cast::<libc::c_void>(),
                spare.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: read(2) initialised the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(n) };
        Ok(n)
    }

    /// Writes what the socket takes of `data` now.
    pub fn write(&self, data: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => (&*s).write(data),
            Transport::Unix(s) => (&*s).write(data),
        }
    }

    /// Writes what the socket takes of `parts` now, in order (one system call).
    pub fn write_vectored(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => (&*s).write_vectored(parts),
            Transport::Unix(s) => (&*s).write_vectored(parts),
        }
    }

    /// Shuts down the write side: the peer reads EOF once it has what was sent.
    pub fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.shutdown(Shutdown::Write),
            Transport::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }

    /// Makes closing the socket a reset, not an orderly end, so that a peer cut off by a
    /// limit cannot take what it got for the whole stream: TCP sends RST (SO_LINGER 0). A
    /// Unix socket has no reset: its peer reads EOF, or ECONNRESET when it left data of
    /// its own unread here.
    pub fn reset_on_close(&self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => socket2::SockRef::from(s).set_linger(Some(Duration::ZERO)),
            Transport::Unix(_) => Ok(()),
        }
    }

    /// Our end's address.
    pub fn local_addr(&self) -> io::Result<Address> {
        match self {
            Transport::Tcp(s) => s.local_addr().map(Address::Inet),
            Transport::Unix(s) => s.local_addr().map(|a| Address::from_unix(&a)),
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<Address> {
        match self {
            Transport::Tcp(s) => s.peer_addr().map(Address::Inet),
            Transport::Unix(s) => s.peer_addr().map(|a| Address::from_unix(&a)),
        }
    }

    /// The peer's address and ours (an error once the peer reset the connection).
    pub fn addresses(&self) -> io::Result<(Address, Address)> {
        Ok((self.peer_addr()?, self.local_addr()?))
    }

    /// The peer process's credentials as the kernel recorded them when it connected (a
    /// Unix socket's SO_PEERCRED); `None` on TCP.
    pub fn peer_credentials(&self) -> Option<Credentials> {
        let Transport::Unix(stream) = self else {
            return None;
        };
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: SO_PEERCRED writes a ucred of at most `len` bytes through the pointer,
        // which points at `cred`, and its length through `len`.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast::<libc::c_void>(),
                &mut len,
            )
        };
        (rc == 0).then_some(Credentials {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
        })
    }

    /// The socket's pending error (SO_ERROR), cleared: how a non-blocking connect failed.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Transport::Tcp(s) => s.take_error(),
            Transport::Unix(s) => s.take_error(),
        }
    }

    /// How many bytes wait unread in the socket's receive queue (FIONREAD), if it says.
    pub fn unread_bytes(&self) -> Option<usize> {
        let mut count: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through the pointer, which points at `count`.
        let rc = unsafe { libc::ioctl(self.fd(), libc::FIONREAD, &mut count) };
        (rc == 0).then_some(count as usize)
    }

    /// What we wrote that the peer has not taken yet (SIOCOUTQ): for TCP the bytes not
    /// yet acknowledged; for a Unix socket the memory the bytes not yet read take (more
    /// than their count). Either falls as the peer reads, and is 0 once it read all.
    pub fn send_queue(&self) -> Option<u32> {
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one c_int through the pointer, which points at
        // `queued`.
        let rc = unsafe { libc::ioctl(self.fd(), libc::TIOCOUTQ, &mut queued) };
        (rc == 0).then(|| u32::try_from(queued).unwrap_or(0))
    }
}

/// The process at the other end of a Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// Its process id (as the peer's namespace numbers it: 0 when it is not ours).
    pub pid: i32,
    /// Its effective user id.
    pub uid: u32,
    /// Its effective group id.
    pub gid: u32,
}

/// `io::Write` for the ring buffer's vectored flush.
impl Write for &Transport {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        Transport::write(self, data)
    }

    fn write_vectored(&mut self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        Transport::write_vectored(self, parts)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for Transport {
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

"""Unix domain sockets: ``"unix:/path"`` and ``"unix:@name"`` under every protocol, echo
integrity, stale and live socket files, permissions, peer credentials, removal on stop."""

from __future__ import annotations

import os
import random
import socket
import stat
import struct
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import (
    WAIT,
    Echo,
    ServerThread,
    connect_unix,
    ipv6_available,
    read_to_end,
    recv_exactly,
    wait_until,
)
from test_python_protocol import TwoByteLength
from wsraw import BINARY, accept_of, frame, read_response, upgrade_request

import pygev

Serve = Callable[..., ServerThread]


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return f"unix:{tmp_path / 'pygev.sock'}"


def test_a_unix_socket_serves_and_its_file_goes_with_stop(serve: Serve, tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    st = serve(Echo(), f"unix:{path}")
    assert st.server.address == f"unix:{path}"
    assert stat.S_ISSOCK(path.stat().st_mode)
    with st.connect() as sock:
        sock.sendall(b"hello over a unix socket")
        assert recv_exactly(sock, 24) == b"hello over a unix socket"
    st.stop()
    assert not path.exists(), "the socket file outlives the server"


def test_the_abstract_namespace_needs_no_file(serve: Serve) -> None:
    name = f"unix:@pygev-test-{os.getpid()}-{random.randrange(1 << 30)}"
    st = serve(Echo(), name)
    assert st.server.address == name
    with st.connect() as sock:
        sock.sendall(b"abstract")
        assert recv_exactly(sock, 8) == b"abstract"


class Addresses(pygev.Handler):
    def __init__(self) -> None:
        self.seen: list[tuple[Any, Any, Any]] = []
        self.done = threading.Event()

    def on_connect(self, conn: pygev.Connection) -> None:
        self.seen.append((conn.peer_addr, conn.local_addr, conn.peer_credentials))
        self.done.set()

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
        return None


def test_a_connection_knows_its_peer_process(serve: Serve, sock_path: str) -> None:
    handler = Addresses()
    st = serve(handler, sock_path)
    with st.connect():
        assert handler.done.wait(WAIT)
    peer, local, credentials = handler.seen[0]
    assert peer == "unix:", "an unbound client has no name"
    assert local == sock_path
    assert credentials == (os.getpid(), os.getuid(), os.getgid())
    # On TCP there are none, and the addresses are tuples.
    handler = Addresses()
    tcp = serve(handler)
    with tcp.connect():
        assert handler.done.wait(WAIT)
    peer, local, credentials = handler.seen[0]
    assert credentials is None
    assert local == ("127.0.0.1", tcp.port) and peer[0] == "127.0.0.1"


def test_a_bound_client_shows_its_name(serve: Serve, tmp_path: Path, sock_path: str) -> None:
    handler = Addresses()
    serve(handler, sock_path)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.bind(str(tmp_path / "client.sock"))
    client.settimeout(WAIT)
    with client:
        client.connect(sock_path.removeprefix("unix:"))
        assert handler.done.wait(WAIT)
    assert handler.seen[0][0] == f"unix:{tmp_path / 'client.sock'}"


def test_a_stale_socket_file_is_replaced(serve: Serve, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, as after a crash: nobody listens on it
    assert path.exists()
    st = serve(Echo(), f"unix:{path}")
    with st.connect() as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"


def test_a_live_socket_file_is_refused_and_kept(serve: Serve, sock_path: str) -> None:
    st = serve(Echo(), sock_path)
    with pytest.raises(OSError) as info:
        pygev.Server(Echo(), sock_path)
    assert info.value.errno == 98  # EADDRINUSE
    # The first server still serves on its file.
    with st.connect() as sock:
        sock.sendall(b"still here")
        assert recv_exactly(sock, 10) == b"still here"


def test_a_file_that_is_not_a_socket_is_never_removed(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("precious")
    with pytest.raises(OSError):
        pygev.Server(Echo(), f"unix:{path}")
    assert path.read_text() == "precious"


def test_unix_mode_sets_the_file_permissions(serve: Serve, tmp_path: Path) -> None:
    path = tmp_path / "mode.sock"
    serve(Echo(), f"unix:{path}", unix_mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    other = tmp_path / "other.sock"
    serve(Echo(), f"unix:{other}", unix_mode=0o666)
    assert stat.S_IMODE(other.stat().st_mode) == 0o666


def test_bad_unix_addresses_are_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="socket path"):
        pygev.Server(Echo(), "unix:")
    with pytest.raises(ValueError, match="107"):
        pygev.Server(Echo(), "unix:/" + "x" * 120)
    with pytest.raises(ValueError, match="abstract"):
        pygev.Server(Echo(), "unix:@")


def test_an_address_may_be_a_host_port_tuple(serve: Serve) -> None:
    hosts = ["127.0.0.1"] + (["::1"] if ipv6_available() else [])
    for host in hosts:
        st = serve(Echo(), (host, 0))
        assert st.host == host and st.port != 0
        with st.connect() as sock:
            sock.sendall(b"tuple")
            assert recv_exactly(sock, 5) == b"tuple"
    with pytest.raises(TypeError, match="host, port"):
        pygev.Server(Echo(), ("127.0.0.1",))
    with pytest.raises(TypeError, match="host, port"):
        pygev.Server(Echo(), 8080)


def test_200_concurrent_unix_connections_echo_every_byte_in_random_splits(
    serve: Serve, sock_path: str
) -> None:
    st = serve(Echo(), sock_path, num_loops=2)
    rng = random.Random(11)
    payloads = [rng.randbytes(rng.randrange(1, 64 << 10)) for _ in range(200)]
    socks = [st.connect() for _ in payloads]
    errors: list[BaseException] = []

    def talk(sock: socket.socket, payload: bytes, seed: int) -> None:
        try:
            split = random.Random(seed)
            sent = 0
            while sent < len(payload):
                n = split.randrange(1, 8192)
                sock.sendall(payload[sent : sent + n])
                sent += n
            assert recv_exactly(sock, len(payload)) == payload
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=talk, args=(s, p, i))
        for i, (s, p) in enumerate(zip(socks, payloads))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 2)
    for s in socks:
        s.close()
    assert not errors, errors[:3]
    assert not any(t.is_alive() for t in threads)


# ---- every protocol over a Unix socket ------------------------------------------------------


def _length_prefix(sock: socket.socket) -> None:
    for payload in (b"", b"one", os.urandom(5000)):
        sock.sendall(struct.pack(">I", len(payload)) + payload)
        assert recv_exactly(sock, 4 + len(payload)) == struct.pack(">I", len(payload)) + payload


def _delimited(sock: socket.socket) -> None:
    sock.sendall(b"first\r\nsec")
    sock.sendall(b"ond\r\n")
    assert recv_exactly(sock, 15) == b"first\r\nsecond\r\n"


def _two_byte(sock: socket.socket) -> None:
    sock.sendall(b"\x00\x03abc\x00\x02de")
    assert recv_exactly(sock, 9) == b"\x00\x03abc\x00\x02de"


def _plugin(sock: socket.socket) -> None:
    sock.sendall(b"\x00\x05hello")
    assert recv_exactly(sock, 7) == b"\x00\x05hello"


class WsEcho(pygev.WebSocketHandler):
    def on_message(self, conn: pygev.Connection, data: str | bytes) -> str | bytes:
        return data


def _websocket(sock: socket.socket) -> None:
    request, key = upgrade_request()
    sock.sendall(request)
    status, headers, rest = read_response(sock)
    assert status == 101 and headers["sec-websocket-accept"] == accept_of(key).decode()
    sock.sendall(frame(BINARY, b"over unix"))
    reply = rest + recv_exactly(sock, 11 - len(rest))
    assert reply == bytes([0x82, 9]) + b"over unix"


PROTOCOLS: dict[str, tuple[Callable[[], Any], Any, Callable[[socket.socket], None]]] = {
    "length-prefix": (pygev.LengthPrefix, Echo, _length_prefix),
    "delimited": (lambda: pygev.Delimited(b"\r\n"), Echo, _delimited),
    "python-protocol": (TwoByteLength, Echo, _two_byte),
    "plugin": (lambda: pygev._pygev._length_prefix_plugin(2), Echo, _plugin),
    "websocket": (pygev.WebSocket, WsEcho, _websocket),
}


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_every_protocol_works_over_a_unix_socket(serve: Serve, sock_path: str, name: str) -> None:
    make_protocol, handler, talk = PROTOCOLS[name]
    st = serve(handler(), sock_path, protocol=make_protocol())
    with st.connect() as sock:
        talk(sock)
    # A protocol error ends only that connection (a Unix socket has no reset: the peer
    # reads the end), and the next one is served.
    if name == "length-prefix":
        with st.connect() as bad:
            bad.sendall(b"\xff\xff\xff\xff")
            assert read_to_end(bad)[0] == b""
        with st.connect() as sock:
            talk(sock)


def test_stats_count_unix_connections(serve: Serve, sock_path: str) -> None:
    st = serve(Echo(), sock_path)
    socks = [connect_unix(sock_path) for _ in range(5)]
    wait_until(lambda: st.stats()["connections"] == 5, what="5 open connections")
    for s in socks:
        s.close()
    wait_until(lambda: st.stats()["connections"] == 0, what="the connections to close")


def test_a_listening_socket_given_is_served(serve: Serve, tmp_path: Path) -> None:
    """A socket bound and listening elsewhere (a parent process, systemd) is served as
    the address: TCP and Unix. The server listens on a duplicate (closing the original
    changes nothing) and leaves the Unix socket's file to its binder."""
    path = tmp_path / "given.sock"
    given_unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    given_unix.bind(str(path))
    given_unix.listen(16)
    given_tcp = socket.create_server(("127.0.0.1", 0))
    port = given_tcp.getsockname()[1]
    unix_server = serve(Echo(), given_unix, num_loops=2)
    tcp_server = serve(Echo(), given_tcp, num_loops=2)
    given_unix.close()
    given_tcp.close()
    assert unix_server.server.address == f"unix:{path}"
    assert tcp_server.server.address == ("127.0.0.1", port)
    for st in (unix_server, tcp_server):
        for _ in range(4):  # across both loops
            with st.connect() as sock:
                sock.sendall(b"adopted")
                assert recv_exactly(sock, 7) == b"adopted"
    unix_server.stop()
    assert path.exists(), "the file is its binder's to remove"


def test_a_socket_that_does_not_listen_is_refused(tmp_path: Path) -> None:
    with socket.socket() as unbound:
        with pytest.raises(ValueError, match="not a listening stream socket"):
            pygev.Server(Echo(), unbound)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram:
        datagram.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="not a listening stream socket"):
            pygev.Server(Echo(), datagram)
    closed = socket.socket()
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        pygev.Server(Echo(), closed)

"""PROXY protocol (v1 and v2) on accepted connections, with raw clients that play the
proxy: the header is read before TLS and any framing, ``conn.peer_addr`` is the client's
address from it, and a connection from an untrusted peer, or with a malformed or missing
header, is reset with a log line while the server goes on. (Behind a real HAProxy:
``test_haproxy.py``.)"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import struct
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import (
    WAIT,
    LogCapture,
    ServerThread,
    expect_refused,
    expect_reset,
    recv_exactly,
    wait_until,
)
from test_tls import Pki, pki  # noqa: F401  (the fixture)
from wsraw import BINARY, accept_of, frame, read_response, upgrade_request

import pygev

Serve = Callable[..., ServerThread]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def server_of(client: tuple[str, int]) -> tuple[str, int]:
    """The address the client connected to, on the proxy: of the client's family."""
    return ("2001:db8::1", 443) if ":" in client[0] else ("192.0.2.1", 443)


def v1(client: tuple[str, int]) -> bytes:
    family = "TCP6" if ":" in client[0] else "TCP4"
    server = server_of(client)
    return f"PROXY {family} {client[0]} {server[0]} {client[1]} {server[1]}\r\n".encode()


def v2(client: tuple[str, int] | None, tlvs: bytes = b"") -> bytes:
    """A v2 header: PROXY with the addresses, or LOCAL (`client` None)."""
    if client is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    server = server_of(client)
    src, dst = ipaddress.ip_address(client[0]), ipaddress.ip_address(server[0])
    family = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", client[1], server[1]) + tlvs
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


class Peers(pygev.Handler):
    """Echoes, and records each connection's addresses as on_connect saw them."""

    def __init__(self) -> None:
        self.peers: list[Any] = []
        self.locals: list[Any] = []

    def on_connect(self, conn: pygev.Connection) -> None:
        self.peers.append(conn.peer_addr)
        self.locals.append(conn.local_addr)

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        return data


def echo(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_clients_address_comes_from_the_header(serve: Serve, version: str) -> None:
    handler = Peers()
    server = serve(handler, proxy_protocol=True)
    header = v1 if version == "v1" else v2
    clients = [("203.0.113.7", 40001), ("2001:db8::42", 65535)]
    for client in clients:
        with server.connect() as sock:
            sock.sendall(header(client) + b"first bytes after the header")
            assert recv_exactly(sock, 28) == b"first bytes after the header"
            echo(sock, b"and more")
    assert handler.peers == clients
    assert all(local[1] == server.port for local in handler.locals), "the socket's own"


def test_a_header_that_arrives_byte_by_byte(serve: Serve) -> None:
    handler = Peers()
    server = serve(handler, proxy_protocol=True, protocol=pygev.LengthPrefix())
    tlv = bytes([0x04, 0x00, 0x03]) + b"abc"  # a NOOP TLV, skipped
    for header in (v1(("198.51.100.9", 1)), v2(("198.51.100.9", 1), tlvs=tlv)):
        with server.connect() as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            message = struct.pack("!I", 5) + b"hello"
            for i in range(len(header)):
                sock.sendall(header[i : i + 1])
            sock.sendall(message)
            assert recv_exactly(sock, len(message)) == message
    assert handler.peers == [("198.51.100.9", 1)] * 2


def test_local_and_unknown_headers_keep_the_proxys_address(serve: Serve) -> None:
    handler = Peers()
    server = serve(handler, proxy_protocol=True)
    for header in (v2(None), b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"):
        with server.connect() as sock:
            sock.sendall(header)
            echo(sock, b"health")
            own = sock.getsockname()
        assert handler.peers[-1] == own


@pytest.mark.parametrize(
    "bad",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
        b"PROXY TCP4 ::1 ::1 1 1\r\n",
        b"PROXY " + b"x" * 120,
        V2_SIGNATURE + bytes([0x21, 0x12, 0, 12]) + bytes(12),  # a datagram transport
        V2_SIGNATURE + bytes([0x31, 0x11, 0, 12]) + bytes(12),  # version 3
    ],
)
def test_a_malformed_header_resets_only_its_connection(
    serve: Serve, pygev_log: LogCapture, bad: bytes
) -> None:
    handler = Peers()
    server = serve(handler, proxy_protocol=True)
    good = server.connect()
    good.sendall(v1(("192.0.2.50", 5000)))
    echo(good, b"before")
    with server.connect() as sock:
        sock.sendall(bad)
        expect_reset(sock)
    record = pygev_log.wait_for("PROXY")
    assert record.levelname == "WARNING"
    echo(good, b"after: the others go on")
    with server.connect() as sock:
        sock.sendall(v2(("192.0.2.51", 5001)))
        echo(sock, b"new ones too")
    good.close()
    assert handler.peers == [("192.0.2.50", 5000), ("192.0.2.51", 5001)], "no on_connect"
    wait_until(lambda: server.stats()["closed_by_reason"]["protocol"] == 1, what="counted")


def test_a_peer_that_is_not_a_trusted_proxy_is_refused(serve: Serve, pygev_log: LogCapture) -> None:
    handler = Peers()
    server = serve(handler, proxy_protocol=True, trusted_proxies=["192.0.2.0/24", "::1"])
    expect_refused(server, v1(("203.0.113.1", 1)))
    record = pygev_log.wait_for("not from a trusted proxy")
    assert "127.0.0.1" in record.getMessage() and record.levelname == "WARNING"
    assert handler.peers == []
    trusting = serve(
        Peers(), proxy_protocol=True, trusted_proxies=[ipaddress.ip_network("127.0.0.0/8")]
    )
    with trusting.connect() as sock:
        sock.sendall(v1(("203.0.113.1", 1)))
        echo(sock, b"trusted")


def test_a_missing_header_is_reset_after_its_timeout(serve: Serve, pygev_log: LogCapture) -> None:
    handler = Peers()
    server = serve(handler, proxy_protocol=True, proxy_header_timeout=0.3)
    with server.connect() as sock:
        sock.sendall(v1(("203.0.113.1", 1))[:20])  # a header begun, never ended
        expect_reset(sock)
    pygev_log.wait_for("sent no complete PROXY protocol header within 300ms")
    assert handler.peers == []
    wait_until(lambda: server.stats()["connections"] == 0, what="the connection closed")
    assert server.stats()["closed_by_reason"]["timeout"] == 1


def test_the_header_comes_before_tls(serve: Serve, pki: Pki) -> None:  # noqa: F811
    handler = Peers()
    tls = pygev.TLS(pki.certfile, pki.keyfile)
    server = serve(handler, tls=tls, proxy_protocol=True)
    for header, client in ((v1(("192.0.2.77", 7777)), ("192.0.2.77", 7777)), (v2(None), None)):
        raw = server.connect()
        raw.sendall(header)
        with pki.client_context().wrap_socket(raw, server_hostname="localhost") as sock:
            echo(sock, b"over TLS behind the proxy")
            expected = client or sock.getsockname()
        assert handler.peers[-1] == expected


def test_the_tls_handshake_has_its_own_time_after_the_header(serve: Serve, pki: Pki) -> None:  # noqa: F811
    """A short header timeout bounds the header, not the TLS handshake that follows it."""
    handler = Peers()
    tls = pygev.TLS(pki.certfile, pki.keyfile)
    server = serve(handler, tls=tls, proxy_protocol=True, proxy_header_timeout=0.3)
    raw = server.connect()
    raw.sendall(v1(("192.0.2.78", 7878)))
    time.sleep(0.6)  # past the header's deadline, well within the handshake's
    with pki.client_context().wrap_socket(raw, server_hostname="localhost") as sock:
        echo(sock, b"late but in time")
    assert handler.peers[-1] == ("192.0.2.78", 7878)


def test_the_header_comes_before_the_websocket_upgrade(serve: Serve) -> None:
    class Ws(pygev.WebSocketHandler):
        def __init__(self) -> None:
            self.peers: list[Any] = []

        def on_connect(self, conn: pygev.Connection) -> None:
            self.peers.append(conn.peer_addr)

        def on_message(self, conn: pygev.Connection, data: str | bytes) -> str | bytes:
            return data

    handler = Ws()
    server = serve(handler, proxy_protocol=True)
    request, key = upgrade_request()
    with server.connect() as sock:
        sock.sendall(v2(("2001:db8::7", 8080)) + request)
        status, headers, _ = read_response(sock)
        assert status == 101 and headers["sec-websocket-accept"] == accept_of(key).decode()
        sock.sendall(frame(BINARY, b"ws behind a proxy", mask=True))
        assert recv_exactly(sock, 2 + 17) == b"\x82\x11ws behind a proxy"
    assert handler.peers == [("2001:db8::7", 8080)]


def test_unix_socket_peers_are_trusted(serve: Serve, tmp_path: Path) -> None:
    handler = Peers()
    server = serve(handler, f"unix:{tmp_path / 'p.sock'}", proxy_protocol=True, trusted_proxies=[])
    with server.connect() as sock:
        sock.sendall(v1(("192.0.2.5", 55)))
        echo(sock, b"via a unix socket")
    wait_until(lambda: handler.peers == [("192.0.2.5", 55)])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="not an IP network"):
        pygev.Server(Peers(), "127.0.0.1:0", proxy_protocol=True, trusted_proxies=["nope"])
    with pytest.raises(ValueError, match="host bits"):
        pygev.Server(Peers(), "127.0.0.1:0", proxy_protocol=True, trusted_proxies=["10.0.0.1/8"])
    with pytest.raises(TypeError, match="list of networks"):
        pygev.Server(Peers(), "127.0.0.1:0", proxy_protocol=True, trusted_proxies="10.0.0.0/8")
    with pytest.raises(ValueError, match="proxy_protocol=True"):
        pygev.Server(Peers(), "127.0.0.1:0", trusted_proxies=["10.0.0.0/8"])
    with pytest.raises(ValueError, match="proxy_header_timeout is for proxy_protocol=True"):
        pygev.Server(Peers(), "127.0.0.1:0", proxy_header_timeout=1.0)
    with pytest.raises(ValueError, match="proxy_header_timeout must be"):
        pygev.Server(Peers(), "127.0.0.1:0", proxy_protocol=True, proxy_header_timeout=0)


def test_without_proxy_protocol_a_header_is_just_data(serve: Serve) -> None:
    server = serve(Peers())
    with server.connect() as sock:
        echo(sock, v1(("192.0.2.1", 1)))


def test_a_header_and_a_client_hello_in_one_segment(serve: Serve, pki: Pki) -> None:  # noqa: F811
    """What follows the header in the same read is the TLS handshake's first flight."""
    handler = Peers()
    server = serve(handler, tls=pygev.TLS(pki.certfile, pki.keyfile), proxy_protocol=True)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = pki.client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with server.connect() as sock:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        sock.sendall(v2(("192.0.2.33", 3333)) + outgoing.read())  # one segment
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                data = sock.recv(65536)
                assert data, "closed during the handshake"
                incoming.write(data)
        sock.sendall(outgoing.read())
        tls.write(b"sealed")
        sock.sendall(outgoing.read())
        plain = b""
        while len(plain) < 6:
            try:
                plain += tls.read(6 - len(plain))
            except ssl.SSLWantReadError:
                incoming.write(sock.recv(65536))
        assert plain == b"sealed"
    assert handler.peers == [("192.0.2.33", 3333)]


def test_a_header_larger_than_a_read(serve: Serve) -> None:
    """A v2 header may carry up to 64 KiB of TLVs: more than one read takes."""
    handler = Peers()
    server = serve(handler, proxy_protocol=True)
    tlv = bytes([0xE0]) + struct.pack("!H", 65000) + b"t" * 65000  # a custom TLV, skipped
    with server.connect() as sock:
        sock.sendall(v2(("192.0.2.44", 4444), tlvs=tlv) + b"after")
        assert recv_exactly(sock, 5) == b"after"
    assert handler.peers == [("192.0.2.44", 4444)]


def test_stop_while_a_header_is_pending(serve: Serve) -> None:
    handler = Peers()
    server = serve(handler, proxy_protocol=True)
    with server.connect() as sock:
        sock.sendall(b"PROXY TCP4 192.0.2.1")  # and no more
        wait_until(lambda: server.stats()["accepted"] == 1, what="the accept")
        server.stop(timeout=WAIT)  # returns: the pending connection is simply closed
        assert sock.recv(16) == b""
    assert handler.peers == []


def test_refused_and_timed_out_connections_leave_the_counts_right(serve: Serve) -> None:
    server = serve(Peers(), proxy_protocol=True, trusted_proxies=["192.0.2.0/24"])
    for _ in range(3):
        expect_refused(server)
    trusting = serve(Peers(), proxy_protocol=True)
    with trusting.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        expect_reset(sock)
    wait_until(lambda: trusting.stats()["closed"] == 1, what="the close counted")
    assert server.stats()["connections"] == 0 and server.stats()["accepted"] == 0
    assert server.stats()["refused_by_reason"] == {"untrusted_proxy": 3, "tls_handshakes": 0}
    assert trusting.stats()["connections"] == 0 and trusting.stats()["accepted"] == 1
    assert trusting.stats()["refused_by_reason"]["untrusted_proxy"] == 0

"""pygev behind a real HAProxy: TCP with ``send-proxy`` (PROXY v1) and ``send-proxy-v2``,
and WebSocket in HTTP mode with ``send-proxy-v2``, where HAProxy's HTTP health check
(``GET /healthz``, sent with its own PROXY header) is answered by ``on_http_request``.
Each test's clients connect from their own loopback address, which pygev must report as
``conn.peer_addr``. HAProxy is installed by ``scripts/test.sh`` (apt-get) and started
here on free loopback ports."""

from __future__ import annotations

import csv
import io
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import WAIT, ServerThread, free_port, recv_exactly, require_tool, wait_until
from websockets.sync.client import connect as ws_connect

import pygev

Serve = Callable[..., ServerThread]

pytestmark = pytest.mark.timeout(120)


def haproxy_binary() -> str:
    return require_tool("haproxy", "/usr/sbin/haproxy")


@dataclass
class HAProxy:
    proc: subprocess.Popen[bytes]
    admin: Path
    ports: dict[str, int]

    def stat(self, backend: str, server: str) -> str:
        """The server's status as HAProxy sees it (``UP``, ``DOWN``, ...)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(WAIT)
            sock.connect(str(self.admin))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        for row in rows:
            if row["pxname"] == backend and row["svname"] == server:
                return row["status"]
        raise AssertionError(f"no {backend}/{server} in {data!r}")


@pytest.fixture
def haproxy_for(tmp_path: Path) -> Iterator[Callable[[int, int], HAProxy]]:
    """Starts HAProxy in front of a TCP echo server (`tcp_port`) and a WebSocket server
    (`ws_port`)."""
    binary = haproxy_binary()
    started: list[subprocess.Popen[bytes]] = []

    def start(tcp_port: int, ws_port: int) -> HAProxy:
        ports = {"v1": free_port(), "v2": free_port(), "ws": free_port()}
        admin = tmp_path / "admin.sock"
        config = tmp_path / "haproxy.cfg"
        config.write_text(f"""
global
    stats socket {admin} mode 600 level admin
defaults
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
frontend tcp_v1
    mode tcp
    bind 127.0.0.1:{ports["v1"]}
    default_backend tcp_v1
backend tcp_v1
    mode tcp
    server echo 127.0.0.1:{tcp_port} send-proxy
frontend tcp_v2
    mode tcp
    bind 127.0.0.1:{ports["v2"]}
    default_backend tcp_v2
backend tcp_v2
    mode tcp
    server echo 127.0.0.1:{tcp_port} send-proxy-v2
frontend ws
    mode http
    bind 127.0.0.1:{ports["ws"]}
    default_backend ws
backend ws
    mode http
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    server chat 127.0.0.1:{ws_port} send-proxy-v2 check check-send-proxy inter 100ms fall 1 rise 1
""")
        proc = subprocess.Popen(
            [binary, "-db", "-f", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        started.append(proc)
        proxy = HAProxy(proc, admin, ports)

        def ready() -> bool:
            """Its stats socket answers: it has bound every frontend (not probed with
            connections, which it would forward)."""
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"haproxy exited with {proc.returncode}: {out}")
            try:
                proxy.stat("tcp_v1", "echo")
                return True
            except OSError:
                return False

        wait_until(ready, what="haproxy listening")
        return proxy

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(WAIT)
        if proc.stdout is not None:
            proc.stdout.close()


class Echo(pygev.Handler):
    def __init__(self) -> None:
        self.peers: list[Any] = []

    def on_connect(self, conn: pygev.Connection) -> None:
        self.peers.append(conn.peer_addr)

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        return data


class Chat(pygev.WebSocketHandler):
    def __init__(self) -> None:
        self.peers: list[Any] = []
        self.healthy = True
        self.checks = 0

    def on_connect(self, conn: pygev.Connection) -> None:
        self.peers.append(conn.peer_addr)

    def on_message(self, conn: pygev.Connection, data: str | bytes) -> str | bytes:
        return data

    def on_http_request(
        self, conn: pygev.Connection, request: pygev.HttpRequest
    ) -> pygev.Response | None:
        if request.path != "/healthz":
            return None
        self.checks += 1
        return pygev.Response(200, "ok") if self.healthy else pygev.Response(503, "draining")


def client_from(source: str, port: int) -> socket.socket:
    """A connection to HAProxy's `port` from the loopback address `source`."""
    sock = socket.socket()
    sock.settimeout(WAIT)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


@dataclass
class Deployment:
    echo: Echo
    chat: Chat
    proxy: HAProxy
    #: The TCP server's own port (HAProxy's backend).
    tcp_port: int


@pytest.fixture
def deployment(serve: Serve, haproxy_for: Callable[[int, int], HAProxy]) -> Deployment:
    """HAProxy (connecting from 127.0.0.1, the only proxy the TCP server trusts) in front
    of a TCP echo server and a WebSocket server (default trust: loopback)."""
    echo, chat = Echo(), Chat()
    tcp = serve(echo, proxy_protocol=True, trusted_proxies=["127.0.0.1/32"], num_loops=2)
    ws = serve(chat, proxy_protocol=True)
    return Deployment(echo, chat, haproxy_for(tcp.port, ws.port), tcp.port)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_tcp_behind_haproxy_sees_the_clients_address(deployment: Deployment, version: str) -> None:
    echo, proxy = deployment.echo, deployment.proxy
    sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    seen = []
    for source in sources:
        with client_from(source, proxy.ports[version]) as sock:
            payload = f"through haproxy from {source}".encode()
            sock.sendall(payload)
            assert recv_exactly(sock, len(payload)) == payload
            seen.append(sock.getsockname())
    assert echo.peers == seen


def test_websocket_behind_haproxy_with_its_health_check(deployment: Deployment) -> None:
    chat, proxy = deployment.chat, deployment.proxy
    wait_until(lambda: proxy.stat("ws", "chat") == "UP", what="the health check passing")
    assert chat.checks > 0 and chat.peers == [], "health checks are not connections"
    sock = client_from("127.0.0.5", proxy.ports["ws"])
    with ws_connect(f"ws://127.0.0.1:{proxy.ports['ws']}/chat", sock=sock) as ws:
        ws.send("hello through haproxy")
        assert ws.recv(WAIT) == "hello through haproxy"
        assert chat.peers == [sock.getsockname()]
    # The hook says the server drains: HAProxy takes it out, then back in.
    chat.healthy = False
    wait_until(lambda: proxy.stat("ws", "chat") == "DOWN", what="the check failing")
    chat.healthy = True
    wait_until(lambda: proxy.stat("ws", "chat") == "UP", what="the check passing again")


def test_a_client_that_bypasses_the_proxy_is_refused(deployment: Deployment) -> None:
    """Only the trusted proxy may send a header: a client that connects to the server
    itself, from another address, is reset before on_connect (and the proxy's clients go
    on)."""
    with pytest.raises(ConnectionResetError):
        with socket.socket() as sock:
            sock.settimeout(WAIT)
            sock.bind(("127.0.0.9", 0))
            sock.connect(("127.0.0.1", deployment.tcp_port))
            sock.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nhello")
            if not sock.recv(16):
                raise AssertionError("a clean close where a reset was due")
    assert deployment.echo.peers == []
    with client_from("127.0.0.2", deployment.proxy.ports["v2"]) as sock:
        sock.sendall(b"still served")
        assert recv_exactly(sock, 12) == b"still served"
        assert deployment.echo.peers == [sock.getsockname()]

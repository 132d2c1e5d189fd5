"""The WebSocket client (``server.connect("ws://...")``) against real servers: the
`websockets` server for what a well-behaved server does, pygev's own server (plain and
over TLS), and a raw socket server (tests/wsraw.py helpers) for what no server should do:
a wrong accept key, masked frames, silence, a reset."""

from __future__ import annotations

import asyncio
import queue
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import websockets.sync.server as ws_server
from conftest import WAIT, ServerThread, recv_exactly, wait_until
from websockets.datastructures import Headers
from websockets.http11 import Response
from wsraw import BINARY, CLOSE, PING, TEXT, accept_of

import pygev

pytestmark = pytest.mark.timeout(120)

Serve = Callable[..., ServerThread]


class Client(pygev.WebSocketHandler):
    """Records every callback of its connections, in order, and echoes nothing."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.events: list[tuple[str, int, Any]] = []

    def _record(self, kind: str, conn: pygev.Connection, value: Any = None) -> None:
        with self.cond:
            self.events.append((kind, conn.id, value))
            self.cond.notify_all()

    def on_connect(self, conn: pygev.Connection) -> None:
        self._record("connect", conn)

    def on_message(self, conn: pygev.Connection, data: str | bytes) -> None:
        self._record("message", conn, data)

    def on_close(self, conn: pygev.Connection) -> None:
        self._record("close", conn)

    def of(self, conn_id: int) -> list[tuple[str, Any]]:
        with self.cond:
            return [(kind, value) for kind, i, value in self.events if i == conn_id]

    def messages(self, conn_id: int) -> list[Any]:
        return [value for kind, value in self.of(conn_id) if kind == "message"]

    def wait(self, predicate: Callable[[], Any], what: str) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, WAIT), f"timed out waiting for {what}"

    def wait_messages(self, conn_id: int, count: int) -> list[Any]:
        self.wait(lambda: len(self.messages(conn_id)) >= count, f"{count} messages")
        return self.messages(conn_id)

    def wait_closed(self, conn_id: int) -> None:
        self.wait(lambda: ("close", None) in self.of(conn_id), "on_close")


@pytest.fixture
def dialer(serve: Serve) -> ServerThread:
    """A pygev server without a listener: it only dials."""
    return serve(Client(), None)


def dial(dialer: ServerThread, url: str, **kwargs: Any) -> pygev.Connection:
    conn: pygev.Connection = dialer.server.connect(url, **kwargs).result(WAIT)
    return conn


# ---- the websockets server ---------------------------------------------------------------


class WsServer:
    """A `websockets` (sync) server in a thread: echoes, and records each request."""

    def __init__(self, handler: Callable[[Any], None] | None = None, **kwargs: Any) -> None:
        self.requests: list[Any] = []
        self.connections: list[Any] = []
        kwargs.setdefault("max_size", None)
        self.server = ws_server.serve(
            handler or self.echo, "127.0.0.1", 0, process_request=self._record, **kwargs
        )
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _record(self, conn: Any, request: Any) -> Response | None:
        self.requests.append(request)
        self.connections.append(conn)
        return None

    @staticmethod
    def echo(ws: Any) -> None:
        for message in ws:
            ws.send(message)

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(WAIT)


@pytest.fixture
def ws_echo() -> Iterator[WsServer]:
    server = WsServer()
    yield server
    server.stop()


@pytest.mark.parametrize("compression", [True, False])
def test_echo_with_the_websockets_server(
    dialer: ServerThread, ws_echo: WsServer, compression: bool
) -> None:
    conn = dial(
        dialer,
        ws_echo.url("/chat?room=1"),
        protocol=pygev.WebSocket(compression=compression),
        headers=[("Authorization", "Bearer abc")],
        subprotocols=["v2.chat", "v1.chat"],
        origin="https://example.com",
    )
    request = ws_echo.requests[-1]
    assert request.path == "/chat?room=1"
    assert request.headers["Host"] == f"127.0.0.1:{ws_echo.port}"
    assert request.headers["Authorization"] == "Bearer abc"
    assert request.headers["Origin"] == "https://example.com"
    assert request.headers["Sec-WebSocket-Protocol"] == "v2.chat, v1.chat"
    offered = request.headers.get("Sec-WebSocket-Extensions", "")
    assert ("permessage-deflate" in offered) == compression
    assert conn.subprotocol is None  # the server supports none of them
    headers = conn.response_headers
    assert headers is not None and ("upgrade", "websocket") in headers
    assert any(name == "sec-websocket-accept" for name, _ in headers)

    client: Client = dialer.handler
    sent: list[str | bytes] = []
    for size in [0, 1, 125, 126, 65535, 65536, 1 << 20]:
        sent.append(("añ€😀" * (size // 10 + 1))[: size // 4])
        sent.append(bytes(range(256)) * (size // 256) + bytes(size % 256))
    for message in sent:
        conn.send(message)
    got = client.wait_messages(conn.id, len(sent))
    assert got == sent  # text stays str, binary stays bytes, in order
    extensions = ws_echo.connections[-1].protocol.extensions
    assert bool(extensions) == compression
    conn.close(4000, "done")
    client.wait_closed(conn.id)
    assert client.of(conn.id)[0] == ("connect", None)
    assert [kind for kind, _ in client.of(conn.id)].count("close") == 1


def test_a_chosen_subprotocol_must_be_offered_and_is_reported(dialer: ServerThread) -> None:
    server = WsServer(subprotocols=["v1.chat"])
    try:
        conn = dial(dialer, server.url(), subprotocols=["v2.chat", "v1.chat"])
        assert conn.subprotocol == "v1.chat"
    finally:
        server.stop()


def test_fragmented_messages_from_the_server_arrive_whole(dialer: ServerThread) -> None:
    def fragments(ws: Any) -> None:
        for _ in ws:
            ws.send(["frag", "mented ", "text"])
            ws.send([b"\x00" * 10, b"\x01" * 100_000, b"\x02"])

    for compression in [True, False]:
        server = WsServer(fragments, compression="deflate" if compression else None)
        try:
            conn = dial(dialer, server.url(), protocol=pygev.WebSocket(compression=compression))
            conn.send("go")
            got = dialer.handler.wait_messages(conn.id, 2)
            assert got == ["fragmented text", b"\x00" * 10 + b"\x01" * 100_000 + b"\x02"]
            conn.close()
        finally:
            server.stop()


@pytest.mark.parametrize("compression", [True, False])
def test_sixteen_mib_messages_both_ways(dialer: ServerThread, compression: bool) -> None:
    server = WsServer(compression="deflate" if compression else None)
    try:
        ws = pygev.WebSocket(max_message_size=16 << 20, compression=compression)
        conn = dial(dialer, server.url(), protocol=ws)
        payload = bytes(range(251)) * ((16 << 20) // 251) + b"x" * ((16 << 20) % 251)
        text = "0123456789abcdé" * ((16 << 20) // 16)
        assert len(payload) == len(text.encode()) == 16 << 20
        conn.send(payload)
        conn.send(text)
        got = dialer.handler.wait_messages(conn.id, 2)
        assert got[0] == payload and got[1] == text
    finally:
        server.stop()


def test_a_message_over_max_message_size_closes_with_1009(dialer: ServerThread) -> None:
    codes: list[int | None] = []

    def big(ws: Any) -> None:
        ws.send(b"x" * 2000)
        try:
            for _ in ws:
                pass
        finally:
            codes.append(ws.close_code)

    server = WsServer(big)
    try:
        conn = dial(dialer, server.url(), protocol=pygev.WebSocket(max_message_size=1000))
        dialer.handler.wait_closed(conn.id)
        wait_until(lambda: codes, what="the server to see the close")
        assert codes == [1009]
        assert dialer.handler.messages(conn.id) == []
    finally:
        server.stop()


def test_the_server_closing_ends_the_connection_once(dialer: ServerThread) -> None:
    def close_after_one(ws: Any) -> None:
        ws.recv()
        ws.send("bye")
        ws.close(1001, "going away")

    server = WsServer(close_after_one)
    try:
        conn = dial(dialer, server.url())
        conn.send("hi")
        dialer.handler.wait_closed(conn.id)
        assert [kind for kind, _ in dialer.handler.of(conn.id)] == ["connect", "message", "close"]
        assert dialer.handler.messages(conn.id) == ["bye"]
        assert not conn.connected
        with pytest.raises(pygev.ConnectionClosed):
            conn.send("late")
    finally:
        server.stop()


def test_the_client_close_code_and_reason_reach_the_server(dialer: ServerThread) -> None:
    seen: list[tuple[int | None, str | None]] = []

    def record(ws: Any) -> None:
        try:
            for _ in ws:
                pass
        finally:  # (a code other than 1000 or 1001 raises)
            seen.append((ws.close_code, ws.close_reason))

    server = WsServer(record)
    try:
        conn = dial(dialer, server.url())
        with pytest.raises(ValueError):
            conn.close(1005, "reserved")
        conn.close(4001, "see you")
        dialer.handler.wait_closed(conn.id)
        wait_until(lambda: seen, what="the server to see the close")
        assert seen == [(4001, "see you")]
    finally:
        server.stop()


def test_a_ping_is_answered_by_the_server(dialer: ServerThread) -> None:
    """The server's pong shows the masked ping was valid (websockets checks masking); the
    connection then goes on as before."""
    server = WsServer()
    try:
        conn = dial(dialer, server.url())
        conn.ping(b"are you there")
        with pytest.raises(ValueError):
            conn.ping(b"x" * 126)
        conn.send("after the ping")
        assert dialer.handler.wait_messages(conn.id, 1) == ["after the ping"]
    finally:
        server.stop()


def test_refusals_are_reported_with_status_and_body_and_redirects_not_followed(
    dialer: ServerThread,
) -> None:
    def refuse(conn: Any, request: Any) -> Response:
        if request.path == "/moved":
            headers = Headers([("Location", "ws://elsewhere/"), ("Content-Length", "0")])
            return Response(302, "Found", headers, b"")
        body = b"no entry for you\n"
        return Response(403, "Forbidden", Headers([("Content-Length", str(len(body)))]), body)

    server = ws_server.serve(lambda ws: None, "127.0.0.1", 0, process_request=refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.socket.getsockname()[1]
    try:
        future = dialer.server.connect(f"ws://127.0.0.1:{port}/private?token=secret")
        with pytest.raises(pygev.WebSocketHandshakeError) as refused:
            future.result(WAIT)
        assert f"ws://127.0.0.1:{port}/private refused" in str(refused.value)
        assert "secret" not in str(refused.value), "the query stays out of messages"
        assert refused.value.status == 403
        assert refused.value.reason == "Forbidden"
        assert refused.value.body == b"no entry for you\n"
        assert ("content-length", "17") in refused.value.headers
        assert "403 Forbidden" in str(refused.value)

        future = dialer.server.connect(f"ws://127.0.0.1:{port}/moved")
        with pytest.raises(pygev.WebSocketHandshakeError) as moved:
            future.result(WAIT)
        assert moved.value.status == 302
        assert moved.value.location == "ws://elsewhere/"
        assert "not followed" in str(moved.value)
        assert dialer.handler.events == []  # no callbacks for either
    finally:
        server.shutdown()
        thread.join(WAIT)


# ---- pygev's own server ------------------------------------------------------------------


class Echo(pygev.WebSocketHandler):
    def on_handshake(self, conn: pygev.Connection, request: pygev.WebSocketRequest) -> Any:
        if request.path == "/private":
            return pygev.Reject(401, "Unauthorized")
        chosen = [p for p in request.subprotocols if p == "chat"]
        return pygev.Accept(subprotocol=chosen[0] if chosen else None)

    def on_message(self, conn: pygev.Connection, data: str | bytes) -> str | bytes:
        return data


@pytest.mark.parametrize("compression", [True, False])
def test_echo_with_pygevs_own_server(serve: Serve, dialer: ServerThread, compression: bool) -> None:
    server = serve(Echo(), protocol=pygev.WebSocket(compression=compression))
    url = f"ws://127.0.0.1:{server.port}/echo"
    conn = dial(dialer, url, subprotocols=["chat"], protocol=pygev.WebSocket())
    assert conn.subprotocol == "chat"
    messages: list[str | bytes] = ["x" * n for n in (0, 10, 1000)] + [b"\xff" * 100_000]
    for message in messages:
        conn.send(message)
    assert dialer.handler.wait_messages(conn.id, len(messages)) == messages
    with pytest.raises(pygev.WebSocketHandshakeError) as refused:
        dialer.server.connect(f"ws://127.0.0.1:{server.port}/private").result(WAIT)
    assert refused.value.status == 401


def test_wss_to_pygevs_own_server(serve: Serve, dialer: ServerThread, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile, ca_file = (str(tmp_path / n) for n in ("c.pem", "k.pem", "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(certfile)
    cert.private_key_pem.write_to_path(keyfile)
    ca.cert_pem.write_to_path(ca_file)
    server = serve(Echo(), tls=pygev.TLS(certfile, keyfile))
    url = f"wss://localhost:{server.port}/secure"
    conn = dial(dialer, url, tls=pygev.TLS(ca_file=ca_file))
    assert conn.tls is not None and conn.tls.server_name == "localhost"
    conn.send("over TLS")
    assert dialer.handler.wait_messages(conn.id, 1) == ["over TLS"]
    # The system's roots do not know this CA: the handshake fails, named.
    with pytest.raises(ConnectionAbortedError):
        dialer.server.connect(url).result(WAIT)
    with pytest.raises(ValueError, match="wss://"):
        dialer.server.connect(f"ws://localhost:{server.port}/", tls=True)


def test_a_thousand_concurrent_client_connections(serve: Serve) -> None:
    server = serve(Echo(), num_loops=2)
    client = Client()
    dialer = serve(client, None, num_loops=2)
    url = f"ws://127.0.0.1:{server.port}/many"
    futures = [dialer.server.connect(url) for _ in range(1000)]
    conns = [f.result(WAIT) for f in futures]
    for conn in conns:
        conn.send(f"hello {conn.id}")
    for conn in conns:
        assert client.wait_messages(conn.id, 1) == [f"hello {conn.id}"]
    assert server.stats()["connections"] == 1000
    for conn in conns:
        conn.close()
    wait_until(lambda: server.stats()["connections"] == 0, what="every connection closed")
    client.wait(lambda: sum(kind == "close" for kind, _, _ in client.events) == 1000, "closes")


def test_a_client_handler_may_await(serve: Serve) -> None:
    server = serve(Echo())
    got: list[str | bytes] = []

    class Awaiting(pygev.WebSocketHandler):
        async def on_message(self, conn: pygev.Connection, data: str | bytes) -> None:
            await asyncio.sleep(0.01)
            got.append(data)

    async def main() -> None:
        reactor = pygev.Server(Awaiting(), None)
        serving = asyncio.ensure_future(reactor.serve())
        url = f"ws://127.0.0.1:{server.port}/"
        conn = await asyncio.wrap_future(reactor.connect(url))
        for i in range(5):
            conn.send(f"m{i}")
        deadline = asyncio.get_running_loop().time() + WAIT
        while len(got) < 5 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        reactor.stop()
        await asyncio.wait_for(serving, WAIT)

    asyncio.run(main())
    assert got == [f"m{i}" for i in range(5)]


def test_a_connection_is_ready_when_its_future_resolves(serve: Serve) -> None:
    """A done-callback and a thread woken by result() may send at once: the connection is
    open before the future resolves, and on_connect comes after."""
    server = serve(Echo())
    client = Client()
    dialer = serve(client, None)
    sent: list[int] = []

    def send_at_once(future: Any) -> None:
        conn = future.result()
        conn.send("from the done-callback")
        sent.append(conn.id)

    for _ in range(20):
        future = dialer.server.connect(f"ws://127.0.0.1:{server.port}/")
        future.add_done_callback(send_at_once)
        conn = future.result(WAIT)
        conn.send("from the waiting thread")
    client.wait(lambda: len(sent) == 20, "every done-callback to send")
    for conn_id in sent:
        got = client.wait_messages(conn_id, 2)
        assert sorted(got) == ["from the done-callback", "from the waiting thread"]
        assert client.of(conn_id)[0] == ("connect", None)


def test_ipv6_and_header_mappings(serve: Serve, dialer: ServerThread) -> None:
    from conftest import ipv6_available

    if not ipv6_available():
        pytest.skip("no IPv6 loopback here")
    server = serve(Echo(), "[::1]:0")
    conn = dial(dialer, f"ws://[::1]:{server.port}/v6", headers={"X-Trace": "1"})
    conn.send("over IPv6")
    assert dialer.handler.wait_messages(conn.id, 1) == ["over IPv6"]
    assert conn.peer_addr[0] == "::1"
    assert conn.response_headers is not None


def test_tls_false_cannot_make_wss_plain(dialer: ServerThread) -> None:
    with pytest.raises(ValueError, match="contradicts"):
        dialer.server.connect("wss://127.0.0.1:1/", tls=False)
    dialer.server.connect("ws://127.0.0.1:1/", tls=False).cancel()  # plain, as asked


def test_a_stop_during_the_handshake_aborts_the_connect(serve: Serve) -> None:
    raw = RawServer()
    try:
        dialer = serve(Client(), None)
        future = dialer.server.connect(raw.url())
        sock, _ = raw.next()  # the request came; no answer
        dialer.stop()
        with pytest.raises(ConnectionAbortedError):
            future.result(WAIT)
        assert dialer.handler.events == []
        sock.close()
    finally:
        raw.close()


# ---- a raw server: what no server should do ----------------------------------------------


class RawServer:
    """Accepts connections; each accepted socket, with the upgrade request read, goes to
    `accepted` for the test to answer as it likes."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: queue.Queue[tuple[socket.socket, dict[str, str]]] = queue.Queue()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.settimeout(WAIT)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
            headers = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            self.accepted.put((sock, headers))

    def next(self) -> tuple[socket.socket, dict[str, str]]:
        return self.accepted.get(timeout=WAIT)

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def raw() -> Iterator[RawServer]:
    server = RawServer()
    yield server
    server.close()


def answer(sock: socket.socket, headers: dict[str, str], accept: bytes | None = None) -> None:
    accept = accept or accept_of(headers["sec-websocket-key"].encode())
    sock.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


def read_frame(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """One frame from the client: opcode, masking key (b"" when unmasked), unmasked payload."""
    first, second = recv_exactly(sock, 2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", recv_exactly(sock, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", recv_exactly(sock, 8))
    key = recv_exactly(sock, 4) if second & 0x80 else b""
    data = recv_exactly(sock, length) if length else b""
    if key:
        data = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    return first & 0x0F, key, data


def server_frame(opcode: int, payload: bytes, mask: bytes = b"") -> bytes:
    head = bytes([0x80 | opcode, (0x80 if mask else 0) | len(payload)])
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + payload


def test_the_request_is_valid_and_every_frame_masked_with_a_fresh_key(
    dialer: ServerThread, raw: RawServer
) -> None:
    future = dialer.server.connect(raw.url())
    sock, headers = raw.next()
    assert headers["upgrade"].lower() == "websocket"
    assert headers["sec-websocket-version"] == "13"
    keys = {headers["sec-websocket-key"]}
    answer(sock, headers)
    conn = future.result(WAIT)
    for i in range(20):
        conn.send(f"message {i}")
    conn.ping(b"p")
    frames = [read_frame(sock) for _ in range(21)]
    assert [(op, data) for op, _, data in frames[:20]] == [
        (TEXT, f"message {i}".encode()) for i in range(20)
    ]
    assert frames[20][0] == PING and frames[20][2] == b"p"
    masks = [key for _, key, _ in frames]
    assert all(len(key) == 4 for key in masks), "every frame is masked"
    assert len(set(masks)) >= 19, f"keys repeat: {masks}"
    # Another connection: another Sec-WebSocket-Key.
    dialer.server.connect(raw.url())
    second, headers = raw.next()
    keys.add(headers["sec-websocket-key"])
    assert len(keys) == 2
    second.close()
    sock.close()


def test_a_wrong_accept_key_is_refused(dialer: ServerThread, raw: RawServer) -> None:
    future = dialer.server.connect(raw.url())
    sock, headers = raw.next()
    answer(sock, headers, accept=b"dGhlIHNhbXBsZSBub25jZQ==")
    with pytest.raises(pygev.WebSocketHandshakeError, match="Sec-WebSocket-Accept") as failed:
        future.result(WAIT)
    assert failed.value.status is None
    assert sock.recv(100) == b""  # closed in order
    assert dialer.handler.events == []
    sock.close()


def test_an_unoffered_extension_or_subprotocol_is_refused(
    dialer: ServerThread, raw: RawServer
) -> None:
    for extra in [b"Sec-WebSocket-Extensions: x-custom\r\n", b"Sec-WebSocket-Protocol: v9\r\n"]:
        future = dialer.server.connect(raw.url(), subprotocols=["v1"])
        sock, headers = raw.next()
        accept = accept_of(headers["sec-websocket-key"].encode())
        sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n" + extra + b"\r\n"
        )
        with pytest.raises(pygev.WebSocketHandshakeError):
            future.result(WAIT)
        sock.close()


def test_a_connect_cancelled_during_the_handshake_gets_no_callbacks(
    dialer: ServerThread, raw: RawServer
) -> None:
    future = dialer.server.connect(raw.url())
    sock, headers = raw.next()
    assert future.cancel(), "still pending while the server has not answered"
    answer(sock, headers)
    sock.settimeout(WAIT)
    assert sock.recv(100) == b"", "the client closed the connection"
    # A later dial works: nothing was left half-done.
    later = dialer.server.connect(raw.url())
    second, headers = raw.next()
    answer(second, headers)
    conn = later.result(WAIT)
    dialer.handler.wait(lambda: dialer.handler.of(conn.id), "on_connect")
    assert [i for _, i, _ in dialer.handler.events] == [conn.id]
    sock.close()
    second.close()


def test_a_connect_cancelled_while_the_server_is_silent_closes_at_once(
    dialer: ServerThread, raw: RawServer
) -> None:
    ws = pygev.WebSocket(handshake_timeout=600)
    future = dialer.server.connect(raw.url(), protocol=ws)
    sock, _ = raw.next()  # the request came; no answer
    wait_until(lambda: dialer.stats()["connections"] == 1, what="the connection to be known")
    assert future.cancel()
    sock.settimeout(WAIT)  # long before the 600 s handshake timeout
    assert sock.recv(100) == b"", "the client closed the connection"
    wait_until(lambda: dialer.stats()["connections"] == 0, what="the connection to close")
    assert dialer.handler.events == []
    sock.close()


def test_a_server_that_never_answers_is_timed_out(dialer: ServerThread, raw: RawServer) -> None:
    ws = pygev.WebSocket(handshake_timeout=0.5)
    future = dialer.server.connect(raw.url(), protocol=ws)
    sock, _ = raw.next()
    with pytest.raises(TimeoutError, match="did not answer the WebSocket handshake"):
        future.result(WAIT)
    assert sock.recv(100) == b""
    assert dialer.handler.events == []
    sock.close()


def test_a_server_that_closes_during_the_handshake_fails_the_future(
    dialer: ServerThread, raw: RawServer
) -> None:
    future = dialer.server.connect(raw.url())
    sock, _ = raw.next()
    sock.sendall(b"HTTP/1.1 101 Switching")  # half a head, then gone
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    with pytest.raises(ConnectionError):
        future.result(WAIT)
    assert dialer.handler.events == []


def test_unmasked_frames_are_delivered_and_a_masked_one_fails_with_1002(
    dialer: ServerThread, raw: RawServer
) -> None:
    future = dialer.server.connect(raw.url())
    sock, headers = raw.next()
    answer(sock, headers)
    conn = future.result(WAIT)
    sock.sendall(server_frame(TEXT, b"plain") + server_frame(BINARY, b"\x01\x02"))
    assert dialer.handler.wait_messages(conn.id, 2) == ["plain", b"\x01\x02"]
    sock.sendall(server_frame(TEXT, b"masked", mask=b"\x01\x02\x03\x04"))
    opcode, key, payload = read_frame(sock)
    assert opcode == CLOSE and key, "the client's close frame, masked"
    assert struct.unpack("!H", payload[:2])[0] == 1002
    sock.sendall(server_frame(CLOSE, payload[:2]))
    dialer.handler.wait_closed(conn.id)
    assert dialer.handler.messages(conn.id) == ["plain", b"\x01\x02"]
    sock.close()


def test_the_server_vanishing_closes_the_connection(dialer: ServerThread, raw: RawServer) -> None:
    future = dialer.server.connect(raw.url())
    sock, headers = raw.next()
    answer(sock, headers)
    conn = future.result(WAIT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset
    dialer.handler.wait_closed(conn.id)
    assert [kind for kind, _ in dialer.handler.of(conn.id)] == ["connect", "close"]
    assert not conn.connected


def test_keepalive_pings_a_silent_server_then_gives_up_with_1011(
    dialer: ServerThread, raw: RawServer
) -> None:
    ws = pygev.WebSocket(ping_interval=0.3, ping_timeout=0.3)
    future = dialer.server.connect(raw.url(), protocol=ws)
    sock, headers = raw.next()
    answer(sock, headers)
    conn = future.result(WAIT)
    opcode, key, payload = read_frame(sock)
    assert (opcode, payload) == (PING, b"keepalive") and key
    opcode, key, payload = read_frame(sock)  # no pong: the client gives up
    assert opcode == CLOSE and key
    assert struct.unpack("!H", payload[:2])[0] == 1011
    dialer.handler.wait_closed(conn.id)
    sock.close()


# ---- arguments ---------------------------------------------------------------------------


def test_bad_websocket_connect_arguments_are_refused_at_the_call(dialer: ServerThread) -> None:
    connect = dialer.server.connect
    for bad in ["ws://", "ws://host:99999/", "ws://user:pw@host/", "ws://h/#f", "ws://::1/"]:
        with pytest.raises(ValueError, match="URL"):
            connect(bad)
    for name in ["Sec-WebSocket-Key", "Host", "Content-Length", "Transfer-Encoding"]:
        with pytest.raises(ValueError, match="cannot be set"):
            connect("ws://127.0.0.1:1/", headers=[(name, "x")])
    with pytest.raises(TypeError, match="headers must be"):
        connect("ws://127.0.0.1:1/", headers=[("only a name",)])
    with pytest.raises(ValueError, match="control characters"):
        connect("ws://127.0.0.1:1/", headers=[("X-A", "a\r\nInjected: 1")])
    with pytest.raises(ValueError, match="not a valid token"):
        connect("ws://127.0.0.1:1/", subprotocols=["a b"])
    with pytest.raises(ValueError, match="ws:// and wss:// URLs"):
        connect("127.0.0.1:1", subprotocols=["chat"])
    with pytest.raises(TypeError, match="WebSocketHandler"):
        connect("ws://127.0.0.1:1/", handler=pygev.Handler())
    with pytest.raises(TypeError, match=r"pygev\.WebSocket"):
        connect("ws://127.0.0.1:1/", protocol=pygev.LengthPrefix())

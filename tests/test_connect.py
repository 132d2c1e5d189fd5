"""Outgoing connections: ``server.connect()`` dials from the server's loops; once connected
a connection behaves as an accepted one (callbacks, protocols, limits, stats, stop)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import WAIT, Echo, ServerThread, free_port, ipv6_available, recv_exactly, wait_until

import pygev

Serve = Callable[..., ServerThread]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Client(pygev.Handler):
    """Sends ``payload`` on connect and records what comes back, per connection."""

    def __init__(self, payload: bytes = b"ping") -> None:
        self.payload = payload
        self.got: dict[int, bytes] = {}
        self.events: Counter[tuple[int, str]] = Counter()
        self.lock = threading.Lock()

    def on_connect(self, conn: pygev.Connection) -> None:
        with self.lock:
            self.events[(conn.id, "connect")] += 1
            self.got[conn.id] = b""
        conn.send(self.payload)

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
        with self.lock:
            self.got[conn.id] += data

    def on_close(self, conn: pygev.Connection) -> None:
        with self.lock:
            self.events[(conn.id, "close")] += 1

    def complete(self) -> int:
        with self.lock:
            return sum(1 for v in self.got.values() if v == self.payload)


def test_1000_outgoing_connections_echo_and_close_once_each(serve: Serve) -> None:
    target = serve(Echo(), num_loops=2)
    client = Client()
    dialer = serve(client, None, num_loops=2)
    assert dialer.server.address is None
    futures = [dialer.server.connect(("127.0.0.1", target.port)) for _ in range(1000)]
    conns = [f.result(WAIT) for f in futures]
    assert len({c.id for c in conns}) == 1000
    wait_until(lambda: client.complete() == 1000, what="1,000 echoes")
    stats = dialer.stats()
    assert stats["dialed"] == 1000 and stats["connections"] == 1000
    assert stats["accepted"] == 0 and stats["connect_failed"] == 0
    assert all(c.peer_addr == ("127.0.0.1", target.port) for c in conns)
    dialer.stop()
    assert all(client.events[(c.id, "connect")] == 1 for c in conns)
    assert all(client.events[(c.id, "close")] == 1 for c in conns), "on_close exactly once"


def test_echo_through_outgoing_connections_to_an_asyncio_server(serve: Serve) -> None:
    ready = threading.Event()
    port: list[int] = []
    loop = asyncio.new_event_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main() -> asyncio.Server:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        return server

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(main(), loop).result(WAIT)
    assert ready.wait(WAIT)
    try:
        payload = os.urandom(100_000)
        client = Client(payload)
        dialer = serve(client, None)
        conns = [dialer.server.connect(f"127.0.0.1:{port[0]}").result(WAIT) for _ in range(50)]
        wait_until(lambda: client.complete() == 50, what="50 echoes of 100 kB")
        assert len(conns) == 50
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)


def test_a_refused_connect_fails_its_future_and_leaks_nothing(serve: Serve) -> None:
    client = Client()
    dialer = serve(client, None)
    port = free_port()  # nothing listens there now
    before = open_fds()
    for _ in range(20):
        with pytest.raises(ConnectionRefusedError, match=f"127.0.0.1:{port}"):
            dialer.server.connect(("127.0.0.1", port)).result(WAIT)
    assert open_fds() == before, "a failed connect left a descriptor open"
    assert dialer.stats()["connect_failed"] == 20
    assert not client.events, "no callback for a connection that never was"


@pytest.fixture
def full_listener() -> Any:
    """A listener whose accept queue is full: further SYNs are dropped, so a connect to it
    neither succeeds nor is refused."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # room for one connection in the accept queue
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(1):
        s = socket.socket()
        s.settimeout(WAIT)
        s.connect(("127.0.0.1", port))
        fillers.append(s)
    yield port
    for s in fillers:
        s.close()
    listener.close()


def test_a_connect_that_gets_no_answer_times_out(serve: Serve, full_listener: int) -> None:
    dialer = serve(Client(), None)
    before = open_fds()
    future = dialer.server.connect(("127.0.0.1", full_listener), timeout=0.3)
    with pytest.raises(TimeoutError, match="timed out"):
        future.result(WAIT)
    assert open_fds() == before


def test_stop_fails_the_connects_still_pending(serve: Serve, full_listener: int) -> None:
    dialer = serve(Client(), None)
    futures = [dialer.server.connect(("127.0.0.1", full_listener), timeout=60) for _ in range(5)]
    dialer.stop()
    for future in futures:
        with pytest.raises(ConnectionAbortedError):
            future.result(WAIT)
    with pytest.raises(RuntimeError, match="stopped"):
        dialer.server.connect(("127.0.0.1", full_listener))


def test_connects_made_before_a_stop_before_start_fail(serve: Serve) -> None:
    target = serve(Echo())
    server = pygev.Server(Client(), None)
    future = server.connect(("127.0.0.1", target.port))
    server.stop()
    with pytest.raises(ConnectionAbortedError, match="before it started"):
        future.result(WAIT)


def test_connects_made_before_start_go_out_when_it_starts(serve: Serve) -> None:
    target = serve(Echo())
    client = Client()
    server = pygev.Server(client, None)
    futures = [server.connect(("127.0.0.1", target.port)) for _ in range(3)]
    assert not any(f.done() for f in futures)
    thread = threading.Thread(target=server.start)
    thread.start()
    try:
        conns = [f.result(WAIT) for f in futures]
        wait_until(lambda: client.complete() == 3, what="3 echoes")
        assert len(conns) == 3
    finally:
        server.stop()
        thread.join(WAIT)
    assert not thread.is_alive()


def test_a_connection_may_have_its_own_handler_and_dial_from_a_callback(serve: Serve) -> None:
    """A relay: each client message makes the server dial the echo server with a handler
    of its own, which hands the answer back to the client."""
    target = serve(Echo())

    class Upstream(pygev.Handler):
        def __init__(self, downstream: pygev.Connection) -> None:
            self.downstream = downstream

        def on_connect(self, conn: pygev.Connection) -> None:
            conn.send(b"via upstream")

        def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
            self.downstream.send(data)
            conn.close()

    class Relay(pygev.Handler):
        def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
            self_server.connect(("127.0.0.1", target.port), Upstream(conn))

    relay = serve(Relay())
    self_server = relay.server
    with relay.connect() as sock:
        sock.sendall(b"go")
        assert recv_exactly(sock, 12) == b"via upstream"


def test_a_cancelled_connect_gets_no_callbacks(serve: Serve) -> None:
    target = serve(Echo())
    client = Client()
    dialer = serve(client, None)
    futures = [dialer.server.connect(("127.0.0.1", target.port)) for _ in range(20)]
    cancelled = [f for i, f in enumerate(futures) if i % 2 == 0 and f.cancel()]
    assert cancelled, "some were still pending"
    for f in futures:
        if f not in cancelled:
            f.result(WAIT)
    wait_until(
        lambda: dialer.stats()["closed"] >= len(cancelled), what="the cancelled ones to close"
    )
    connected = [f.result() for f in futures if f not in cancelled]
    assert sorted(k[0] for k in client.events if k[1] == "connect") == sorted(
        c.id for c in connected
    ), "on_connect for exactly the connections not cancelled"
    dialer.stop()
    closes = sorted(k[0] for k, n in client.events.items() if k[1] == "close" for _ in range(n))
    assert closes == sorted(c.id for c in connected), "on_close once each, none for cancelled"


def test_outgoing_connections_frame_with_the_servers_protocol(serve: Serve) -> None:
    target = serve(Echo(), protocol=pygev.LengthPrefix())
    got: list[bytes] = []
    done = threading.Event()

    class Framed(pygev.Handler):
        def on_connect(self, conn: pygev.Connection) -> None:
            conn.send(b"first")
            conn.send(b"")
            conn.send(b"third")

        def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
            got.append(data)
            if len(got) == 3:
                done.set()

    dialer = serve(Framed(), None, protocol=pygev.LengthPrefix())
    dialer.server.connect(("127.0.0.1", target.port)).result(WAIT)
    assert done.wait(WAIT)
    assert got == [b"first", b"", b"third"]


def test_idle_timeout_closes_an_outgoing_connection_too(serve: Serve) -> None:
    class Silent(pygev.Handler):
        def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
            return None

    target = serve(Silent())
    closed = threading.Event()

    class Waiter(pygev.Handler):
        def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
            return None

        def on_close(self, conn: pygev.Connection) -> None:
            closed.set()

    dialer = serve(Waiter(), None, idle_timeout=0.3)
    dialer.server.connect(("127.0.0.1", target.port)).result(WAIT)
    assert closed.wait(WAIT), "the idle outgoing connection was not closed"


def test_outgoing_unix_connections(serve: Serve, tmp_path: Path) -> None:
    address = f"unix:{tmp_path / 'target.sock'}"
    serve(Echo(), address)
    client = Client(b"over unix")
    dialer = serve(client, None)
    conn = dialer.server.connect(address).result(WAIT)
    assert conn.peer_addr == address
    assert conn.peer_credentials == (os.getpid(), os.getuid(), os.getgid())
    wait_until(lambda: client.complete() == 1, what="the echo")
    with pytest.raises(FileNotFoundError):
        dialer.server.connect(f"unix:{tmp_path / 'nobody.sock'}").result(WAIT)


class TwoByteLength(pygev.Protocol):
    """A 2-byte big-endian length in front of each payload, framed in Python."""

    def unpacket(
        self, conn: pygev.Connection, buffer: pygev.RingBuffer
    ) -> tuple[object, bytes] | None:
        if buffer.virtual_length() < 2:
            return None
        length = int.from_bytes(buffer.virtual_read(2), "big")
        if buffer.virtual_length() < length:
            buffer.virtual_revert()
            return None
        payload = buffer.virtual_read(length)
        buffer.virtual_flush()
        return "python", payload

    def packet(self, conn: pygev.Connection, data: bytes) -> bytes:
        return len(data).to_bytes(2, "big") + data


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(lambda: pygev.LengthPrefix(header_size=2), id="native"),
        pytest.param(TwoByteLength, id="python"),
        pytest.param(lambda: pygev._pygev._length_prefix_plugin(2), id="plugin"),
    ],
)
def test_a_connection_may_be_dialed_with_a_protocol_of_its_own(
    serve: Serve, framing: Callable[[], Any]
) -> None:
    """A raw dialer's connection framed with its own protocol: each send goes out as one
    frame, and each frame comes back as one message, while the server's other connections
    stay raw."""
    target = serve(Echo(), protocol=pygev.LengthPrefix(header_size=2))
    raw_target = serve(Echo())
    got: dict[int, list[bytes]] = {}
    lock = threading.Lock()

    class Framed(pygev.Handler):
        def on_connect(self, conn: pygev.Connection) -> None:
            with lock:
                got[conn.id] = []
            for payload in (b"first", b"", b"x" * 3000):
                conn.send(payload)

        def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
            with lock:
                got[conn.id].append(data)

    dialer = serve(Framed(), None)
    framed = [
        dialer.server.connect(("127.0.0.1", target.port), protocol=framing()) for _ in range(20)
    ]
    raw = dialer.server.connect(("127.0.0.1", raw_target.port)).result(WAIT)
    ids = [f.result(WAIT).id for f in framed]

    def framed_done() -> bool:
        with lock:
            return all(len(got[i]) == 3 for i in ids)

    wait_until(framed_done, what="three framed echoes on each connection")
    for i in ids:
        assert got[i] == [b"first", b"", b"x" * 3000]
    # The raw connection sees bytes as they come: its three sends, unframed.
    wait_until(lambda: sum(len(d) for d in got[raw.id]) == 3005, what="the raw echo")
    assert b"".join(got[raw.id]) == b"first" + b"x" * 3000


def test_a_websocket_connection_is_dialed_with_a_url_only(serve: Serve) -> None:
    class Ws(pygev.WebSocketHandler):
        def on_message(self, conn: pygev.Connection, data: str | bytes) -> None:
            return None

    dialer = serve(Client(), None)
    with pytest.raises(ValueError, match="ws:// or wss:// URL"):
        dialer.server.connect("127.0.0.1:1", Ws(), pygev.WebSocket())
    with pytest.raises(TypeError, match="WebSocketHandler"):
        dialer.server.connect("127.0.0.1:1", protocol=pygev.WebSocket())
    with pytest.raises(TypeError, match="protocol must be"):
        dialer.server.connect("127.0.0.1:1", protocol=object())


def test_bad_connect_arguments_are_refused_at_the_call(serve: Serve) -> None:
    dialer = serve(Client(), None)
    with pytest.raises(TypeError):
        dialer.server.connect(1234)
    with pytest.raises(ValueError):
        dialer.server.connect("no-port")
    with pytest.raises(ValueError, match="timeout"):
        dialer.server.connect("127.0.0.1:1", timeout=0)
    with pytest.raises(TypeError, match="callable on_connect"):
        dialer.server.connect("127.0.0.1:1", object())

    class Ws(pygev.WebSocketHandler):
        def on_message(self, conn: pygev.Connection, data: str | bytes) -> None:
            return None

    ws = pygev.Server(Ws(), "127.0.0.1:0")
    with pytest.raises(ValueError, match="WebSocket"):
        ws.connect("127.0.0.1:1")
    ws.stop()
    pygev.Server(Ws(), None).stop()  # a WebSocket client reactor: it dials ws:// URLs
    with pytest.raises(ValueError, match="unix_mode"):
        pygev.Server(Client(), "127.0.0.1:0", unix_mode=0o600)


def test_a_future_is_a_concurrent_futures_future(serve: Serve) -> None:
    target = serve(Echo())
    dialer = serve(Client(), None)
    future = dialer.server.connect(("127.0.0.1", target.port))
    assert isinstance(future, concurrent.futures.Future)

    async def wait() -> pygev.Connection:
        return await asyncio.wait_for(asyncio.wrap_future(future), WAIT)

    conn = asyncio.run(wait())
    assert isinstance(conn, pygev.Connection) and conn.connected


def test_a_host_name_is_tried_at_each_of_its_addresses(serve: Serve) -> None:
    """A server listening on any one of "localhost"'s addresses is reached by name, whichever
    the resolver gives first (here: the ones this machine's resolver returns)."""
    resolved = {info[4][0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    for host in sorted(resolved):
        if ":" in host and not ipv6_available():
            continue
        target = serve(Echo(), (host, 0))
        client = Client(b"by name")
        dialer = serve(client, None)
        conn = dialer.server.connect(f"localhost:{target.port}").result(WAIT)
        assert conn.peer_addr == (host, target.port)
        wait_until(lambda c=client: c.complete() == 1, what="the echo")

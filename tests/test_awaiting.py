"""``async def`` callbacks under ``await server.serve()``: per-connection order, replies
sent when the coroutine returns, ``on_close`` after pending callbacks, failures that close
one connection, the stop waiting for (then cancelling) callbacks, and no task for a
coroutine that never waits."""

from __future__ import annotations

import asyncio
import contextvars
import random
import socket
import struct
import threading
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop
import websockets
from conftest import WAIT, LineFraming, LogCapture, recv_exactly

import pygev

pytestmark = pytest.mark.timeout(90)

LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(uvloop.new_event_loop, id="uvloop"),
]

NewLoop = Callable[[], asyncio.AbstractEventLoop]


def run(new_loop: NewLoop, main: Awaitable[Any]) -> Any:
    loop = new_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(main, WAIT * 3))
    finally:
        loop.close()


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(size)


async def until_logged(log: list[str], entry: str) -> None:
    while entry not in log:
        await asyncio.sleep(0.01)


class Ordered(pygev.Handler):
    """Awaits a random while (or not at all) per message; records overlaps."""

    def __init__(self) -> None:
        self.running: dict[int, int] = defaultdict(int)
        self.overlaps = 0
        self.events: dict[int, list[str]] = defaultdict(list)
        self.rng = random.Random(7)

    async def on_connect(self, conn: pygev.Connection) -> None:
        self.events[conn.id].append("connect")
        await asyncio.sleep(0.01)
        self.events[conn.id].append("connected")

    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        self.running[conn.id] += 1
        self.overlaps += self.running[conn.id] > 1
        self.events[conn.id].append("message")
        if self.rng.random() < 0.5:
            await asyncio.sleep(self.rng.random() * 0.005)
        self.running[conn.id] -= 1
        return b"re:" + data

    async def on_close(self, conn: pygev.Connection) -> None:
        self.overlaps += self.running[conn.id] > 0
        await asyncio.sleep(0)
        self.events[conn.id].append("close")


@pytest.mark.parametrize("new_loop", LOOPS)
def test_per_connection_order_holds_while_callbacks_await(new_loop: NewLoop) -> None:
    handler = Ordered()

    async def client(host: str, port: int, n: int) -> list[bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        # Pipelined: many messages arrive in one read, behind one that awaits.
        writer.write(b"".join(framed(b"%d:%d" % (n, i)) for i in range(40)))
        replies = [await read_frame(reader) for _ in range(40)]
        writer.close()
        await writer.wait_closed()
        return replies

    async def main() -> None:
        server = pygev.Server(handler, "127.0.0.1:0", protocol=pygev.LengthPrefix(), num_loops=2)
        serving = asyncio.create_task(server.serve())
        got = await asyncio.gather(*(client(*server.address, n) for n in range(30)))
        for n, replies in enumerate(got):
            assert replies == [b"re:%d:%d" % (n, i) for i in range(40)]
        server.stop()
        await serving

    run(new_loop, main())
    assert handler.overlaps == 0
    assert len(handler.events) == 30
    for events in handler.events.values():
        assert events == ["connect", "connected"] + ["message"] * 40 + ["close"]


class Slow(pygev.Handler):
    def __init__(self) -> None:
        self.log: list[str] = []

    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        self.log.append("start " + data.decode())
        await asyncio.sleep(0.1)
        self.log.append("end " + data.decode())
        return data.upper()

    def on_close(self, conn: pygev.Connection) -> None:
        self.log.append("close")


@pytest.mark.parametrize("new_loop", LOOPS)
def test_reply_when_the_coroutine_returns_and_on_close_after_it(new_loop: NewLoop) -> None:
    handler = Slow()

    async def main() -> None:
        server = pygev.Server(handler, "127.0.0.1:0", protocol=pygev.LengthPrefix())
        serving = asyncio.create_task(server.serve())
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(framed(b"one") + framed(b"two"))
        writer.write_eof()  # the EOF arrives while "one" awaits
        assert await read_frame(reader) == b"ONE"
        assert await read_frame(reader) == b"TWO"
        assert await reader.read() == b""  # closed after the replies
        writer.close()
        await until_logged(handler.log, "close")
        server.stop()
        await serving

    run(new_loop, main())
    assert handler.log == ["start one", "end one", "start two", "end two", "close"]


class Failing(pygev.Handler):
    def __init__(self) -> None:
        self.closed: list[int] = []

    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        await asyncio.sleep(0.01)
        if data == b"boom":
            raise ValueError("boom in a coroutine")
        return data

    def on_close(self, conn: pygev.Connection) -> None:
        self.closed.append(conn.id)


@pytest.mark.parametrize("new_loop", LOOPS)
def test_an_exception_after_awaiting_closes_only_that_connection(
    new_loop: NewLoop, pygev_log: LogCapture
) -> None:
    handler = Failing()

    async def main() -> None:
        server = pygev.Server(handler, "127.0.0.1:0", protocol=pygev.LengthPrefix())
        serving = asyncio.create_task(server.serve())
        bad_reader, bad_writer = await asyncio.open_connection(*server.address)
        good_reader, good_writer = await asyncio.open_connection(*server.address)
        bad_writer.write(framed(b"boom") + framed(b"after"))
        assert await bad_reader.read() == b"", "the failing connection is closed, no reply"
        for i in range(5):
            good_writer.write(framed(b"ok%d" % i))
            assert await read_frame(good_reader) == b"ok%d" % i
        good_writer.close()
        bad_writer.close()
        server.stop()
        await serving

    run(new_loop, main())
    record = pygev_log.wait_for("on_message raised")
    assert record.exc_info is not None and "boom in a coroutine" in str(record.exc_info[1])
    assert len(handler.closed) == 2


class NoWait(pygev.Handler):
    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes | None:
        if data == b"wait":
            await asyncio.sleep(0)
        return data


@pytest.mark.parametrize("new_loop", LOOPS)
def test_a_coroutine_that_never_waits_makes_no_task(new_loop: NewLoop) -> None:
    made: list[object] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            made.append(coro)
            return asyncio.Task(coro, loop=loop, **kwargs)

        server = pygev.Server(NoWait(), "127.0.0.1:0", protocol=pygev.LengthPrefix())
        serving = asyncio.create_task(server.serve())
        reader, writer = await asyncio.open_connection(*server.address)
        await asyncio.sleep(0.05)
        loop.set_task_factory(factory)
        for i in range(200):
            writer.write(framed(b"m%d" % i))
        for i in range(200):
            assert await read_frame(reader) == b"m%d" % i
        assert made == [], "no task for coroutines that finished in their first step"
        for _ in range(3):
            writer.write(framed(b"wait"))
            assert await read_frame(reader) == b"wait"
        assert len(made) == 3, "one task per coroutine that waited"
        loop.set_task_factory(None)
        writer.close()
        server.stop()
        await serving

    run(new_loop, main())


class Timeouts(pygev.Handler):
    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        try:
            async with asyncio.timeout(0.05):  # entered in the first step
                await asyncio.sleep(WAIT)
        except TimeoutError:
            assert asyncio.current_task() is not None
            return b"timed out"
        return b"not timed out"


@pytest.mark.parametrize("new_loop", LOOPS)
def test_asyncio_timeout_works_from_the_first_line(new_loop: NewLoop) -> None:
    async def main() -> None:
        server = pygev.Server(Timeouts(), "127.0.0.1:0", protocol=pygev.LengthPrefix())
        serving = asyncio.create_task(server.serve())
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(framed(b"x"))
        assert await read_frame(reader) == b"timed out"
        writer.close()
        server.stop()
        await serving

    run(new_loop, main())


class Barrier(pygev.Handler):
    """Every connection waits until all have started waiting: one waiting connection that
    delayed another would never let the barrier open."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.waiting = 0
        self.all_waiting = asyncio.Event()

    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        self.waiting += 1
        if self.waiting == self.count:
            self.all_waiting.set()
        await self.all_waiting.wait()
        await asyncio.sleep(0.5)
        return data


@pytest.mark.parametrize("new_loop", LOOPS)
def test_a_thousand_connections_await_at_once(new_loop: NewLoop) -> None:
    count = 1000

    async def client(host: str, port: int, n: int) -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(framed(b"%d" % n))
        reply = await read_frame(reader)
        writer.close()
        return reply

    async def main() -> None:
        handler = Barrier(count)
        server = pygev.Server(handler, "127.0.0.1:0", protocol=pygev.LengthPrefix(), num_loops=2)
        serving = asyncio.create_task(server.serve())
        replies = await asyncio.gather(*(client(*server.address, n) for n in range(count)))
        assert replies == [b"%d" % n for n in range(count)]
        assert handler.waiting == count
        server.stop()
        await serving

    run(new_loop, main())


class Busy(pygev.Handler):
    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        await asyncio.sleep(0)
        return data


@pytest.mark.parametrize("new_loop", LOOPS)
def test_a_flood_behind_awaiting_callbacks_is_held_in_order(new_loop: NewLoop) -> None:
    """Far more than the connection's dispatch limit waits behind callbacks that await:
    the loop stops reading it, reads again as the held work runs, and a bystander is
    answered meanwhile."""
    messages = [b"%06d" % i + b"." * 200 for i in range(8000)]  # 1.7 MB: over 256 KiB

    async def main() -> None:
        server = pygev.Server(Busy(), "127.0.0.1:0", protocol=pygev.LengthPrefix())
        serving = asyncio.create_task(server.serve())
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"".join(framed(m) for m in messages))
        side_reader, side_writer = await asyncio.open_connection(*server.address)
        side_writer.write(framed(b"bystander"))
        assert await read_frame(side_reader) == b"bystander"
        for expected in messages:
            assert await read_frame(reader) == expected
        assert server.stats()["input_pauses"] > 0, "the loop stopped reading it"
        writer.close()
        side_writer.close()
        server.stop()
        await serving

    run(new_loop, main())


class Stuck(pygev.Handler):
    def __init__(self, stubborn: bool) -> None:
        self.stubborn = stubborn
        self.cancelled = 0
        self.closed = 0

    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        if data == b"quick":
            await asyncio.sleep(0.2)  # ends within drain_timeout: its reply goes out
            return b"done"
        try:
            await asyncio.sleep(WAIT * 10)
        except asyncio.CancelledError:
            self.cancelled += 1
            if not self.stubborn:
                raise
            await asyncio.sleep(WAIT * 10)  # ignores the cancellation
        return b"never"

    def on_close(self, conn: pygev.Connection) -> None:
        self.closed += 1


@pytest.mark.parametrize("new_loop", LOOPS)
@pytest.mark.parametrize("stubborn", [False, True], ids=["cancelled", "ignores-cancel"])
def test_stop_waits_for_callbacks_then_cancels_them(
    new_loop: NewLoop, stubborn: bool, pygev_log: LogCapture
) -> None:
    handler = Stuck(stubborn)

    async def main() -> None:
        server = pygev.Server(
            handler, "127.0.0.1:0", protocol=pygev.LengthPrefix(), drain_timeout=0.5
        )
        serving = asyncio.create_task(server.serve())
        quick_reader, quick_writer = await asyncio.open_connection(*server.address)
        stuck_reader, stuck_writer = await asyncio.open_connection(*server.address)
        stuck_writer.write(framed(b"stuck"))
        quick_writer.write(framed(b"quick"))
        await asyncio.sleep(0.05)
        server.stop()
        assert await read_frame(quick_reader) == b"done"
        await serving
        assert await stuck_reader.read() == b""
        quick_writer.close()
        stuck_writer.close()

    run(new_loop, main())
    assert handler.cancelled == 1
    assert handler.closed == 2
    pygev_log.wait_for("cancelling them")
    if stubborn:
        pygev_log.wait_for("did not end within")


class Handshaking(pygev.WebSocketHandler):
    def __init__(self) -> None:
        self.log: list[str] = []

    async def on_handshake(
        self, conn: pygev.Connection, request: pygev.WebSocketRequest
    ) -> pygev.Accept | pygev.Reject:
        await asyncio.sleep(0.01)
        if request.path == "/no":
            return pygev.Reject(403, "Forbidden")
        return pygev.Accept(subprotocol="chat")

    async def on_connect(self, conn: pygev.Connection) -> None:
        await asyncio.sleep(0.05)
        self.log.append("connected")

    async def on_message(self, conn: pygev.Connection, data: str | bytes) -> str | bytes:
        self.log.append(f"message {data!r}")
        await asyncio.sleep(0.001)
        return data

    async def on_close(self, conn: pygev.Connection) -> None:
        self.log.append("close")


@pytest.mark.parametrize("new_loop", LOOPS)
def test_websocket_callbacks_and_on_handshake_may_await(new_loop: NewLoop) -> None:
    handler = Handshaking()

    async def main() -> None:
        server = pygev.Server(handler, "127.0.0.1:0")
        serving = asyncio.create_task(server.serve())
        host, port = server.address
        async with websockets.connect(f"ws://{host}:{port}/", subprotocols=["chat"]) as ws:
            assert ws.subprotocol == "chat"
            await ws.send("hello")  # arrives while on_connect awaits
            await ws.send(b"\x00bin")
            assert await ws.recv() == "hello"
            assert await ws.recv() == b"\x00bin"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"ws://{host}:{port}/no"):
                pass
        assert refused.value.response.status_code == 403
        await until_logged(handler.log, "close")
        server.stop()
        await serving

    run(new_loop, main())
    assert handler.log == ["connected", "message 'hello'", "message b'\\x00bin'", "close"]


class Lines(pygev.Handler):
    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        if int(data) % 2:
            await asyncio.sleep(0.001)
        return b"<" + data + b">"


@pytest.mark.parametrize("new_loop", LOOPS)
def test_a_python_framing_keeps_order_behind_awaiting_callbacks(new_loop: NewLoop) -> None:
    async def main() -> None:
        server = pygev.Server(Lines(), "127.0.0.1:0", protocol=LineFraming())
        serving = asyncio.create_task(server.serve())
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"".join(b"%d\n" % i for i in range(300)))
        for i in range(300):
            assert await reader.readline() == b"<%d>\n" % i
        writer.close()
        server.stop()
        await serving

    run(new_loop, main())


@pytest.mark.parametrize("new_loop", LOOPS)
def test_timer_callbacks_may_await(new_loop: NewLoop, pygev_log: LogCapture) -> None:
    ticks: list[str] = []

    async def main() -> None:
        server = pygev.Server(pygev.Handler(), "127.0.0.1:0")
        serving = asyncio.create_task(server.serve())
        done = asyncio.Event()

        async def tick() -> None:
            ticks.append("start")
            await asyncio.sleep(0.01)
            ticks.append("end")
            done.set()

        async def fail() -> None:
            await asyncio.sleep(0)
            raise RuntimeError("timer coroutine failed")

        server.run_after(0.01, tick)
        server.run_after(0.01, fail)
        await done.wait()
        pygev_log.wait_for("timer callback raised")
        server.stop()
        await serving

    run(new_loop, main())
    assert ticks == ["start", "end"]


class AsyncEcho(pygev.Handler):
    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        await asyncio.sleep(0)
        return data


def test_start_serves_an_async_handler_in_a_loop_of_its_own() -> None:
    server = pygev.Server(AsyncEcho(), "127.0.0.1:0", protocol=pygev.LengthPrefix())
    thread = threading.Thread(target=server.start)
    thread.start()
    try:
        with socket.create_connection(server.address, timeout=WAIT) as sock:
            sock.sendall(framed(b"abc") + framed(b"def"))
            assert recv_exactly(sock, 14) == framed(b"abc") + framed(b"def")
    finally:
        server.stop()
        thread.join(WAIT)
    assert not thread.is_alive()


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class Contexts(pygev.Handler):
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        self.seen.append(REQUEST_ID.get())  # never a value another callback set
        token = REQUEST_ID.set(data.decode())
        if data.endswith(b"wait"):
            await asyncio.sleep(0.01)
        assert REQUEST_ID.get() == data.decode()
        REQUEST_ID.reset(token)  # the same context after an await
        return data


@pytest.mark.parametrize("new_loop", LOOPS)
def test_each_coroutine_runs_in_a_context_of_its_own(new_loop: NewLoop) -> None:
    handler = Contexts()

    async def main() -> None:
        server = pygev.Server(handler, "127.0.0.1:0", protocol=pygev.LengthPrefix())
        serving = asyncio.create_task(server.serve())
        reader, writer = await asyncio.open_connection(*server.address)
        names = [b"a", b"b-wait", b"c", b"d-wait", b"e"]
        for name in names:
            writer.write(framed(name))
        for name in names:
            assert await read_frame(reader) == name
        writer.close()
        server.stop()
        await serving

    run(new_loop, main())
    assert handler.seen == ["-"] * 5


class Early(pygev.Handler):
    """Cancelled before its task's first step: the cancel reaches the coroutine."""

    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        task = asyncio.current_task()
        assert task is not None
        if data == b"self-cancel":
            task.cancel()
            try:
                await asyncio.sleep(WAIT)
            except asyncio.CancelledError:
                return b"cancelled"
            return b"not cancelled"
        try:
            async with asyncio.timeout(0):
                await asyncio.sleep(WAIT)
        except TimeoutError:
            return b"timed out"
        return b"not timed out"


@pytest.mark.parametrize("new_loop", LOOPS)
def test_a_cancel_before_the_tasks_first_step_reaches_the_coroutine(new_loop: NewLoop) -> None:
    async def main() -> None:
        server = pygev.Server(Early(), "127.0.0.1:0", protocol=pygev.LengthPrefix())
        serving = asyncio.create_task(server.serve())
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(framed(b"timeout") + framed(b"self-cancel"))
        assert await read_frame(reader) == b"timed out"
        assert await read_frame(reader) == b"cancelled"
        writer.close()
        server.stop()
        await serving

    run(new_loop, main())


class SlowClose(pygev.Handler):
    def __init__(self) -> None:
        self.log: list[str] = []

    async def on_close(self, conn: pygev.Connection) -> None:
        self.log.append("close start")
        await asyncio.sleep(0.05)
        self.log.append("close end")


@pytest.mark.parametrize("new_loop", LOOPS)
def test_serve_returns_after_on_close_coroutines_ended(new_loop: NewLoop) -> None:
    handler = SlowClose()

    async def main() -> None:
        server = pygev.Server(handler, "127.0.0.1:0")
        serving = asyncio.create_task(server.serve())
        _, writer = await asyncio.open_connection(*server.address)
        await asyncio.sleep(0.05)
        server.stop()  # the drain closes the connection: on_close starts then
        await serving
        handler.log.append("serve returned")
        writer.close()

    run(new_loop, main())
    assert handler.log == ["close start", "close end", "serve returned"]


class Vanishing(pygev.WebSocketHandler):
    def __init__(self) -> None:
        self.log: list[str] = []

    async def on_handshake(self, conn: pygev.Connection, request: pygev.WebSocketRequest) -> None:
        self.log.append("handshake")
        await asyncio.sleep(0.2)  # the client is gone meanwhile
        self.log.append("handshake done")

    def on_connect(self, conn: pygev.Connection) -> None:
        self.log.append("connect")

    def on_close(self, conn: pygev.Connection) -> None:
        self.log.append("close")


@pytest.mark.parametrize("new_loop", LOOPS)
def test_a_client_gone_during_an_awaiting_handshake_gets_no_callbacks(new_loop: NewLoop) -> None:
    handler = Vanishing()

    async def main() -> None:
        server = pygev.Server(handler, "127.0.0.1:0")
        serving = asyncio.create_task(server.serve())
        _, writer = await asyncio.open_connection(*server.address)
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await until_logged(handler.log, "handshake")
        writer.close()
        await until_logged(handler.log, "handshake done")
        await asyncio.sleep(0.05)
        server.stop()
        await serving

    run(new_loop, main())
    assert handler.log == ["handshake", "handshake done"]


class Exits(pygev.Handler):
    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        await asyncio.sleep(0.01)
        raise SystemExit(3)


@pytest.mark.parametrize("new_loop", LOOPS)
def test_system_exit_after_an_await_stops_the_server(new_loop: NewLoop) -> None:
    closed: list[int] = []

    class Recording(Exits):
        def on_close(self, conn: pygev.Connection) -> None:
            closed.append(conn.id)

    clients: list[socket.socket] = []

    async def main() -> None:
        server = pygev.Server(Recording(), "127.0.0.1:0", protocol=pygev.LengthPrefix())
        serving = asyncio.create_task(server.serve())
        # (A plain socket: SystemExit leaves the loop at once, and it is closed after.)
        clients.append(socket.create_connection(server.address, timeout=WAIT))
        clients[0].sendall(framed(b"exit"))
        await serving

    try:
        with pytest.raises(SystemExit) as exited:
            run(new_loop, main())
    finally:
        for client in clients:
            client.close()
    assert exited.value.code == 3
    assert len(closed) == 1


RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets


class Resetting(pygev.Handler):
    """Its first message awaits `go`; the peer resets meanwhile."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.conns: list[pygev.Connection] = []
        self.go = asyncio.Event()

    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
        self.conns.append(conn)
        self.log.append("message " + data.decode())
        await self.go.wait()
        for step in ("send", "drain"):
            try:
                if step == "send":
                    conn.send(b"late")
                else:
                    await conn.drain()
                self.log.append(step + " went")
            except pygev.ConnectionClosed:
                self.log.append(step + " raised")
        self.log.append("connected" if conn.connected else "not connected")

    def on_close(self, conn: pygev.Connection) -> None:
        self.log.append("close")


@pytest.mark.parametrize("new_loop", LOOPS)
def test_a_reset_while_a_callback_awaits_fails_its_sends_and_drain(new_loop: NewLoop) -> None:
    """The loop closes the connection while on_message awaits something else: the input
    read before still reaches the handler, and sending or draining after raises
    ConnectionClosed (neither is lost silently nor waits for ever); on_close comes last."""
    handler = Resetting()

    async def main() -> None:
        server = pygev.Server(handler, "127.0.0.1:0", protocol=pygev.LengthPrefix())
        serving = asyncio.create_task(server.serve())
        sock = socket.create_connection(server.address, timeout=WAIT)
        sock.sendall(framed(b"a") + framed(b"b"))
        await until_logged(handler.log, "message a")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        sock.close()
        while handler.conns[0].connected:  # the dispatcher has seen the close
            await asyncio.sleep(0.01)
        handler.go.set()
        await until_logged(handler.log, "close")
        server.stop()
        await serving

    run(new_loop, main())
    after = ["send raised", "drain raised", "not connected"]
    assert handler.log == ["message a", *after, "message b", *after, "close"]


class StubbornAsyncClose(pygev.Handler):
    """A callback that ignores its cancellation, and an on_close that awaits."""

    def __init__(self) -> None:
        self.log: list[str] = []

    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
        try:
            await asyncio.sleep(WAIT * 10)
        except asyncio.CancelledError:
            await asyncio.sleep(WAIT * 10)

    async def on_close(self, conn: pygev.Connection) -> None:
        self.log.append("close start")
        await asyncio.sleep(0.05)
        self.log.append("close end")


@pytest.mark.parametrize("new_loop", LOOPS)
def test_an_async_on_close_after_a_given_up_callback_runs_and_the_loop_goes_on(
    new_loop: NewLoop, pygev_log: LogCapture
) -> None:
    """The stop gives up on a callback that ignores its cancellation; its connection's
    on_close, a coroutine that awaits, then runs to its end, and other tasks of the loop
    keep running meanwhile (the first step's stand-in does not stay the current task)."""
    handler = StubbornAsyncClose()

    async def main() -> None:
        server = pygev.Server(
            handler, "127.0.0.1:0", protocol=pygev.LengthPrefix(), drain_timeout=0.2
        )
        serving = asyncio.create_task(server.serve())
        sock = socket.create_connection(server.address, timeout=WAIT)
        sock.sendall(framed(b"stuck"))
        await asyncio.sleep(0.05)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        server.stop()
        await serving
        before = ticks
        while ticks < before + 3:  # the loop's other tasks still run
            await asyncio.sleep(0.01)
        ticking.cancel()
        sock.close()

    run(new_loop, main())
    pygev_log.wait_for("of their cancellation")
    assert handler.log == ["close start", "close end"]


class AwaitsFirst(pygev.Handler):
    """The first message awaits `go`; the rest, held behind it, do not await."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.first = True

    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        if self.first:
            self.first = False
            await self.go.wait()
        return data


@pytest.mark.parametrize("new_loop", LOOPS)
def test_held_work_resumes_within_max_batch_events(new_loop: NewLoop) -> None:
    """Thousands of messages held behind one awaiting callback run, once it ends, over
    several batches of at most max_batch_events calls, in order."""
    messages = [b"%05d" % i for i in range(2000)]

    async def main() -> dict[str, Any]:
        handler = AwaitsFirst()
        server = pygev.Server(
            handler, "127.0.0.1:0", protocol=pygev.LengthPrefix(), max_batch_events=64
        )
        serving = asyncio.create_task(server.serve())
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"".join(framed(m) for m in messages))
        while server.stats()["messages_in"] < len(messages):  # all read, held
            await asyncio.sleep(0.01)
        handler.go.set()
        for expected in messages:
            assert await read_frame(reader) == expected
        stats = server.stats()
        writer.close()
        server.stop()
        await serving
        return stats

    stats = run(new_loop, main())
    assert stats["max_batch"] <= 64
    assert stats["batches_dispatched"] >= len(messages) // 64

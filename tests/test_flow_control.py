"""Write flow control: ``conn.write_buffer_size``, ``await conn.drain()``, per-connection
water marks, ``pause_reading()`` / ``resume_reading()``, and a broadcast to 1,000 clients
of which some never read."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop
from conftest import WAIT, LineFraming

import pygev

pytestmark = pytest.mark.timeout(120)

LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(uvloop.new_event_loop, id="uvloop"),
]

NewLoop = Callable[[], asyncio.AbstractEventLoop]

# Loopback sockets take megabytes before a sender sees any backpressure: a peer that never
# reads must be sent more than that for the server's own buffer to fill.
PAST_THE_KERNEL = 8 << 20


def run(new_loop: NewLoop, main: Awaitable[Any]) -> Any:
    loop = new_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(main, WAIT * 6))
    finally:
        loop.close()


class Conns(pygev.Handler):
    def __init__(self) -> None:
        self.conns: list[pygev.Connection] = []
        self.messages: list[bytes] = []
        self.connected = asyncio.Event()

    def on_connect(self, conn: pygev.Connection) -> None:
        self.conns.append(conn)
        self.connected.set()

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
        self.messages.append(data)


async def first_conn(handler: Conns) -> pygev.Connection:
    await handler.connected.wait()
    return handler.conns[0]


def test_write_buffer_limits_are_per_connection_and_checked() -> None:
    async def main() -> None:
        handler = Conns()
        server = pygev.Server(handler, "127.0.0.1:0", write_high_water=1 << 16)
        serving = asyncio.create_task(server.serve())
        _, writer = await asyncio.open_connection(*server.address)
        conn = await first_conn(handler)
        assert conn.get_write_buffer_limits() == (1 << 15, 1 << 16)
        assert conn.write_buffer_size == 0
        conn.set_write_buffer_limits(high=4096)
        assert conn.get_write_buffer_limits() == (2048, 4096)
        conn.set_write_buffer_limits(high=8192, low=100)
        assert conn.get_write_buffer_limits() == (100, 8192)
        for high, low in [(0, None), (100, 200), (-1, None), (1 << 40, None)]:
            with pytest.raises(ValueError):
                conn.set_write_buffer_limits(high=high, low=low)
        assert conn.get_write_buffer_limits() == (100, 8192), "unchanged by the errors"
        with pytest.raises(ValueError):
            pygev.Server(pygev.Handler(), "127.0.0.1:0", write_high_water=100, write_low_water=200)
        writer.close()
        server.stop()
        await serving

    run(asyncio.new_event_loop, main())


@pytest.mark.parametrize("new_loop", LOOPS)
def test_drain_waits_for_a_slow_reader_and_bounds_the_buffer(new_loop: NewLoop) -> None:
    chunk = bytes(range(256)) * 64  # 16 KiB
    high = 1 << 16

    async def main() -> None:
        handler = Conns()
        server = pygev.Server(handler, "127.0.0.1:0", write_high_water=high)
        serving = asyncio.create_task(server.serve())
        # A client that does not read: a small receive buffer (no autotuning), and nothing
        # read until the sender had to wait (asyncio's streams would read ahead).
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(server.address)
        sock.setblocking(False)
        conn = await first_conn(handler)
        most = 0
        waited = 0

        async def feed() -> None:
            nonlocal most, waited
            for _ in range(PAST_THE_KERNEL // len(chunk)):
                conn.send(chunk)
                most = max(most, conn.write_buffer_size)
                waited += conn.write_buffer_size > high // 2
                await conn.drain()

        feeding = asyncio.create_task(feed())
        await asyncio.sleep(0.5)  # not reading: the kernel's buffers fill, then ours
        assert not feeding.done(), "drain() waits while the peer does not read"
        digest = hashlib.sha256()
        loop = asyncio.get_running_loop()
        received = 0
        while received < PAST_THE_KERNEL // len(chunk) * len(chunk):
            data = await loop.sock_recv(sock, 1 << 20)
            assert data, "the server closed early"
            digest.update(data)
            received += len(data)
        await feeding
        assert digest.digest() == hashlib.sha256(chunk * (PAST_THE_KERNEL // len(chunk))).digest()
        assert waited > 0, "drain() had to wait"
        assert most <= high + len(chunk), "unsent output stayed within the high-water mark"
        sock.close()
        server.stop()
        await serving

    run(new_loop, main())


@pytest.mark.parametrize("new_loop", LOOPS)
def test_drain_raises_connection_closed_when_the_peer_goes(new_loop: NewLoop) -> None:
    async def main() -> None:
        handler = Conns()
        server = pygev.Server(handler, "127.0.0.1:0", write_high_water=1 << 16)
        serving = asyncio.create_task(server.serve())
        sock = socket.create_connection(server.address)
        conn = await first_conn(handler)
        outcome: list[str] = []

        async def feed() -> None:
            try:
                while True:
                    conn.send(b"x" * 65536)
                    await conn.drain()
            except pygev.ConnectionClosed:
                outcome.append("closed")

        feeding = asyncio.create_task(feed())
        while conn.write_buffer_size <= 1 << 15:
            await asyncio.sleep(0.01)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST
        await feeding
        assert outcome == ["closed"]
        with pytest.raises(pygev.ConnectionClosed):
            conn.drain()
        server.stop()
        await serving

    run(new_loop, main())


@pytest.mark.parametrize("new_loop", LOOPS)
def test_pause_reading_holds_input_until_resume(new_loop: NewLoop) -> None:
    async def main() -> None:
        handler = Conns()
        server = pygev.Server(handler, "127.0.0.1:0")
        serving = asyncio.create_task(server.serve())
        _, writer = await asyncio.open_connection(*server.address)
        conn = await first_conn(handler)
        assert conn.is_reading()
        conn.pause_reading()
        conn.pause_reading()  # twice is once
        assert not conn.is_reading()
        await asyncio.sleep(0.05)  # the pause reached the loop
        writer.write(b"while paused")
        await writer.drain()
        await asyncio.sleep(0.3)
        assert handler.messages == [], "nothing read while paused"
        conn.resume_reading()
        assert conn.is_reading()
        while not handler.messages:
            await asyncio.sleep(0.01)
        assert b"".join(handler.messages) == b"while paused"
        writer.close()
        server.stop()
        await serving

    run(new_loop, main())


class PausesAfterFirst(pygev.Handler):
    def __init__(self) -> None:
        self.conns: list[pygev.Connection] = []

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        if not self.conns:
            self.conns.append(conn)
            conn.pause_reading()
        return data


@pytest.mark.parametrize("new_loop", LOOPS)
def test_a_paused_connection_is_not_cut_off_by_frame_timeout(new_loop: NewLoop) -> None:
    """A Python framing holds part of a frame while the handler keeps the connection from
    reading the rest: frame_timeout does not run meanwhile, and runs afresh after."""

    async def main() -> None:
        handler = PausesAfterFirst()
        server = pygev.Server(handler, "127.0.0.1:0", protocol=LineFraming(), frame_timeout=0.3)
        serving = asyncio.create_task(server.serve())
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"first\nsecond, in part")
        assert await reader.readline() == b"first\n"
        await asyncio.sleep(0.9)  # three frame timeouts, paused
        assert handler.conns[0].connected
        handler.conns[0].resume_reading()
        writer.write(b", and the rest\n")
        assert await reader.readline() == b"second, in part, and the rest\n"
        writer.write(b"a part never finished")
        with pytest.raises(ConnectionResetError):  # cut off once reading again
            await reader.read()
        writer.close()
        server.stop()
        await serving

    run(new_loop, main())


READERS = textwrap.dedent(
    """
    import json, selectors, socket, sys
    host, port, count, expected = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    sel = selectors.DefaultSelector()
    got = {}
    for i in range(count):
        s = socket.create_connection((host, port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        got[i] = 0
    print("connected", flush=True)
    checksum = 0
    open_ = count
    while open_:
        for key, _ in sel.select(30):
            data = key.fileobj.recv(1 << 20)
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                open_ -= 1
                continue
            got[key.data] += len(data)
            checksum += data.count(b"!")
    print(json.dumps({"bytes": sorted(set(got.values())), "marks": checksum}), flush=True)
    """
)


@pytest.mark.parametrize("new_loop", LOOPS)
def test_a_broadcast_with_drain_keeps_memory_bounded_and_serves_the_readers(
    new_loop: NewLoop,
) -> None:
    """1,000 clients: 990 read, 10 never do. Each client has a sender that awaits drain();
    the stuck ones stay within the high-water mark, the readers get every byte."""
    readers, stuck = 990, 10
    message = b"!" + b"." * (64 * 1024 - 1)
    count = PAST_THE_KERNEL // len(message)
    high = 1 << 18

    async def main() -> dict[str, Any]:
        handler = Conns()
        # A generous drain_timeout: each reader's last bytes must go out even when the
        # machine is loaded (a close past it resets, and the reader would lose them).
        server = pygev.Server(
            handler, "127.0.0.1:0", write_high_water=high, num_loops=2, drain_timeout=60
        )
        serving = asyncio.create_task(server.serve())
        host, port = server.address
        idle = []
        for _ in range(stuck):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((host, port))
            idle.append(sock)
        clients = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            READERS,
            host,
            str(port),
            str(readers),
            str(count * len(message)),
            stdout=subprocess.PIPE,
        )
        assert clients.stdout is not None
        assert await clients.stdout.readline() == b"connected\n"
        while len(handler.conns) < readers + stuck:
            await asyncio.sleep(0.01)
        most: dict[int, int] = {}

        async def sender(conn: pygev.Connection) -> None:
            try:
                for _ in range(count):
                    conn.send(message)
                    most[conn.id] = max(most.get(conn.id, 0), conn.write_buffer_size)
                    await conn.drain()
                conn.close()
            except pygev.ConnectionClosed:
                pass

        senders = {conn.id: asyncio.create_task(sender(conn)) for conn in handler.conns}
        summary = json.loads(await clients.stdout.readline())
        await clients.wait()
        blocked = [t for t in senders.values() if not t.done()]
        assert len(blocked) == stuck, "the senders of the clients that do not read wait"
        assert max(most.values()) <= high + len(message)
        stats = server.stats()
        # What the loops hold for the stuck clients (the kernel's buffers aside).
        assert 0 < stats["write_buffered"] <= stuck * (high + len(message))
        for task in blocked:
            task.cancel()
        for sock in idle:
            sock.close()
        server.stop()
        await serving
        return {"summary": summary, "stats": stats}

    result = run(new_loop, main())
    assert result["summary"] == {"bytes": [count * 64 * 1024], "marks": readers * count}

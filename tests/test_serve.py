"""``await server.serve()``: the dispatcher runs inside a running asyncio loop (asyncio's
own and uvloop), beside other asyncio servers, and stops cleanly."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop
from conftest import EXAMPLES, ROOT, WAIT, recv_exactly

import pygev

pytestmark = pytest.mark.timeout(60)

LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(uvloop.new_event_loop, id="uvloop"),
]


def run(new_loop: Callable[[], asyncio.AbstractEventLoop], main: Awaitable[Any]) -> Any:
    loop = new_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(main, WAIT * 2))
    finally:
        loop.close()


class Echo(pygev.Handler):
    def __init__(self) -> None:
        self.closed = 0
        self.thread_ids: set[int] = set()

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        self.thread_ids.add(threading.get_ident())
        return data

    def on_close(self, conn: pygev.Connection) -> None:
        self.closed += 1


async def echo_client(host: str, port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(payload)
    got = await reader.readexactly(len(payload))
    writer.close()
    await writer.wait_closed()
    return got


@pytest.mark.parametrize("new_loop", LOOPS)
def test_two_servers_and_an_asyncio_server_share_one_loop(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def main() -> None:
        async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"plain:" + await reader.readexactly(4))
            await writer.drain()
            writer.close()

        plain_server = await asyncio.start_server(plain, "127.0.0.1", 0)
        plain_port = plain_server.sockets[0].getsockname()[1]
        handlers = [Echo(), Echo()]
        servers = [pygev.Server(h, "127.0.0.1:0", num_loops=2) for h in handlers]
        tasks = [asyncio.create_task(s.serve()) for s in servers]
        payloads = [b"x%05d" % i * (i % 7 + 1) for i in range(100)]
        echoes = [
            echo_client(*servers[i % 2].address, payload) for i, payload in enumerate(payloads)
        ]
        reader, writer = await asyncio.open_connection("127.0.0.1", plain_port)
        writer.write(b"ping")
        got, plain_reply = await asyncio.gather(asyncio.gather(*echoes), reader.read())
        assert list(got) == payloads
        assert plain_reply == b"plain:ping"
        # The callbacks ran on the loop's own thread.
        assert [h.thread_ids for h in handlers] == [{threading.get_ident()}] * 2
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
        assert await asyncio.gather(*tasks) == [None, None]  # serve() returned
        assert sum(h.closed for h in handlers) == 100
        plain_server.close()
        await plain_server.wait_closed()

    run(new_loop, main())


@pytest.mark.parametrize("new_loop", LOOPS)
def test_an_aiohttp_app_and_a_pygev_server_share_one_loop(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """Each calls the other inside the one loop: pygev's awaiting handler asks the aiohttp
    app over HTTP, and the app's handler asks the pygev server over TCP."""
    from aiohttp import ClientSession, web

    async def main() -> None:
        async with ClientSession() as session:
            ports: dict[str, int] = {}

            class Upper(pygev.Handler):
                async def on_message(
                    self, conn: pygev.Connection, ctx: object, data: bytes
                ) -> bytes:
                    url = f"http://127.0.0.1:{ports['http']}/upper"
                    async with session.post(url, data=data) as response:
                        return await response.read()

            async def upper(request: web.Request) -> web.Response:
                return web.Response(body=(await request.read()).upper())

            async def via_pygev(request: web.Request) -> web.Response:
                return web.Response(body=await echo_client("127.0.0.1", ports["pygev"], b"a-b\n"))

            app = web.Application()
            app.router.add_post("/upper", upper)
            app.router.add_get("/via-pygev", via_pygev)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ports["http"] = runner.addresses[0][1]
            async with pygev.Server(
                Upper(), "127.0.0.1:0", protocol=pygev.Delimited(b"\n")
            ) as server:
                ports["pygev"] = server.address[1]
                serving = asyncio.create_task(server.serve())
                lines = [b"line %d" % i for i in range(50)]
                replies = await asyncio.gather(
                    *(echo_client("127.0.0.1", ports["pygev"], line + b"\n") for line in lines),
                    session.get(f"http://127.0.0.1:{ports['http']}/via-pygev"),
                )
                *echoed, response = replies
                assert echoed == [line.upper() + b"\n" for line in lines]
                assert response.status == 200
                assert await response.read() == b"A-B\n"
            await asyncio.wait_for(serving, WAIT)
            await runner.cleanup()

    run(new_loop, main())


@pytest.mark.parametrize("new_loop", LOOPS)
def test_async_with_closes_and_waits_and_timers_fire(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def main() -> None:
        handler = Echo()
        fired = asyncio.Event()
        async with pygev.Server(handler, "127.0.0.1:0") as server:
            task = asyncio.create_task(server.serve())
            server.run_after(0.05, fired.set)
            await asyncio.wait_for(fired.wait(), WAIT)
            assert await echo_client(*server.address, b"inside") == b"inside"
        # Leaving the block stopped the server and waited for it: serve() returns.
        await asyncio.wait_for(task, WAIT)
        with pytest.raises(RuntimeError, match="stopped"):
            server.start()

    run(new_loop, main())


@pytest.mark.parametrize("new_loop", LOOPS)
def test_cancelling_serve_drains_open_connections(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """What Ctrl+C under asyncio.run does to the main task: serve() stops the server,
    every open connection gets on_close, and then the cancellation goes on."""

    async def main() -> None:
        handler = Echo()
        server = pygev.Server(handler, "127.0.0.1:0")
        task = asyncio.create_task(server.serve())
        host, port = server.address
        clients = [await asyncio.open_connection(host, port) for _ in range(20)]
        for reader, writer in clients:
            writer.write(b"hi")
            assert await reader.readexactly(2) == b"hi"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert handler.closed == 20
        for reader, writer in clients:
            assert await reader.read() == b""  # closed by the server
            writer.close()

    run(new_loop, main())


def test_a_server_stopped_before_serve_returns_at_once() -> None:
    async def main() -> None:
        server = pygev.Server(Echo(), "127.0.0.1:0")
        server.stop()
        await server.serve()
        await server.wait_closed()

    run(asyncio.new_event_loop, main())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("loop_flag", [[], ["--uvloop"]], ids=["asyncio", "uvloop"])
def test_the_asyncio_example_stops_cleanly_on_a_signal(
    signum: signal.Signals, loop_flag: list[str]
) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "asyncio_echo.py"), "--port", "0", *loop_flag],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(ROOT),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "listening on" in line, line
        port = int(line.rsplit(":", 1)[1])
        clients = [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(5)]
        for client in clients:
            client.sendall(b"ping")
            assert recv_exactly(client, 4) == b"ping"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err.decode()
        assert "draining 5 open connections" in err.decode()
        for client in clients:
            assert client.recv(1) == b"", "closed by the server as it stopped"
            client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_importing_pygev_leaves_asyncio_out() -> None:
    """asyncio (with ssl and concurrent.futures, about 6 MiB of RSS) is imported when a
    server first needs it, not by ``import pygev``: every worker process of pygev.run
    would carry it."""
    probe = "import sys, pygev; print(sorted({'asyncio', 'ssl'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=WAIT, check=True
    )
    assert out.stdout.strip() == "[]", out

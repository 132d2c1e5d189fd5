"""Echo server inside an asyncio application: ``await server.serve()``.

The same handler as ``echo.py``; the dispatcher runs in the asyncio loop's thread, so the
application's own coroutines (here a periodic stats line) share the loop with it. Ctrl+C
and SIGTERM stop it cleanly: open connections are drained and closed first.

    python examples/asyncio_echo.py --port 1833 [--uvloop] [--async]

With ``--async`` the handler's ``on_message`` is an ``async def`` (it never waits: the
dispatcher finishes it in its first step, without a task).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import pygev


class Echo(pygev.Handler):
    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        return data


class AsyncEcho(pygev.Handler):
    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        return data


async def report(server: pygev.Server, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        stats = server.stats()
        logging.info("%d connections, %d messages", stats["connections"], stats["messages_in"])


async def main(args: argparse.Namespace) -> None:
    framing = pygev.LengthPrefix(4) if args.framing == "length" else pygev.Raw()
    address = f"{args.host}:{args.port}"
    handler = AsyncEcho() if args.use_async else Echo()
    async with pygev.Server(handler, address, num_loops=args.loops, protocol=framing) as server:
        host, port = server.address
        print(f"pygev asyncio echo server listening on {host}:{port}", flush=True)
        reporter = asyncio.create_task(report(server, args.report))
        try:
            await server.serve()
        finally:
            reporter.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1833, help="0 picks a free port")
    parser.add_argument("--loops", type=int, default=1, help="loop threads, 0 = one per CPU")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--framing", choices=["raw", "length"], default="raw")
    parser.add_argument(
        "--async", dest="use_async", action="store_true", help="an async def on_message"
    )
    parser.add_argument("--report", type=float, default=10.0, help="seconds between stats lines")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run = asyncio.run
    if arguments.uvloop:
        import uvloop

        run = uvloop.run
    try:
        run(main(arguments))
    except KeyboardInterrupt:
        pass  # stopped cleanly: serve() drained before the interrupt went on

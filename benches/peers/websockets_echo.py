#!/usr/bin/env python3
"""WebSocket echo server on the `websockets` library (asyncio API, its defaults), one
coroutine per connection: `async for message in ws: await ws.send(message)`.

Prints "listening on HOST:PORT" (flushed) once bound, serves until SIGINT/SIGTERM.
"""
import argparse
import asyncio
import os
import sys

from websockets.asyncio.server import serve as ws_serve

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from asyncio_echo import raise_nofile_limit, until_stopped


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def serve(host, port):
    async with ws_serve(echo, host, port, max_size=None, ping_interval=None) as server:
        await until_stopped(server)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port")
    args = ap.parse_args()
    raise_nofile_limit()
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Echo server on asyncio (Protocol API): every received chunk goes through one
Python method call, data_received -> transport.write, the fair analogue of a
pygev on_message handler that returns its data.

Prints "listening on HOST:PORT" (flushed) once bound, serves until SIGINT/SIGTERM.
uvloop_echo.py runs this same code on uvloop.
"""
import argparse
import asyncio
import resource
import signal
import sys


def raise_nofile_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


class Echo(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.transport = None


async def serve(host, port, backlog):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, host, port, backlog=backlog)
    addr = server.sockets[0].getsockname()
    print(f"listening on {addr[0]}:{addr[1]}", flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    server.close()


def main(use_uvloop=False):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port")
    ap.add_argument("--backlog", type=int, default=1024)
    args = ap.parse_args()
    raise_nofile_limit()
    if use_uvloop:
        import uvloop

        runner = uvloop.run
    else:
        runner = asyncio.run
    runner(serve(args.host, args.port, args.backlog))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""WebSocket echo server on picows (Cython, frame-level API), on uvloop when installed, as
picows recommends.

Every data frame comes back as it came (the benchmark sends whole, unfragmented binary
messages); pings get pongs, a close is answered. No permessage-deflate (picows has none).
Prints "listening on HOST:PORT" (flushed) once bound, serves until SIGINT/SIGTERM.
"""
import argparse
import asyncio
import os
import sys

from picows import WSListener, WSMsgType, ws_create_server

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from asyncio_echo import raise_nofile_limit, tls_context, until_stopped


class Echo(WSListener):
    def on_ws_frame(self, transport, frame):
        kind = frame.msg_type
        if kind in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            transport.send(kind, frame.get_payload_as_memoryview(), frame.fin)
        elif kind == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
        elif kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


async def serve(host, port, ssl=None):
    server = await ws_create_server(lambda _request: Echo(), host, port, ssl=ssl)
    await until_stopped(server)
    server.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"),
                    help="wss://, with this certificate and key (Python's ssl)")
    args = ap.parse_args()
    raise_nofile_limit()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(serve(args.host, args.port, tls_context(*args.tls) if args.tls else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())

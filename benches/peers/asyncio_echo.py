#!/usr/bin/env python3
"""Echo server on asyncio (Protocol API): every received chunk goes through one
Python method call, data_received -> transport.write, the fair analogue of a
pygev on_message handler that returns its data.

With --framing length, messages are 4-byte big-endian length-prefixed frames: the
protocol parses them in Python and calls one handler per frame, then writes the framed
replies of one data_received with one write (what pygev.LengthPrefix does natively).

With --unix PATH it listens on a Unix-domain stream socket at PATH instead
(loop.create_unix_server) and prints "listening on unix:PATH".

Prints "listening on HOST:PORT" (flushed) once bound, serves until SIGINT/SIGTERM.
uvloop_echo.py runs this same code on uvloop.
"""
import argparse
import asyncio
import os
import resource
import signal
import struct
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


HEADER = struct.Struct(">I")


class FramedEcho(asyncio.Protocol):
    """Length-prefixed frames parsed in Python, one on_message call per frame."""

    __slots__ = ("buffer", "transport")

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = bytearray()

    def on_message(self, data):
        return data

    def data_received(self, data):
        buffer = self.buffer
        buffer += data
        size = len(buffer)
        pos = 0
        out = []
        unpack = HEADER.unpack_from
        while size - pos >= 4:
            (length,) = unpack(buffer, pos)
            end = pos + 4 + length
            if end > size:
                break
            reply = self.on_message(bytes(buffer[pos + 4:end]))
            if reply is not None:
                out.append(HEADER.pack(len(reply)))
                out.append(reply)
            pos = end
        if pos:
            del buffer[:pos]
        if out:
            self.transport.write(b"".join(out))

    def connection_lost(self, exc):
        self.transport = None


async def until_stopped(server):
    """Prints the `listening on` line for `server`, then waits for SIGINT or SIGTERM."""
    addr = server.sockets[0].getsockname()
    if isinstance(addr, str):  # a Unix socket's path
        print(f"listening on unix:{addr}", flush=True)
    else:
        print(f"listening on {addr[0]}:{addr[1]}", flush=True)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop


async def serve(host, port, backlog, framing, unix=None, ssl=None):
    loop = asyncio.get_running_loop()
    factory = FramedEcho if framing == "length" else Echo
    if unix:
        server = await loop.create_unix_server(factory, unix, backlog=backlog, ssl=ssl)
    else:
        server = await loop.create_server(factory, host, port, backlog=backlog, ssl=ssl)
    await until_stopped(server)
    server.close()
    if unix:
        try:
            os.unlink(unix)
        except OSError:
            pass


def main(use_uvloop=False, serve=serve, description=__doc__):
    """Parses the options every echo peer takes (--host, --port, --backlog, --framing,
    --unix) and runs `serve` with them on asyncio's loop or uvloop."""
    ap = argparse.ArgumentParser(description=description.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port")
    ap.add_argument("--backlog", type=int, default=1024)
    ap.add_argument("--framing", choices=["raw", "length"], default="raw")
    ap.add_argument("--unix", metavar="PATH",
                    help="listen on a Unix-domain socket at PATH instead of --host/--port")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"),
                    help="speak TLS (Python's ssl, OpenSSL) with this certificate and key")
    args = ap.parse_args()
    raise_nofile_limit()
    options = {"ssl": tls_context(*args.tls)} if args.tls else {}
    if use_uvloop:
        import uvloop

        runner = uvloop.run
    else:
        runner = asyncio.run
    runner(serve(args.host, args.port, args.backlog, args.framing, args.unix, **options))
    return 0


def tls_context(certfile, keyfile):
    """A server-side ssl context with the certificate and key, defaults otherwise."""
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


if __name__ == "__main__":
    sys.exit(main())

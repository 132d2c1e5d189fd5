#!/usr/bin/env python3
"""Echo server on uvloop written with asyncio streams, as most asyncio users write one:
``asyncio.start_server`` with a coroutine per connection that reads a message
(``readexactly``), writes the reply and ``await``s ``drain()``.

With --framing length, messages are 4-byte big-endian length-prefixed frames: one
``readexactly(4)`` and one ``readexactly(length)`` per message, then ``write`` +
``await drain()`` of the framed reply. Raw: ``read(65536)``, ``write``, ``await drain()``.

Prints "listening on HOST:PORT" (flushed) once bound, serves until SIGINT/SIGTERM;
with --unix PATH it listens on a Unix-domain socket there ("listening on unix:PATH").
"""
import asyncio
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from asyncio_echo import main, until_stopped

HEADER = struct.Struct(">I")


async def on_message(data):
    return data


async def framed_echo(reader, writer):
    unpack, pack = HEADER.unpack, HEADER.pack
    try:
        while True:
            (length,) = unpack(await reader.readexactly(4))
            reply = await on_message(await reader.readexactly(length))
            writer.write(pack(len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def raw_echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(host, port, backlog, framing, unix=None):
    handler = framed_echo if framing == "length" else raw_echo
    if unix:
        server = await asyncio.start_unix_server(handler, unix, backlog=backlog)
    else:
        server = await asyncio.start_server(handler, host, port, backlog=backlog)
    async with server:
        await until_stopped(server)


if __name__ == "__main__":
    sys.exit(main(use_uvloop=True, serve=serve, description=__doc__))

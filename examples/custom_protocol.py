"""A framing written in Python: gev's protocol example.

Each message is a 4-byte big-endian length, then that many bytes. ``unpacket`` reads the
header with a virtual read and only commits (``virtual_flush``) once the whole frame is
there, otherwise it reverts and waits for more bytes. ``LengthPrefix`` does the same in
Rust (see ``examples/length_prefix.py``); a Python protocol is for framings pygev does not
have.

Server:

    python examples/custom_protocol.py --port 1833

Client (sends each line typed, or each ``--send`` argument, and prints the replies):

    python examples/custom_protocol.py --client --port 1833 --send hello
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import struct
import sys
from collections.abc import Callable
from typing import Union

import pygev

HEADER = struct.Struct(">I")

#: The framings this example's wire format runs on.
Framing = Union[pygev.Protocol, pygev.LengthPrefix]


class LengthProtocol(pygev.Protocol):
    """4-byte big-endian length, then the payload."""

    def __init__(self, max_frame_size: int = 1 << 20) -> None:
        self.max_frame_size = max_frame_size

    def unpacket(
        self, conn: pygev.Connection, buffer: pygev.RingBuffer
    ) -> tuple[object, bytes] | None:
        if buffer.virtual_length() < HEADER.size:
            return None
        (length,) = HEADER.unpack(buffer.virtual_read(HEADER.size))
        if length > self.max_frame_size:
            raise ValueError(f"frame of {length} bytes, over {self.max_frame_size}")
        if buffer.virtual_length() < length:
            buffer.virtual_revert()  # not all here yet: read the header again next time
            return None
        payload = buffer.virtual_read(length)
        buffer.virtual_flush()
        return None, payload

    def packet(self, conn: pygev.Connection, data: bytes) -> bytes:
        return HEADER.pack(len(data)) + data


class Reply(pygev.Handler):
    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        return b"%d bytes: %s" % (len(data), data)


def serve(args: argparse.Namespace, protocol: Framing, name: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = pygev.Server(
        Reply(), f"{args.host}:{args.port}", num_loops=args.loops, protocol=protocol
    )
    host, port = server.address
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: server.stop())
    print(f"pygev {name} server listening on {host}:{port}", flush=True)
    server.start()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return bytes(data)


def client(args: argparse.Namespace) -> None:
    lines = args.send if args.send else (line.rstrip("\n") for line in sys.stdin)
    with socket.create_connection((args.host, args.port)) as sock:
        for line in lines:
            payload = line.encode()
            sock.sendall(HEADER.pack(len(payload)) + payload)
            (length,) = HEADER.unpack(recv_exactly(sock, HEADER.size))
            print(recv_exactly(sock, length).decode(errors="replace"), flush=True)


def run(description: str | None, protocol: Callable[[], Framing], name: str) -> None:
    """The server with ``protocol()``, or with ``--client`` the client (shared with
    examples/length_prefix.py, which speaks the same wire format)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1833, help="0 picks a free port")
    parser.add_argument("--loops", type=int, default=0, help="loop threads, 0 = one per CPU")
    parser.add_argument("--client", action="store_true", help="run the client instead")
    parser.add_argument("--send", action="append", help="client: a message to send")
    args = parser.parse_args()
    client(args) if args.client else serve(args, protocol(), name)


if __name__ == "__main__":
    run(__doc__, LengthProtocol, "custom protocol")

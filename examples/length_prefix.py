"""Length-prefixed messages: gev's protocol example, with pygev's native framing.

Each message on the wire is a 4-byte big-endian length, then that many bytes. The framing
runs in Rust, in the loop threads: ``on_message`` gets one whole payload per call however
TCP split or glued the bytes, and the payload it returns goes back with its header.

Server:

    python examples/length_prefix.py --port 1833

Client (sends each line typed, or each ``--send`` argument, and prints the replies):

    python examples/length_prefix.py --client --port 1833 --send hello --send world
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import struct
import sys

import pygev

HEADER = struct.Struct(">I")


class Reply(pygev.Handler):
    """Answers every message with its length and the message itself."""

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        return b"%d bytes: %s" % (len(data), data)


def serve(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    protocol = pygev.LengthPrefix(header_size=4, byteorder="big", max_frame_size=1 << 20)
    server = pygev.Server(
        Reply(), f"{args.host}:{args.port}", num_loops=args.loops, protocol=protocol
    )
    host, port = server.address
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: server.stop())
    print(f"pygev length-prefix server listening on {host}:{port}", flush=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1833, help="0 picks a free port")
    parser.add_argument("--loops", type=int, default=0, help="loop threads, 0 = one per CPU")
    parser.add_argument("--client", action="store_true", help="run the client instead")
    parser.add_argument("--send", action="append", help="client: a message to send")
    args = parser.parse_args()
    client(args) if args.client else serve(args)


if __name__ == "__main__":
    main()

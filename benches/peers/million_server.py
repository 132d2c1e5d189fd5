#!/usr/bin/env python3
"""The deployment benches/million.py runs: pygev.run with W workers sharing a port.

Each worker is one pygev server (num_loops=1, no idle timeout) whose handler keeps its
connections in a set (--order hash, the default: the broadcast visits them in hash order)
or in a dict (--order accept: insertion order, so the broadcast goes in accept order), and
nothing else per connection. It also dials one control connection
out to million.py (``server.connect`` with a handler of its own, so it is never in the set)
and answers, one line each (newline-delimited):

    COUNT   -> COUNT <connections held>
    STAT    -> STAT <json: held, the set's size in bytes, server.stats() without loops>
    BCAST   -> SENT <connections sent to> <monotonic ns when the last send was queued>
               (one 64-byte message to every held connection: raw bytes, or a binary
               WebSocket message with --ws)

    python benches/peers/million_server.py --port P --control 127.0.0.1:C --workers W [--ws]
        [--order hash|accept]

With --ws the handler is a WebSocketHandler whose protocol has ping_interval=None: no
keepalive, so that idle connections cost no timer (the idle CPU measurement) and no ping
frame reaches a client before the broadcast.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import pygev

PAYLOAD = bytes(range(64))  # the broadcast; million_client.c checks these bytes


class Holding:
    """Keeps the connections in a set: in when announced (accepted; a WebSocket's once its
    handshake completed), out when closed."""

    def __init__(self) -> None:
        self.conns: set = set()

    def on_connect(self, conn):
        self.conns.add(conn)

    def on_close(self, conn):
        self.conns.discard(conn)


class HoldingInOrder(Holding):
    """Keeps them in a dict instead (keys only): iterated in insertion (accept) order."""

    def __init__(self) -> None:
        self.conns: dict = {}

    def on_connect(self, conn):
        self.conns[conn] = None

    def on_close(self, conn):
        self.conns.pop(conn, None)


class Held(Holding, pygev.Handler):
    """Raw TCP."""


class HeldWs(Holding, pygev.WebSocketHandler):
    """WebSocket."""


class HeldInOrder(HoldingInOrder, pygev.Handler):
    """Raw TCP, accept order."""


class HeldWsInOrder(HoldingInOrder, pygev.WebSocketHandler):
    """WebSocket, accept order."""


class Control(pygev.Handler):
    """The worker's line to million.py."""

    def __init__(self, held, server) -> None:
        self.held = held
        self.server = server

    def on_connect(self, conn):
        conn.send(f"HELLO {os.getpid()}".encode())

    def on_message(self, conn, ctx, data):
        cmd = data.strip()
        conns = self.held.conns
        if cmd == b"COUNT":
            return f"COUNT {len(conns)}".encode()
        if cmd == b"BCAST":
            sent = 0
            for c in conns:
                try:
                    c.send(PAYLOAD)
                    sent += 1
                except pygev.ConnectionClosed:
                    pass
            return f"SENT {sent} {time.monotonic_ns()}".encode()
        if cmd == b"STAT":
            stats = self.server.stats()
            stats.pop("loops", None)
            return ("STAT " + json.dumps({
                "held": len(conns),
                "set_bytes": sys.getsizeof(conns),
                "stats": stats,
            })).encode()
        return b"ERROR unknown command"

    def on_close(self, conn):
        # million.py went away: this worker has no reason to go on.
        os.kill(os.getpid(), 15)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--control", required=True, help="million.py's control address host:port")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--ws", action="store_true")
    ap.add_argument("--backlog", type=int, default=4096)
    ap.add_argument("--order", choices=("hash", "accept"), default="hash",
                    help="the order the broadcast visits the connections in: a set's (hash) "
                         "or a dict's (accept)")
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    chost, cport = args.control.rsplit(":", 1)

    def make_server() -> pygev.Server:
        in_order = args.order == "accept"
        if args.ws:
            held = HeldWsInOrder() if in_order else HeldWs()
            protocol = pygev.WebSocket(ping_interval=None, compression=False)
        else:
            held = HeldInOrder() if in_order else Held()
            protocol = pygev.Raw()
        server = pygev.Server(held, f"{args.host}:{args.port}", num_loops=1, protocol=protocol,
                              idle_timeout=None, backlog=args.backlog)
        server.connect((chost, int(cport)), Control(held, server), pygev.Delimited(b"\n"))
        return server

    print(f"listening on {args.host}:{args.port} (connections in {args.order} order)",
          flush=True)
    pygev.run(make_server, workers=args.workers)


if __name__ == "__main__":
    main()

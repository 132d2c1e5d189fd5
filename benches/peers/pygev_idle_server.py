#!/usr/bin/env python3
"""pygev echo servers for benches/idle_cpu.py: raw with an idle timeout, or WebSocket with
keepalive. Uses only options that old and new builds of pygev both have."""

from __future__ import annotations

import argparse

import pygev


class Echo(pygev.Handler):
    def on_message(self, conn, ctx, data):
        return data


class WsEcho(pygev.WebSocketHandler):
    def on_message(self, conn, data):
        return data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["raw", "ws"], default="raw")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    if args.mode == "raw":
        server = pygev.Server(Echo(), f"127.0.0.1:{args.port}", num_loops=1, idle_timeout=300.0)
    else:
        # Keepalive on, but no ping falls in the measured window: what is measured is the
        # cost of keeping the deadlines, not of sending pings.
        protocol = pygev.WebSocket(ping_interval=120.0, ping_timeout=20.0)
        server = pygev.Server(WsEcho(), f"127.0.0.1:{args.port}", num_loops=1, protocol=protocol)
    host, port = server.address
    print(f"listening on {host}:{port}", flush=True)
    server.start()


if __name__ == "__main__":
    main()

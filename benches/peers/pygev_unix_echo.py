#!/usr/bin/env python3
"""pygev raw echo on a Unix-domain socket: examples/echo.py's server (`on_message`
returns its data, `pygev.Raw()` framing), listening on `unix:PATH` instead of host:port.

examples/echo.py has no option to listen on a Unix socket, so the echo benchmark's
Unix-socket test (benches/echo.py --tests unix-raw) runs this script.

Prints "listening on unix:PATH" (flushed) once bound, serves until SIGINT/SIGTERM;
pygev removes the socket file when it stops.

    python benches/peers/pygev_unix_echo.py --unix /tmp/echo.sock --loops 1
"""
from __future__ import annotations

import argparse
import logging
import resource
import signal

import pygev


class Echo(pygev.Handler):
    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unix", metavar="PATH", required=True, help="the socket file to listen on")
    ap.add_argument("--loops", type=int, default=1, help="loop threads, 0 = one per CPU")
    ap.add_argument("--stats", action="store_true", help="log server.stats() at exit")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    server = pygev.Server(Echo(), f"unix:{args.unix}", num_loops=args.loops, protocol=pygev.Raw())
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: server.stop())
    print(f"pygev echo server listening on {server.address}", flush=True)
    server.start()
    if args.stats:
        stats = server.stats()
        per_batch = stats["events_dispatched"] / max(stats["batches_dispatched"], 1)
        logging.getLogger("pygev").info("stats %s; %.1f events per batch", stats, per_batch)


if __name__ == "__main__":
    main()

"""Idle connections: gev's idle-connection example in pygev.

Echoes, and closes a connection that sent nothing for ``--idle`` seconds (the server's
``idle_timeout``; the timer runs in the Rust loops, no Python code is involved).

    python examples/idle_connection.py --port 1833 --idle 5
"""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import time

import pygev

log = logging.getLogger("idle_connection")


class Echo(pygev.Handler):
    """Echoes and logs when connections open and close."""

    def on_connect(self, conn: pygev.Connection) -> None:
        conn.context = time.monotonic()
        log.info("connected %s:%d", *conn.peer_addr)

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        return data

    def on_close(self, conn: pygev.Connection) -> None:
        lifetime = time.monotonic() - conn.context
        log.info("closed %s:%d after %.1fs", *conn.peer_addr, lifetime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=1833, help="0 picks a free port")
    parser.add_argument("--loops", type=int, default=0, help="loop threads, 0 = one per CPU")
    parser.add_argument("--idle", type=float, default=5.0, help="idle timeout in seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Many connections need many descriptors: raise the soft limit to the hard one.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    server = pygev.Server(
        Echo(), f"{args.host}:{args.port}", num_loops=args.loops, idle_timeout=args.idle
    )
    # SIGINT (Ctrl+C) and SIGTERM stop the server cleanly, even before start() runs.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: server.stop())
    host, port = server.address
    print(f"pygev idle_connection server listening on {host}:{port}", flush=True)
    server.start()


if __name__ == "__main__":
    main()

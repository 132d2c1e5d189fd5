"""Limit max connections: gev's max-connections example in pygev.

Serves at most ``--max`` clients at a time (echoing what they send). A client past the limit
is told ``server full`` and its connection is shut down for writing, as gev does: it reads
the message, then EOF, and closes.

    python examples/max_connections.py --port 1833 --max 1
"""

from __future__ import annotations

import argparse
import logging
import resource
import signal

import pygev

log = logging.getLogger("max_connections")

REFUSAL = b"server full\n"


class MaxConnections(pygev.Handler):
    """Echoes for up to ``max_clients`` clients at once and refuses the others."""

    def __init__(self, max_clients: int) -> None:
        self.max_clients = max_clients
        self.clients = 0

    def on_connect(self, conn: pygev.Connection) -> None:
        if self.clients >= self.max_clients:
            # Refused connections do not take a slot; the client closes after the EOF.
            log.info("refused %s:%d: %d clients already", *conn.peer_addr, self.clients)
            conn.send(REFUSAL)
            conn.shutdown_write()
            return
        conn.context = "served"
        self.clients += 1
        log.info("connected %s:%d (%d clients)", *conn.peer_addr, self.clients)

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes | None:
        return data if conn.context == "served" else None

    def on_close(self, conn: pygev.Connection) -> None:
        if conn.context == "served":
            self.clients -= 1
            log.info("closed %s:%d (%d clients)", *conn.peer_addr, self.clients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=1833, help="0 picks a free port")
    parser.add_argument("--loops", type=int, default=0, help="loop threads, 0 = one per CPU")
    parser.add_argument("--max", type=int, default=1, help="clients served at once")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Many connections need many descriptors: raise the soft limit to the hard one.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    handler = MaxConnections(args.max)
    server = pygev.Server(handler, f"{args.host}:{args.port}", num_loops=args.loops)
    # SIGINT (Ctrl+C) and SIGTERM stop the server cleanly, even before start() runs.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: server.stop())
    host, port = server.address
    print(f"pygev max_connections server listening on {host}:{port}", flush=True)
    server.start()


if __name__ == "__main__":
    main()

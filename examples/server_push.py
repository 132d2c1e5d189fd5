"""Server push: gev's example of a timer that pushes a message to every client.

Every ``--interval`` seconds each connected client receives ``hello HH:MM:SS``; what clients
send is ignored.

    python examples/server_push.py --port 1833 --interval 1
"""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import time

import pygev

log = logging.getLogger("server_push")


class Push(pygev.Handler):
    """Keeps the connected clients; :meth:`push` sends them all one message."""

    def __init__(self) -> None:
        self.clients: dict[int, pygev.Connection] = {}

    def on_connect(self, conn: pygev.Connection) -> None:
        self.clients[conn.id] = conn
        log.info("connected %s:%d (%d clients)", *conn.peer_addr, len(self.clients))

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
        return None

    def on_close(self, conn: pygev.Connection) -> None:
        self.clients.pop(conn.id, None)
        log.info("closed %s:%d (%d clients)", *conn.peer_addr, len(self.clients))

    def push(self) -> None:
        message = f"hello {time.strftime('%H:%M:%S')}\n".encode()
        for conn in self.clients.values():
            try:
                conn.send(message)
            except pygev.ConnectionClosed:
                pass  # closing: on_close removes it soon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=1833, help="0 picks a free port")
    parser.add_argument("--loops", type=int, default=0, help="loop threads, 0 = one per CPU")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between pushes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Many connections need many descriptors: raise the soft limit to the hard one.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    handler = Push()
    server = pygev.Server(handler, f"{args.host}:{args.port}", num_loops=args.loops)
    # SIGINT (Ctrl+C) and SIGTERM stop the server cleanly, even before start() runs.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: server.stop())
    server.run_every(args.interval, handler.push)
    host, port = server.address
    print(f"pygev server_push server listening on {host}:{port}", flush=True)
    server.start()


if __name__ == "__main__":
    main()

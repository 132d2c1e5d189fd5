"""WebSocket echo server: every text or binary message comes back as it was sent.

    python examples/websocket_echo.py --port 9001

The loop threads answer the handshake, pings and the closing handshake, reassemble
fragments, check UTF-8 and (de)compress messages (permessage-deflate); Python sees only
whole messages. This is the server the Autobahn|Testsuite runs against
(``scripts/autobahn.sh``).
"""

from __future__ import annotations

import argparse
import logging
import signal

import pygev


class Echo(pygev.WebSocketHandler):
    def on_message(self, conn: pygev.Connection, data: str | bytes) -> str | bytes:
        return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--no-compression", action="store_true", help="refuse permessage-deflate")
    parser.add_argument(
        "--max-message-size", type=int, default=16 << 20, help="bytes (default 16 MiB)"
    )
    parser.add_argument(
        "--tls", nargs=2, metavar=("CERT", "KEY"), help="wss://, with this certificate and key"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    protocol = pygev.WebSocket(
        max_message_size=args.max_message_size, compression=not args.no_compression
    )
    tls = pygev.TLS(*args.tls) if args.tls else None
    server = pygev.Server(
        Echo(), f"{args.host}:{args.port}", num_loops=args.loops, protocol=protocol, tls=tls
    )
    # SIGINT (Ctrl+C) and SIGTERM stop the server cleanly: clients get close code 1001.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: server.stop())
    host, port = server.address
    print(f"pygev websocket echo listening on {host}:{port}", flush=True)
    server.start()


if __name__ == "__main__":
    main()

"""WebSocket client for the Autobahn|Testsuite's fuzzingserver: echoes every message.

    python examples/autobahn_client.py ws://127.0.0.1:9001 pygev

The standard Autobahn client dance: read the number of cases from ``URL/getCaseCount``,
then for each case connect to ``URL/runCase?case=i&agent=AGENT`` and send every message
back as it came (text as text, binary as binary) until the server closes, then connect to
``URL/updateReports?agent=AGENT`` so that the server writes its report. The cases run one
after another on one pygev server without a listener (``address=None``): its loop threads
do the handshakes, masking, fragments, UTF-8 checks, permessage-deflate, pings and closing
handshakes; Python sees whole messages. ``scripts/autobahn.sh client`` runs the suite
against it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from urllib.parse import quote

import pygev


class Visit(pygev.WebSocketHandler):
    """One connection to the fuzzingserver: echoes every message (a case) or keeps the
    first one (``getCaseCount``, whose answer echoed would be read as a command), and says
    when it closed."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.closed = threading.Event()
        self.first_message: str | bytes | None = None

    def on_message(self, conn: pygev.Connection, data: str | bytes) -> str | bytes | None:
        if self.first_message is None:
            self.first_message = data
        return data if self.echo else None

    def on_close(self, conn: pygev.Connection) -> None:
        self.closed.set()


class Client:
    """Dials the fuzzingserver's URLs one at a time from a pygev server's loops."""

    def __init__(self, server: pygev.Server, protocol: pygev.WebSocket, timeout: float) -> None:
        self.server = server
        self.protocol = protocol
        self.timeout = timeout

    def visit(self, url: str, *, echo: bool = False) -> Visit | None:
        """Connects to ``url`` and waits until the connection closed; ``None`` when the
        handshake failed (the server refused it, or it timed out)."""
        visit = Visit(echo)
        future = self.server.connect(url, handler=visit, protocol=self.protocol)
        try:
            conn = future.result(self.timeout)
        except (pygev.WebSocketHandshakeError, OSError) as exc:
            future.cancel()  # closes the connection when the wait, not the dial, timed out
            logging.warning("%s: handshake failed: %r", url, exc)
            return None
        if not visit.closed.wait(self.timeout):
            logging.warning(
                "%s: not closed by the server within %ss; closing it", url, self.timeout
            )
            conn.close(1001, "autobahn_client: case timeout")
            visit.closed.wait(self.timeout)
        return visit

    def run(self, url: str, agent: str) -> int:
        """The whole dance; returns the exit status."""
        counter = self.visit(f"{url}/getCaseCount")
        if counter is None or not isinstance(counter.first_message, str):
            logging.error("%s/getCaseCount sent no count", url)
            return 1
        count = int(counter.first_message)
        print(f"pygev autobahn client: {count} cases, agent={agent}", flush=True)
        failed_handshakes = 0
        for case in range(1, count + 1):
            if self.visit(f"{url}/runCase?case={case}&agent={quote(agent)}", echo=True) is None:
                failed_handshakes += 1
        if self.visit(f"{url}/updateReports?agent={quote(agent)}") is None:
            logging.error("%s/updateReports failed", url)
            return 1
        print(f"pygev autobahn client: done ({failed_handshakes} failed handshakes)", flush=True)
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the fuzzingserver, e.g. ws://127.0.0.1:9001")
    parser.add_argument("agent", help="the name the report gives this client")
    parser.add_argument("--no-compression", action="store_true", help="offer no permessage-deflate")
    parser.add_argument(
        "--max-message-size", type=int, default=16 << 20, help="bytes (default 16 MiB, as 9.1.6)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # No keepalive pings: a case expects exactly the frames it asked for.
    protocol = pygev.WebSocket(
        max_message_size=args.max_message_size,
        compression=not args.no_compression,
        ping_interval=None,
    )
    server = pygev.Server(pygev.WebSocketHandler(), None, num_loops=1, protocol=protocol)
    client = Client(server, protocol, args.timeout)
    status = 1

    def dance() -> None:
        nonlocal status
        try:
            status = client.run(args.url.rstrip("/"), args.agent)
        except RuntimeError as exc:  # the server was stopped (SIGTERM, Ctrl+C)
            logging.error("stopped: %s", exc)
        finally:
            server.stop()

    # start() runs the callbacks on this thread; the dance waits for them on another.
    # SIGTERM (and Ctrl+C) stop the server, which ends the dance's pending connection.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: server.stop())
    driver = threading.Thread(target=dance, name="autobahn-dance", daemon=True)
    driver.start()
    server.start()
    driver.join(1.0)
    sys.exit(status)


if __name__ == "__main__":
    main()

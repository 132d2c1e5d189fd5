"""WebSocket client: sends each line of stdin as a text message and prints every reply.

    python examples/websocket_echo.py --port 9001 &
    printf 'hello\\nworld\\n' | python examples/websocket_client.py ws://127.0.0.1:9001/

At the end of stdin the client waits for as many replies as it sent lines (at most
``--timeout`` seconds of quiet), then closes with code 1000 and exits once the server
answered the close. The loop thread does the handshake (a
random key, the 101 checked), masks every frame, answers pings, reassembles fragments and
(de)compresses; Python sees whole messages. ``wss://`` URLs speak TLS (``--ca-file`` for
a private CA). A refused handshake prints its status and body and exits with 1.
"""

from __future__ import annotations

import argparse
import sys
import threading

import pygev


class Printer(pygev.WebSocketHandler):
    """Prints every message: text as a line, binary as its length."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.replies = threading.Condition()
        self.count = 0

    def on_message(self, conn: pygev.Connection, data: str | bytes) -> None:
        if isinstance(data, str):
            print(data, flush=True)
        else:
            print(f"<{len(data)} bytes>", flush=True)
        with self.replies:
            self.count += 1
            self.replies.notify_all()

    def on_close(self, conn: pygev.Connection) -> None:
        self.closed.set()
        with self.replies:
            self.replies.notify_all()

    def wait_replies(self, count: int, quiet: float) -> None:
        """Waits until `count` replies came, the server closed, or none came for `quiet`
        seconds."""
        with self.replies:
            while self.count < count and not self.closed.is_set():
                before = self.count
                self.replies.wait(quiet)
                if self.count == before:
                    return


def header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"a header is NAME:VALUE, got {text!r}")
    return name.strip(), value.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws://host:port/path or wss://...")
    parser.add_argument("--header", type=header, action="append", default=[], metavar="N:V")
    parser.add_argument("--subprotocol", action="append", default=[], help="offer it")
    parser.add_argument("--origin", help="the Origin header")
    parser.add_argument("--ca-file", help="trust this CA for wss:// (default: the system's)")
    parser.add_argument("--no-compression", action="store_true", help="offer no compression")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to connect")
    args = parser.parse_args()

    printer = Printer()
    reactor = pygev.Server(printer, None)  # no listener: it only dials
    thread = threading.Thread(target=reactor.start, daemon=True)
    thread.start()
    if args.ca_file and not args.url.lower().startswith("wss://"):
        parser.error("--ca-file is for wss:// URLs")
    tls = pygev.TLS(ca_file=args.ca_file) if args.ca_file else None
    future = reactor.connect(
        args.url,
        protocol=pygev.WebSocket(compression=not args.no_compression),
        timeout=args.timeout,
        tls=tls,
        headers=args.header,
        subprotocols=args.subprotocol,
        origin=args.origin,
    )
    try:
        conn = future.result(args.timeout + 10)
    except pygev.WebSocketHandshakeError as refused:
        print(refused, file=sys.stderr)
        if refused.body:
            print(refused.body.decode(errors="replace"), file=sys.stderr)
        reactor.stop()
        return 1
    except OSError as failed:
        print(failed, file=sys.stderr)
        reactor.stop()
        return 1
    sent = 0
    for line in sys.stdin:
        if printer.closed.is_set():
            break  # the server closed
        try:
            conn.send(line.rstrip("\r\n"))
        except pygev.ConnectionClosed:
            break  # the server closed meanwhile
        sent += 1
    printer.wait_replies(sent, args.timeout)
    conn.close(1000, "end of input")
    printer.closed.wait(args.timeout)
    reactor.stop()
    thread.join(args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""WebSocket chat: every text message a client sends goes to every connected client.

    python examples/websocket_chat.py --port 9002
    python examples/websocket_chat.py --client --port 9002 --name ann   # type lines

Clients may pick a name with the query string (``ws://host:port/?name=ann``); the
``on_handshake`` hook reads it, refuses a name already in use (HTTP 409) and accepts the
``chat`` subprotocol when offered. Joins and leaves are announced to everyone.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from urllib.parse import parse_qs

import pygev

log = logging.getLogger("websocket_chat")


class Chat(pygev.WebSocketHandler):
    """Keeps the connected clients and broadcasts what each one says."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.clients: dict[int, pygev.Connection] = {}

    def on_handshake(self, conn: pygev.Connection, request: pygev.WebSocketRequest) -> object:
        name = parse_qs(request.query or "").get("name", [f"guest{conn.id}"])[0][:32]
        if name in self.names.values():
            return pygev.Reject(409, f"the name {name} is taken")
        self.names[conn.id] = name
        subprotocol = "chat" if "chat" in request.subprotocols else None
        return pygev.Accept(subprotocol=subprotocol)

    def on_connect(self, conn: pygev.Connection) -> None:
        self.clients[conn.id] = conn
        self.broadcast(f"* {self.names[conn.id]} joined ({len(self.clients)} here)")

    def on_message(self, conn: pygev.Connection, data: str | bytes) -> None:
        if isinstance(data, bytes):
            conn.close(1003, "text only")
            return
        self.broadcast(f"{self.names[conn.id]}: {data}")

    def on_close(self, conn: pygev.Connection) -> None:
        self.clients.pop(conn.id, None)
        name = self.names.pop(conn.id, "?")
        self.broadcast(f"* {name} left ({len(self.clients)} here)")

    def broadcast(self, text: str) -> None:
        log.info("%s", text)
        for client in self.clients.values():
            try:
                client.send(text)
            except pygev.ConnectionClosed:
                pass  # closing: on_close removes it soon


def run_client(host: str, port: int, name: str) -> None:
    """A line-based client: lines typed are sent; what arrives is printed."""
    from websockets.sync.client import connect

    with connect(f"ws://{host}:{port}/?name={name}", subprotocols=["chat"]) as ws:  # type: ignore[list-item]

        def show() -> None:
            for message in ws:
                print(message, flush=True)

        threading.Thread(target=show, daemon=True).start()
        for line in sys.stdin:
            ws.send(line.rstrip("\n"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9002, help="0 picks a free port")
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--client", action="store_true", help="run a chat client instead")
    parser.add_argument("--name", default="me", help="the client's name")
    args = parser.parse_args()
    if args.client:
        run_client(args.host, args.port, args.name)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = pygev.Server(Chat(), f"{args.host}:{args.port}", num_loops=args.loops)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: server.stop())
    host, port = server.address
    print(f"pygev websocket chat listening on {host}:{port}", flush=True)
    server.start()


if __name__ == "__main__":
    main()

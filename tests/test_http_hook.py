"""Plain HTTP requests on a WebSocket port (not upgrades): a handler's ``on_http_request``
answers them with a small response, so a load balancer's ``GET /healthz`` works; without
the hook, or when it answers ``None``, they are refused as before (400/426)."""

from __future__ import annotations

import asyncio
import socket
from typing import Callable

from conftest import WAIT, LogCapture, ServerThread, recv_exactly, recv_until_eof, wait_until
from wsraw import BINARY, frame, read_response, upgrade_request

import pygev

Serve = Callable[..., ServerThread]


def http(server: ServerThread, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends `request`; the status, headers and body of the answer, read to the close."""
    with server.connect() as sock:
        sock.sendall(request)
        status, headers, rest = read_response(sock)
        body = rest + recv_until_eof(sock)
    return status, headers, body


def get(path: str, version: str = "1.1", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nHost: 127.0.0.1\r\nUser-Agent: lb\r\n\r\n".encode()


class Health(pygev.WebSocketHandler):
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None, str, str | None]] = []
        self.events: list[str] = []
        self.healthy = True

    def on_connect(self, conn: pygev.Connection) -> None:
        self.events.append("connect")

    def on_close(self, conn: pygev.Connection) -> None:
        self.events.append("close")

    def on_message(self, conn: pygev.Connection, data: str | bytes) -> str | bytes:
        return data

    def on_http_request(
        self, conn: pygev.Connection, request: pygev.HttpRequest
    ) -> pygev.Response | None:
        self.requests.append(
            (
                request.method,
                request.path,
                request.query,
                request.version,
                request.header("USER-AGENT"),
            )
        )
        if request.path == "/healthz":
            if not self.healthy:
                return pygev.Response(503, "draining\n")
            return pygev.Response(200, "ok\n", headers=[("Cache-Control", "no-store")])
        if request.path == "/bytes":
            return pygev.Response(404, b"\x00\x01", headers=[("Content-Type", "application/x")])
        if request.path == "/boom":
            raise RuntimeError("the hook failed")
        if request.path == "/bad":
            return pygev.Response(200, "x", headers=[("Content-Length", "99")])
        if request.path == "/wrong":
            return "not a response"  # type: ignore[return-value]
        return None


def test_the_hook_answers_plain_requests(serve: Serve) -> None:
    handler = Health()
    server = serve(handler)
    status, headers, body = http(server, get("/healthz?deep=1"))
    assert (status, body) == (200, b"ok\n")
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    assert headers["content-length"] == "3" and headers["connection"] == "close"
    assert http(server, get("/bytes", version="1.0")) == (
        404,
        {"content-type": "application/x", "content-length": "2", "connection": "close"},
        b"\x00\x01",
    )
    status, headers, body = http(server, get("/healthz", method="HEAD"))
    assert (status, headers["content-length"], body) == (200, "3", b""), "no body to HEAD"
    handler.healthy = False
    assert http(server, get("/healthz"))[0] == 503
    assert handler.requests[:2] == [
        ("GET", "/healthz", "deep=1", "HTTP/1.1", "lb"),
        ("GET", "/bytes", None, "HTTP/1.0", "lb"),
    ]
    wait_until(lambda: server.stats()["closed"] == 4, what="the 4 requests closed")
    server.stop()  # (every callback queued before has run)
    assert handler.events == [], "no on_connect or on_close for a plain request"


def test_none_refuses_as_without_the_hook(serve: Serve) -> None:
    hooked = Health()
    with_hook = serve(hooked)
    without = serve(pygev.WebSocketHandler())
    answers = [http(server, get("/other")) for server in (with_hook, without)]
    assert answers[0] == answers[1]
    assert answers[0][0] == 400 and answers[0][2] == b"missing Upgrade: websocket\n"
    # Not plain requests: the upgrade's own refusals, the hook never asked.
    post = b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
    assert http(with_hook, post)[0] == 400
    bad_upgrade = b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"
    assert http(with_hook, bad_upgrade)[0] == 400
    assert [r[1] for r in hooked.requests] == ["/other"], "the hook saw the plain one only"


def test_a_failing_or_wrong_hook_answers_500(serve: Serve, pygev_log: LogCapture) -> None:
    server = serve(Health())
    for path, why in (
        ("/boom", "the hook failed"),
        ("/bad", "Content-Length"),
        ("/wrong", "must return pygev.Response"),
    ):
        assert http(server, get(path))[0] == 500
        record = pygev_log.wait_for("on_http_request raised")
        assert record.exc_info is not None and why in str(record.exc_info[1])
        pygev_log.records.clear()
    assert http(server, get("/healthz"))[0] == 200, "the server goes on"


def test_upgrades_still_work_beside_the_hook(serve: Serve) -> None:
    handler = Health()
    server = serve(handler)
    request, _ = upgrade_request("/healthz")
    with server.connect() as sock:
        sock.sendall(request)
        status, _, _ = read_response(sock)
        assert status == 101
        sock.sendall(frame(BINARY, b"still a websocket", mask=True))
        assert recv_exactly(sock, 19) == b"\x82\x11still a websocket"
    assert handler.requests == []


def test_an_async_hook(serve: Serve) -> None:
    class AsyncHealth(pygev.WebSocketHandler):
        async def on_http_request(
            self, conn: pygev.Connection, request: pygev.HttpRequest
        ) -> pygev.Response:
            await asyncio.sleep(0.01)  # a dependency's check
            return pygev.Response(200, f"checked {request.path}")

    server = ServerThread(AsyncHealth(), "127.0.0.1:0")

    async def main() -> None:
        serving = asyncio.ensure_future(server.server.serve())
        try:
            result = await asyncio.to_thread(http, server, get("/ready"))
            assert result[0] == 200 and result[2] == b"checked /ready"
        finally:
            server.server.stop()
            await asyncio.wait_for(serving, WAIT)

    asyncio.run(main())


def test_a_request_split_anywhere_is_answered(serve: Serve) -> None:
    server = serve(Health())
    request = get("/healthz")
    with server.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(request)):
            sock.sendall(request[i : i + 1])
        status, _, rest = read_response(sock)
        assert status == 200 and rest + recv_until_eof(sock) == b"ok\n"

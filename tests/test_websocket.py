"""WebSocket (RFC 6455 and RFC 7692) against real clients: the `websockets` library for what
a well-behaved client does, and a raw socket client (tests/wsraw.py) for what it must not."""

from __future__ import annotations

import socket
import struct
import threading
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import websockets.sync.client as ws_client
from conftest import WAIT, LogCapture, ServerThread, expect_eof, expect_reset, recv_until_eof
from websockets.exceptions import InvalidStatus
from wsraw import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    RawClient,
    deflate_message,
    frame,
    read_response,
    upgrade_request,
)

import pygev

Serve = Callable[..., ServerThread]


class Recorder(pygev.WebSocketHandler):
    """Records every callback per connection id and echoes."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.cond = threading.Condition()
        self.events: dict[int, list[tuple[str, Any]]] = {}
        self.conns: dict[int, pygev.Connection] = {}

    def _record(self, conn: pygev.Connection, kind: str, value: Any = None) -> None:
        with self.cond:
            self.events.setdefault(conn.id, []).append((kind, value))
            self.cond.notify_all()

    def on_connect(self, conn: pygev.Connection) -> None:
        with self.cond:
            self.conns[conn.id] = conn
        self._record(conn, "connect")

    def on_message(self, conn: pygev.Connection, data: str | bytes) -> str | bytes | None:
        self._record(conn, "message", data)
        return data if self.echo else None

    def on_close(self, conn: pygev.Connection) -> None:
        self._record(conn, "close")

    def wait(self, predicate: Callable[[], Any], what: str = "handler state") -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, WAIT), f"timed out waiting for {what}"

    def kinds(self, conn_id: int) -> list[str]:
        with self.cond:
            return [k for k, _ in self.events.get(conn_id, [])]

    def closed_ids(self) -> list[int]:
        with self.cond:
            return [i for i, ev in self.events.items() if ("close", None) in ev]


def url(server: ServerThread, path: str = "/") -> str:
    return f"ws://{server.host}:{server.port}{path}"


def client(server: ServerThread, **kwargs: Any) -> Any:
    kwargs.setdefault("open_timeout", WAIT)
    kwargs.setdefault("close_timeout", WAIT)
    kwargs.setdefault("max_size", None)
    kwargs.setdefault("proxy", None)
    return ws_client.connect(url(server, kwargs.pop("path", "/")), **kwargs)


@pytest.fixture
def ws_echo(serve: Serve) -> ServerThread:
    return serve(Recorder(), num_loops=2)


# ---- messages ------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "deflate"])
@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 1 << 20])
def test_text_and_binary_echo_keep_their_type(
    ws_echo: ServerThread, compression: str | None, size: int
) -> None:
    text = ("añ€😀" * (size // 10 + 1))[: size // 4] if size else ""
    binary = bytes(range(256)) * (size // 256) + bytes(size % 256)
    with client(ws_echo, compression=compression) as ws:
        ws.send(text)
        assert ws.recv(timeout=WAIT) == text
        ws.send(binary)
        got = ws.recv(timeout=WAIT)
        assert isinstance(got, bytes) and got == binary


def test_sixteen_mib_messages_both_ways(serve: Serve) -> None:
    server = serve(Recorder(), protocol=pygev.WebSocket(max_message_size=16 << 20))
    payload = bytes(range(251)) * ((16 << 20) // 251) + b"x" * ((16 << 20) % 251)
    assert len(payload) == 16 << 20
    with client(server, compression=None) as ws:
        ws.send(payload)
        assert ws.recv(timeout=WAIT) == payload
        text = "0123456789abcdé" * ((16 << 20) // 16)  # 16 MiB of UTF-8
        assert len(text.encode()) == 16 << 20
        ws.send(text)
        assert ws.recv(timeout=WAIT) == text


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_fragmented_messages_are_reassembled(
    ws_echo: ServerThread, compression: str | None
) -> None:
    with client(ws_echo, compression=compression) as ws:
        ws.send(["frag", "men", "", "ted ✓"])
        assert ws.recv(timeout=WAIT) == "fragmented ✓"
        ws.send([b"\x00" * 1000, b"\x01" * 70000, b"\x02"])
        assert ws.recv(timeout=WAIT) == b"\x00" * 1000 + b"\x01" * 70000 + b"\x02"


def test_fragments_with_control_frames_between(ws_echo: ServerThread) -> None:
    raw = RawClient(ws_echo.port)
    raw.send_frame(TEXT, "hé".encode()[:2], fin=False)  # a split character
    raw.send_frame(PING, b"mid")
    raw.send_frame(CONT, "hé".encode()[2:] + b" wo", fin=False)
    raw.send_frame(PONG, b"unasked")
    raw.send_frame(CONT, b"rld", fin=True)
    assert raw.read_frame() == (PONG, True, 0, b"mid")
    assert raw.read_message() == (TEXT, "hé world".encode())
    raw.close()


def test_pings_get_pongs_and_pongs_get_nothing(ws_echo: ServerThread) -> None:
    raw = RawClient(ws_echo.port)
    raw.send_frame(PONG, b"nobody asked")
    raw.send_frame(PING, b"")
    raw.send_frame(PING, b"x" * 125)
    raw.send_frame(TEXT, b"after")
    assert raw.read_frame() == (PONG, True, 0, b"")
    assert raw.read_frame() == (PONG, True, 0, b"x" * 125)
    assert raw.read_frame() == (TEXT, True, 0, b"after")
    raw.close()


def test_handler_sees_str_and_bytes_and_callbacks_in_order(serve: Serve) -> None:
    recorder = Recorder(echo=False)
    server = serve(recorder)
    with client(server, compression=None) as ws:
        ws.send("text")
        ws.send(b"bin")
        ws.send("")
        recorder.wait(
            lambda: len(recorder.events) == 1 and len(next(iter(recorder.events.values()))) == 4
        )
    recorder.wait(lambda: recorder.closed_ids(), "on_close")
    ((_, events),) = recorder.events.items()
    assert events == [
        ("connect", None),
        ("message", "text"),
        ("message", b"bin"),
        ("message", ""),
        ("close", None),
    ]


class Converting(pygev.WebSocketHandler):
    def on_message(self, conn: pygev.Connection, data: str | bytes) -> object:
        if data == "to-bytes":
            return b"\xff\x00"
        if data == b"to-text":
            return "é"
        if data == "bytearray":
            return bytearray(b"ba")
        if data == "none":
            return None
        if data == "bad":
            return 42
        return data


def test_returned_str_is_text_and_bytes_like_is_binary(serve: Serve, pygev_log: LogCapture) -> None:
    server = serve(Converting())
    raw = RawClient(server.port)
    raw.send_frame(TEXT, b"to-bytes")
    assert raw.read_message() == (BINARY, b"\xff\x00")
    raw.send_frame(BINARY, b"to-text")
    assert raw.read_message() == (TEXT, "é".encode())
    raw.send_frame(TEXT, b"bytearray")
    assert raw.read_message() == (BINARY, b"ba")
    raw.send_frame(TEXT, b"none")
    raw.send_frame(TEXT, b"bad")
    # Nothing for "none"; a bad return value fails only this connection, with 1011.
    raw.expect_close(1011)
    record = pygev_log.wait_for("on_message raised")
    assert "must return str, bytes or None" in LogCapture.formatted(record)
    with client(server, compression=None) as ws:
        ws.send("still serving")
        assert ws.recv(timeout=WAIT) == "still serving"


# ---- the server's side: send, ping, close, push ---------------------------------------------


class Commands(pygev.WebSocketHandler):
    """Text commands that make the server act on its own connection."""

    def on_message(self, conn: pygev.Connection, data: str | bytes) -> None:
        assert isinstance(data, str)
        command, _, arg = data.partition(" ")
        if command == "send":
            conn.send(arg)
            conn.send(arg.encode())
        elif command == "ping":
            conn.ping(arg.encode())
        elif command == "close":
            code, _, reason = arg.partition(" ")
            conn.close(int(code), reason)
        elif command == "push":
            threading.Thread(
                target=lambda: [conn.send(f"push {i}") for i in range(int(arg))]
            ).start()


def test_send_ping_and_close_from_the_server(serve: Serve) -> None:
    server = serve(Commands())
    raw = RawClient(server.port)
    raw.send_frame(TEXT, b"send hello")
    assert raw.read_message() == (TEXT, b"hello")
    assert raw.read_message() == (BINARY, b"hello")
    raw.send_frame(TEXT, b"ping abc")
    assert raw.read_frame() == (PING, True, 0, b"abc")
    raw.send_frame(TEXT, b"close 4001 going now")
    assert raw.expect_close(4001) == b"going now"


def test_push_from_another_thread(serve: Serve) -> None:
    server = serve(Commands())
    with client(server) as ws:
        ws.send("push 200")
        assert [ws.recv(timeout=WAIT) for _ in range(200)] == [f"push {i}" for i in range(200)]


def test_push_from_a_timer(serve: Serve) -> None:
    class Ticker(Recorder):
        def on_connect(self, conn: pygev.Connection) -> None:
            super().on_connect(conn)
            ticks = iter(range(3))

            def tick() -> None:
                n = next(ticks, None)
                if n is None:
                    timer.cancel()
                else:
                    conn.send(f"tick {n}")
                    conn.send(b"binary tick")

            timer = server.server.run_every(0.01, tick)

    server = serve(Ticker())
    with client(server) as ws:
        got = [ws.recv(timeout=WAIT) for _ in range(6)]
    assert got == ["tick 0", b"binary tick", "tick 1", b"binary tick", "tick 2", b"binary tick"]


def test_close_with_a_bad_code_or_reason_raises(serve: Serve) -> None:
    errors: list[BaseException] = []

    class Closer(pygev.WebSocketHandler):
        def on_message(self, conn: pygev.Connection, data: str | bytes) -> None:
            for code, reason in [(1005, ""), (999, ""), (5000, ""), (1000, "x" * 124)]:
                try:
                    conn.close(code, reason)
                except ValueError as exc:
                    errors.append(exc)
            for payload in [b"x" * 126]:
                try:
                    conn.ping(payload)
                except ValueError as exc:
                    errors.append(exc)
            conn.close(1000, "x" * 123)

    server = serve(Closer())
    raw = RawClient(server.port)
    raw.send_frame(TEXT, b"go")
    assert raw.expect_close(1000) == b"x" * 123
    assert len(errors) == 5


def test_send_on_a_tcp_connection_api_stays_the_same(serve: Serve) -> None:
    # ping() is WebSocket only; close() still takes no argument for TCP.
    seen: list[str] = []

    class Tcp(pygev.Handler):
        def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
            try:
                conn.ping()
            except TypeError as exc:
                seen.append(str(exc))
            conn.close()

    server = serve(Tcp())
    sock = server.connect()
    sock.sendall(b"x")
    expect_eof(sock)
    assert seen and "not a WebSocket" in seen[0]


# ---- the closing handshake ----------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 3000, 4999])
def test_a_client_close_is_echoed_and_on_close_runs_once(serve: Serve, code: int) -> None:
    recorder = Recorder()
    server = serve(recorder)
    raw = RawClient(server.port)
    raw.send_frame(TEXT, b"last words")
    raw.send_frame(CLOSE, struct.pack(">H", code) + b"bye")
    assert raw.read_message() == (TEXT, b"last words")  # the reply comes before the close
    assert raw.expect_close(code) == b""
    recorder.wait(lambda: recorder.closed_ids(), "on_close")
    (conn_id,) = recorder.events
    assert recorder.kinds(conn_id) == ["connect", "message", "close"]


def test_an_empty_close_is_answered_with_an_empty_close(ws_echo: ServerThread) -> None:
    raw = RawClient(ws_echo.port)
    raw.send_frame(CLOSE, b"")
    assert raw.read_frame() == (CLOSE, True, 0, b"")
    assert recv_until_eof(raw.sock) == b""


def test_websockets_client_closes_cleanly(ws_echo: ServerThread) -> None:
    with client(ws_echo) as ws:
        ws.send("x")
        assert ws.recv(timeout=WAIT) == "x"
        ws.close(code=1000, reason="done")
        assert ws.protocol.close_rcvd is not None
        assert ws.protocol.close_rcvd.code == 1000
        assert ws.protocol.close_rcvd_then_sent is False  # we closed first, the server echoed


def test_server_stop_sends_going_away(serve: Serve) -> None:
    recorder = Recorder()
    server = serve(recorder)
    raw = RawClient(server.port)
    raw.send_frame(TEXT, b"hi")
    assert raw.read_message() == (TEXT, b"hi")
    server.stop()
    assert raw.expect_close(1001) == b"server stopping"
    assert len(recorder.closed_ids()) == 1


# ---- bad frames: each fails only its own connection, with its close code -------------------

BAD_FRAMES: dict[str, tuple[list[bytes], int]] = {
    "unmasked frame": ([frame(TEXT, b"hi", mask=False)], 1002),
    "RSV1 without an extension": ([frame(TEXT, b"hi", rsv=4)], 1002),
    "RSV2": ([frame(BINARY, b"hi", rsv=2)], 1002),
    "RSV3": ([frame(BINARY, b"hi", rsv=1)], 1002),
    "reserved opcode 3": ([frame(3, b"")], 1002),
    "reserved control opcode 11": ([frame(11, b"")], 1002),
    "ping over 125 bytes": ([frame(PING, b"x" * 126)], 1002),
    "fragmented ping": ([frame(PING, b"x", fin=False)], 1002),
    "close over 125 bytes": ([frame(CLOSE, b"\x03\xe8" + b"x" * 124)], 1002),
    "continuation first": ([frame(CONT, b"x")], 1002),
    "text inside a fragmented message": (
        [frame(TEXT, b"a", fin=False), frame(TEXT, b"b")],
        1002,
    ),
    "close of one byte": ([frame(CLOSE, b"\x03")], 1002),
    "close code 1005": ([frame(CLOSE, struct.pack(">H", 1005))], 1002),
    "close code 2999": ([frame(CLOSE, struct.pack(">H", 2999))], 1002),
    "close reason not UTF-8": ([frame(CLOSE, b"\x03\xe8\xff\xfe")], 1002),
    "text not UTF-8": ([frame(TEXT, b"ok \xff")], 1007),
    "surrogate in text": ([frame(TEXT, b"\xed\xa0\x80")], 1007),
    # Fails on the first fragment's bad byte; the message never ends.
    "bad UTF-8 in an unfinished message": (
        [frame(TEXT, b"fine", fin=False), frame(CONT, b"\xc0\xaf", fin=False)],
        1007,
    ),
    "declared length over max_message_size": (
        [frame(BINARY, b"", length=(1 << 16) + 1)],
        1009,
    ),
    "fragments over max_message_size": (
        [frame(BINARY, b"x" * 40000, fin=False), frame(CONT, b"x" * 30000)],
        1009,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_bad_frames_fail_the_connection_with_their_code(
    serve: Serve, pygev_log: LogCapture, case: str
) -> None:
    wire, code = BAD_FRAMES[case]
    recorder = Recorder()
    server = serve(recorder, protocol=pygev.WebSocket(max_message_size=1 << 16, compression=False))
    bystander = RawClient(server.port)
    raw = RawClient(server.port)
    raw.send_frame(TEXT, b"before")
    for piece in wire:
        raw.sock.sendall(piece)
    assert raw.read_message() == (TEXT, b"before")
    raw.expect_close(code)
    assert pygev_log.wait_for(f"closing with {code}")
    # Only that connection: the other one still echoes, and on_close ran once for it.
    bystander.send_frame(BINARY, b"still here")
    assert bystander.read_message() == (BINARY, b"still here")
    recorder.wait(lambda: len(recorder.closed_ids()) == 1, "on_close")
    bystander.close()


def test_zip_bomb_is_refused_with_1009(serve: Serve) -> None:
    server = serve(Recorder(), protocol=pygev.WebSocket(max_message_size=1 << 20))
    raw = RawClient(server.port, extra=[("Sec-WebSocket-Extensions", "permessage-deflate")])
    assert raw.headers["sec-websocket-extensions"].startswith("permessage-deflate")
    bomb = deflate_message(b"\x00" * (64 << 20))
    assert len(bomb) < 100_000
    raw.send_frame(BINARY, bomb, rsv=4)
    raw.expect_close(1009)


def test_compressed_frames_without_the_extension_are_refused(ws_echo: ServerThread) -> None:
    raw = RawClient(ws_echo.port)
    raw.send_frame(BINARY, deflate_message(b"hello"), rsv=4)
    raw.expect_close(1002)


def test_compressed_messages_both_ways_with_a_raw_client(serve: Serve) -> None:
    server = serve(Recorder(), protocol=pygev.WebSocket(compression_threshold=16))
    offer = "permessage-deflate; client_no_context_takeover; client_max_window_bits"
    raw = RawClient(server.port, extra=[("Sec-WebSocket-Extensions", offer)])
    agreed = raw.headers["sec-websocket-extensions"]
    assert "client_no_context_takeover" in agreed
    text = "compress me " * 100
    for _ in range(3):  # the client resets its context each time, as agreed
        raw.send_frame(TEXT, deflate_message(text.encode()), rsv=4)
        opcode, fin, rsv, payload = raw.read_frame()
        assert (opcode, fin, rsv) == (TEXT, True, 4)  # compressed reply
        assert len(payload) < len(text)
    raw.send_frame(TEXT, b"short")  # uncompressed: under the threshold both ways
    assert raw.read_frame() == (TEXT, True, 0, b"short")


def test_compression_can_be_turned_off(serve: Serve) -> None:
    server = serve(Recorder(), protocol=pygev.WebSocket(compression=False))
    with client(server) as ws:  # offers permessage-deflate
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        ws.send("a" * 10000)
        assert ws.recv(timeout=WAIT) == "a" * 10000


def test_compression_with_context_takeover_over_many_messages(ws_echo: ServerThread) -> None:
    with client(ws_echo) as ws:
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        for i in range(50):
            message = f"message {i} " + "the same words again and again " * 20
            ws.send(message)
            assert ws.recv(timeout=WAIT) == message


# ---- handshakes ------------------------------------------------------------------------------

GOOD = upgrade_request()[0].decode()

BAD_HANDSHAKES: dict[str, tuple[bytes, int]] = {
    "POST": (GOOD.replace("GET", "POST", 1).encode(), 400),
    "HTTP/1.0": (GOOD.replace("HTTP/1.1", "HTTP/1.0", 1).encode(), 400),
    "no Host": (GOOD.replace("Host: 127.0.0.1\r\n", "").encode(), 400),
    "no Upgrade": (GOOD.replace("Upgrade: websocket\r\n", "").encode(), 400),
    "Upgrade: h2c": (GOOD.replace("Upgrade: websocket", "Upgrade: h2c").encode(), 400),
    "no Connection": (GOOD.replace("Connection: Upgrade\r\n", "").encode(), 400),
    "version 8": (GOOD.replace("Version: 13", "Version: 8").encode(), 426),
    "no version": (GOOD.replace("Sec-WebSocket-Version: 13\r\n", "").encode(), 426),
    "no key": (
        b"\r\n".join(line for line in GOOD.encode().split(b"\r\n") if b"Key" not in line),
        400,
    ),
    "short key": (
        b"\r\n".join(
            b"Sec-WebSocket-Key: c2hvcnQ=" if b"Key" in line else line
            for line in GOOD.encode().split(b"\r\n")
        ),
        400,
    ),
    "two keys": (
        GOOD.replace(
            "\r\n\r\n", "\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n"
        ).encode(),
        400,
    ),
    "a body": (GOOD.replace("\r\n\r\n", "\r\nContent-Length: 5\r\n\r\n").encode(), 400),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),
    "bad header line": (b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n", 400),
    "too large": (
        GOOD.replace("\r\n\r\n", "\r\nX-Big: " + "x" * 9000 + "\r\n\r\n").encode(),
        431,
    ),
    "too many headers": (
        GOOD.replace("\r\n\r\n", "".join(f"\r\nX-{i}: y" for i in range(70)) + "\r\n\r\n").encode(),
        431,
    ),
    "endless headers": (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 2000, 431),
}


@pytest.mark.parametrize("case", sorted(BAD_HANDSHAKES))
def test_bad_handshakes_get_an_http_error_and_a_close(
    ws_echo: ServerThread, pygev_log: LogCapture, case: str
) -> None:
    request, status = BAD_HANDSHAKES[case]
    sock = ws_echo.connect()
    sock.sendall(request)
    got, headers, _ = read_response(sock)
    assert got == status
    if status == 426:
        assert headers["sec-websocket-version"] == "13"
    assert headers["connection"] == "close"
    recv_until_eof(sock)
    assert pygev_log.wait_for(f"handshake refused with {status}")
    with client(ws_echo) as ws:  # the server goes on
        ws.send("ok")
        assert ws.recv(timeout=WAIT) == "ok"


def test_handshake_and_frames_arriving_one_byte_at_a_time(ws_echo: ServerThread) -> None:
    request, _ = upgrade_request(path="/a/b?c=d")
    sock = ws_echo.connect()
    for i in range(len(request)):
        sock.sendall(request[i : i + 1])
    status, _, rest = read_response(sock)
    assert status == 101 and rest == b""
    wire = frame(TEXT, "slowly ✓".encode())
    for i in range(len(wire)):
        sock.sendall(wire[i : i + 1])
    raw = RawClient.__new__(RawClient)
    raw.sock, raw.buffer, raw.headers = sock, b"", {}
    assert raw.read_message() == (TEXT, "slowly ✓".encode())
    sock.close()


def test_a_connection_that_never_completes_its_handshake_gets_no_callbacks(serve: Serve) -> None:
    recorder = Recorder()
    server = serve(recorder)
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
    sock.close()
    bad = server.connect()
    bad.sendall(b"POST / HTTP/1.1\r\n\r\n")
    recv_until_eof(bad)
    with client(server) as ws:
        ws.send("x")
        ws.recv(timeout=WAIT)
    recorder.wait(lambda: len(recorder.closed_ids()) == 1, "on_close")
    assert len(recorder.events) == 1  # only the real client


# ---- the on_handshake hook -----------------------------------------------------------------


class Gatekeeper(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[pygev.WebSocketRequest] = []

    def on_handshake(self, conn: pygev.Connection, request: pygev.WebSocketRequest) -> object:
        with self.cond:
            self.requests.append(request)
        if request.path == "/private":
            return pygev.Reject(403, "not for you")
        if request.path == "/chat":
            return pygev.Accept(subprotocol="chat.v2", headers=[("X-Room", request.query or "")])
        if request.path == "/wrong":
            return pygev.Accept(subprotocol="never-offered")
        if request.path == "/raise":
            raise RuntimeError("hook failed")
        if request.path == "/odd":
            return 42
        if request.path == "/close":
            conn.close()
            return None
        return None


def test_hook_sees_the_request_and_can_pick_a_subprotocol(serve: Serve) -> None:
    keeper = Gatekeeper()
    server = serve(keeper)
    with client(
        server,
        path="/chat?room=7",
        subprotocols=["chat.v1", "chat.v2"],
        origin="http://example.com",
        additional_headers={"X-Token": "secret"},
    ) as ws:
        assert ws.subprotocol == "chat.v2"
        assert ws.response.headers["X-Room"] == "room=7"
        ws.send("hi")
        assert ws.recv(timeout=WAIT) == "hi"
    (request,) = keeper.requests
    assert request.path == "/chat"
    assert request.query == "room=7"
    assert request.origin == "http://example.com"
    assert request.subprotocols == ["chat.v1", "chat.v2"]
    assert request.header("x-token") == "secret"
    assert request.header("X-TOKEN") == "secret"
    assert request.header("missing", "default") == "default"
    assert ("x-token", "secret") in request.headers


@pytest.mark.parametrize(
    ("path", "status", "log"),
    [
        ("/private", 403, None),
        ("/wrong", 500, "was not offered"),
        ("/raise", 500, "on_handshake raised"),
        ("/odd", 500, "on_handshake raised"),
    ],
)
def test_hook_refusals(
    serve: Serve, pygev_log: LogCapture, path: str, status: int, log: str | None
) -> None:
    keeper = Gatekeeper()
    server = serve(keeper)
    with pytest.raises(InvalidStatus) as info:
        client(server, path=path)
    assert info.value.response.status_code == status
    if status == 403:
        assert info.value.response.body == b"not for you\n"
    if log:
        assert pygev_log.wait_for(log)
    with client(server, path="/") as ws:
        ws.send("after")
        assert ws.recv(timeout=WAIT) == "after"
    keeper.wait(lambda: len(keeper.requests) == 2)
    assert sum(k == "connect" for ev in keeper.events.values() for k, _ in ev) == 1


def test_a_hook_that_closes_the_connection_gets_no_callbacks(serve: Serve) -> None:
    keeper = Gatekeeper()
    server = serve(keeper)
    request, _ = upgrade_request(path="/close")
    sock = server.connect()
    sock.sendall(request)
    assert recv_until_eof(sock) == b""  # no 101
    with client(server, path="/") as ws:
        ws.send("after")
        assert ws.recv(timeout=WAIT) == "after"
    keeper.wait(lambda: len(keeper.closed_ids()) == 1, "on_close of the second client")
    assert len(keeper.events) == 1


def test_frames_sent_right_behind_the_request_wait_for_the_hook(serve: Serve) -> None:
    server = serve(Gatekeeper())
    request, _ = upgrade_request(path="/")
    sock = server.connect()
    sock.sendall(request + frame(TEXT, b"eager") + frame(BINARY, b"client"))
    status, _, rest = read_response(sock)
    assert status == 101
    raw = RawClient.__new__(RawClient)
    raw.sock, raw.buffer, raw.headers = sock, rest, {}
    assert raw.read_message() == (TEXT, b"eager")
    assert raw.read_message() == (BINARY, b"client")
    sock.close()


def test_send_before_the_handshake_completes_raises(serve: Serve) -> None:
    errors: list[BaseException] = []

    class Eager(pygev.WebSocketHandler):
        def on_handshake(self, conn: pygev.Connection, request: pygev.WebSocketRequest) -> None:
            try:
                conn.send("too early")
            except RuntimeError as exc:
                errors.append(exc)

    server = serve(Eager())
    with client(server) as ws:
        ws.send("x")
    assert len(errors) == 1 and "handshake is not complete" in str(errors[0])


# ---- keepalive -------------------------------------------------------------------------------


def test_keepalive_pings_a_silent_peer_and_closes_one_that_never_answers(serve: Serve) -> None:
    server = serve(Recorder(), protocol=pygev.WebSocket(ping_interval=0.05, ping_timeout=0.2))
    answering = RawClient(server.port)
    silent = RawClient(server.port)
    # The answering peer gets a ping, answers it, and gets another one later: still open.
    opcode, _, _, payload = answering.read_frame()
    assert opcode == PING
    answering.send_frame(PONG, payload)
    assert answering.read_frame()[0] == PING
    # The silent one gets its ping, then 1011 and EOF.
    assert silent.read_frame()[0] == PING
    silent.expect_close(1011)
    answering.send_frame(TEXT, b"alive")
    assert answering.read_message() == (TEXT, b"alive")


# ---- API checks ------------------------------------------------------------------------------


def test_websocket_handler_defaults_to_the_websocket_protocol(serve: Serve) -> None:
    server = serve(Recorder())  # no protocol=
    with client(server) as ws:
        ws.send(b"default")
        assert ws.recv(timeout=WAIT) == b"default"


def test_mismatched_handler_and_protocol_are_refused() -> None:
    with pytest.raises(TypeError, match=r"needs a pygev\.WebSocketHandler"):
        pygev.Server(pygev.Handler(), "127.0.0.1:0", protocol=pygev.WebSocket())
    with pytest.raises(TypeError, match=r"serves only protocol=pygev\.WebSocket"):
        pygev.Server(Recorder(), "127.0.0.1:0", protocol=pygev.LengthPrefix())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_message_size": 0},
        {"server_max_window_bits": 8},
        {"client_max_window_bits": 16},
        {"ping_interval": 0},
        {"ping_timeout": -1},
        {"max_headers": 0},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        pygev.WebSocket(**kwargs)


def test_many_clients_at_once(ws_echo: ServerThread) -> None:
    clients = [RawClient(ws_echo.port) for _ in range(50)]
    for i, raw in enumerate(clients):
        for j in range(20):
            raw.send_frame(BINARY, f"{i}:{j}".encode())
    for i, raw in enumerate(clients):
        assert [raw.read_message() for _ in range(20)] == [
            (BINARY, f"{i}:{j}".encode()) for j in range(20)
        ]
        raw.send_frame(CLOSE, struct.pack(">H", 1000))
        raw.expect_close(1000)


def test_peer_vanishing_mid_frame_closes_quietly(serve: Serve) -> None:
    recorder = Recorder()
    server = serve(recorder)
    raw = RawClient(server.port)
    raw.sock.sendall(frame(BINARY, b"x" * 1000)[:500])
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.sock.close()  # RST
    recorder.wait(lambda: len(recorder.closed_ids()) == 1, "on_close")


# ---- closing races and edge cases ------------------------------------------------------------

DEFLATE_OFFER = [("Sec-WebSocket-Extensions", "permessage-deflate")]


def test_replies_before_a_close_go_out_on_compressed_connections(serve: Serve) -> None:
    server = serve(Recorder(), protocol=pygev.WebSocket(compression_threshold=0))
    raw = RawClient(server.port, extra=DEFLATE_OFFER)
    assert "permessage-deflate" in raw.headers["sec-websocket-extensions"]
    # A message, then the close, in one packet: the reply (compressed, packed by the loop)
    # must still go out before the close echo.
    raw.sock.sendall(
        frame(TEXT, deflate_message(b"hello"), rsv=4) + frame(CLOSE, struct.pack(">H", 1000))
    )
    opcode, _, rsv, payload = raw.read_frame()
    assert (opcode, rsv) == (TEXT, 4)
    assert zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff") == b"hello"
    assert raw.expect_close(1000) == b""


def test_an_app_close_while_the_peers_close_is_pending_still_sends_a_close(serve: Serve) -> None:
    class CloseOnMessage(pygev.WebSocketHandler):
        def on_message(self, conn: pygev.Connection, data: str | bytes) -> None:
            conn.close(4000, "app")

    server = serve(CloseOnMessage())
    raw = RawClient(server.port)
    raw.sock.sendall(frame(TEXT, b"bye") + frame(CLOSE, struct.pack(">H", 1000)))
    assert raw.expect_close(4000) == b"app"


def test_empty_compressed_messages_keep_the_stream_in_step(serve: Serve) -> None:
    server = serve(Recorder(), protocol=pygev.WebSocket(compression_threshold=0))
    raw = RawClient(server.port, extra=DEFLATE_OFFER)
    raw.send_frame(BINARY, b"", rsv=4)  # no deflate block at all
    raw.send_frame(BINARY, b"\x00", rsv=4)  # RFC 7692's empty message
    raw.send_frame(BINARY, deflate_message(b"payload"), rsv=4)
    inflater = zlib.decompressobj(wbits=-15)  # the server keeps its context: one stream
    for expected in (b"", b"", b"payload"):
        opcode, _, rsv, payload = raw.read_frame()
        assert (opcode, rsv) == (BINARY, 4)
        assert payload  # an empty message compressed is 0x00, never nothing
        assert inflater.decompress(payload + b"\x00\x00\xff\xff") == expected


def test_tiny_max_message_size_with_compression_does_not_break_the_loop(serve: Serve) -> None:
    server = serve(Recorder(), protocol=pygev.WebSocket(max_message_size=32))
    raw = RawClient(server.port, extra=DEFLATE_OFFER)
    raw.send_frame(BINARY, deflate_message(b"small"), rsv=4)
    assert raw.read_message()[1] == b"small"
    raw.send_frame(BINARY, deflate_message(b"x" * 100), rsv=4)
    raw.expect_close(1009)
    with client(server) as ws:  # the loop is alive
        ws.send(b"ok")
        assert ws.recv(timeout=WAIT) == b"ok"


def test_an_incomplete_handshake_times_out(serve: Serve) -> None:
    recorder = Recorder()
    server = serve(recorder, protocol=pygev.WebSocket(handshake_timeout=0.2))
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    assert expect_reset(sock) == b""
    assert recorder.events == {}


def test_sends_from_a_thread_started_in_on_connect_follow_the_101(serve: Serve) -> None:
    class Eager(Gatekeeper):
        def on_connect(self, conn: pygev.Connection) -> None:
            threading.Thread(target=conn.send, args=("first",)).start()

    server = serve(Eager())
    for _ in range(20):
        with client(server) as ws:  # the handshake would fail if a frame came first
            assert ws.recv(timeout=WAIT) == "first"


def test_api_misuse_on_websocket_connections(serve: Serve, pygev_log: LogCapture) -> None:
    seen: list[str] = []

    class Misuse(pygev.WebSocketHandler):
        def on_handshake(self, conn: pygev.Connection, request: pygev.WebSocketRequest) -> object:
            if request.path == "/reserved":
                return pygev.Accept(headers=[("Sec-WebSocket-Extensions", "permessage-deflate")])
            return None

        def on_message(self, conn: pygev.Connection, data: str | bytes) -> None:
            for call in (
                conn.shutdown_write,
                lambda: conn.close(70000),
                lambda: conn.close(1005),
            ):
                try:
                    call()
                except (TypeError, ValueError) as exc:
                    seen.append(type(exc).__name__)
            conn.close(1013, "try again later")

    server = serve(Misuse())
    raw = RawClient(server.port)
    raw.send_frame(TEXT, b"go")
    assert raw.expect_close(1013) == b"try again later"
    assert seen == ["TypeError", "ValueError", "ValueError"]
    with pytest.raises(InvalidStatus) as info:
        client(server, path="/reserved")
    assert info.value.response.status_code == 500
    assert pygev_log.wait_for("the handshake sets Sec-WebSocket-Extensions itself")

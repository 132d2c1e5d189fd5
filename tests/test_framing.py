"""Native framings (LengthPrefix, Delimited): whole frames reach the handler however the
bytes were split or glued on the wire; replies are framed; bad input closes only the
offending connection."""

from __future__ import annotations

import random
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Callable

import pytest
from conftest import (
    WAIT,
    Recorder,
    ServerThread,
    expect_eof,
    expect_reset,
    recv_exactly,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pygev

HEADER_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}


def frame(payload: bytes, header_size: int = 4, byteorder: str = "big") -> bytes:
    order = ">" if byteorder == "big" else "<"
    return struct.pack(order + HEADER_FORMATS[header_size], len(payload)) + payload


def messages_of(recorder: Recorder, conn_id: int) -> list[bytes]:
    with recorder.cond:
        return [v for k, v in recorder.events[conn_id] if k == "message"]


def only_conn_id(recorder: Recorder) -> int:
    recorder.wait(lambda: recorder.connects >= 1, what="the connection")
    with recorder.cond:
        return max(recorder.conns)


def send_pieces(sock: socket.socket, wire: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(wire) + 1) for c in cuts})
    start = 0
    for p in [*points, len(wire)]:
        if p > start:
            sock.sendall(wire[start:p])
        start = p


# ---- LengthPrefix -----------------------------------------------------------------------
# Every test runs twice: against the built-in pygev.LengthPrefix, and against the same
# framing built as a Rust plugin behind the C ABI (pygev-plugin), which must behave alike.

MakeLengthPrefix = Callable[..., object]


@pytest.fixture(params=["builtin", "plugin"])
def length_prefix(request: pytest.FixtureRequest) -> MakeLengthPrefix:
    def make(
        header_size: int = 4, byteorder: str = "big", max_frame_size: int | None = None
    ) -> object:
        if request.param == "builtin":
            return pygev.LengthPrefix(header_size, byteorder, max_frame_size)
        limit = max_frame_size if max_frame_size is not None else 16 << 20
        return pygev._pygev._length_prefix_plugin(header_size, byteorder, limit)

    return make


@pytest.mark.parametrize("header_size", [1, 2, 4, 8])
@pytest.mark.parametrize("byteorder", ["big", "little"])
def test_length_prefix_hands_over_payloads_and_frames_replies(
    serve: Callable[..., ServerThread],
    length_prefix: MakeLengthPrefix,
    header_size: int,
    byteorder: str,
) -> None:
    recorder = Recorder()
    server = serve(recorder, protocol=length_prefix(header_size, byteorder))
    rng = random.Random(header_size)
    payloads = [rng.randbytes(rng.randrange(0, 200)) for _ in range(30)] + [b""]
    wire = b"".join(frame(p, header_size, byteorder) for p in payloads)
    with server.connect() as sock:
        # One byte at a time for the first half, everything glued for the rest.
        half = len(wire) // 2
        for i in range(half):
            sock.sendall(wire[i : i + 1])
        sock.sendall(wire[half:])
        assert recv_exactly(sock, len(wire)) == wire
        assert messages_of(recorder, only_conn_id(recorder)) == payloads


def test_every_split_point_of_a_stream_of_frames(
    serve: Callable[..., ServerThread], length_prefix: MakeLengthPrefix
) -> None:
    recorder = Recorder()
    server = serve(recorder, protocol=length_prefix(2))
    payloads = [b"", b"a", b"hello", bytes(range(20)), b"\x00\x01"]
    wire = b"".join(frame(p, 2) for p in payloads)
    for at in range(len(wire) + 1):
        with server.connect() as sock:
            sock.sendall(wire[:at])
            sock.sendall(wire[at:])
            assert recv_exactly(sock, len(wire)) == wire, f"split at {at}"
    with recorder.cond:
        per_conn = [[v for k, v in evs if k == "message"] for evs in recorder.events.values()]
    assert per_conn == [payloads] * (len(wire) + 1)


def test_empty_frames_and_frames_of_exactly_max_frame_size(
    serve: Callable[..., ServerThread], length_prefix: MakeLengthPrefix
) -> None:
    recorder = Recorder()
    server = serve(recorder, protocol=length_prefix(4, max_frame_size=1000))
    payloads = [b"", b"x" * 1000, b"", b"y" * 999]
    wire = b"".join(frame(p) for p in payloads)
    with server.connect() as sock:
        sock.sendall(wire)
        assert recv_exactly(sock, len(wire)) == wire
    assert messages_of(recorder, only_conn_id(recorder)) == payloads


def test_declared_length_over_the_limit_closes_only_that_connection(
    serve: Callable[..., ServerThread], pygev_log, length_prefix: MakeLengthPrefix
) -> None:
    server = serve(Recorder(), protocol=length_prefix(4, max_frame_size=1000))
    with server.connect() as good, server.connect() as bad:
        good.sendall(frame(b"before"))
        assert recv_exactly(good, 10) == frame(b"before")
        # Only the header of the oversized frame is sent: it is refused on the header alone.
        bad.sendall(struct.pack(">I", 1001))
        assert expect_reset(bad) == b""
        record = pygev_log.wait_for("over max_frame_size")
        assert "frame declares 1001 bytes, over max_frame_size 1000" in record.getMessage()
        good.sendall(frame(b"after"))
        assert recv_exactly(good, 9) == frame(b"after")


def test_send_checks_the_payload_fits_the_header(
    serve: Callable[..., ServerThread], length_prefix: MakeLengthPrefix
) -> None:
    errors: list[BaseException] = []

    class Greeter(pygev.Handler):
        def on_connect(self, conn: pygev.Connection) -> None:
            try:
                conn.send(b"z" * 256)
            except ValueError as exc:
                errors.append(exc)
            conn.send(b"z" * 255)

    server = serve(Greeter(), protocol=length_prefix(1))
    with server.connect() as sock:
        assert recv_exactly(sock, 256) == frame(b"z" * 255, 1)
    assert len(errors) == 1
    assert "256 bytes does not fit in a 1-byte length header" in str(errors[0])


def test_thousand_pipelined_frames_per_connection_on_many_connections(
    serve: Callable[..., ServerThread], length_prefix: MakeLengthPrefix
) -> None:
    recorder = Recorder()
    server = serve(recorder, protocol=length_prefix(4), num_loops=2)
    results: dict[int, bool] = {}

    def client(index: int) -> None:
        rng = random.Random(index)
        payloads = [rng.randbytes(rng.randrange(0, 100)) for _ in range(1000)]
        wire = b"".join(frame(p) for p in payloads)
        with server.connect() as sock:
            sender = threading.Thread(target=sock.sendall, args=(wire,))
            sender.start()
            results[index] = recv_exactly(sock, len(wire)) == wire
            sender.join(WAIT)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 2)
    assert results == {i: True for i in range(40)}
    stats = server.stats()
    assert stats["events_dispatched"] >= 40_000
    # Frames of one connection arrive many per read, so batches carry many events.
    assert stats["events_dispatched"] > 4 * stats["batches_dispatched"]


# ---- Delimited ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "delimiter", [b"\n", b"\r\n", b"\x00", b"--boundary--", bytes(range(1, 17))]
)
def test_delimited_hands_over_frames_and_appends_the_delimiter(
    serve: Callable[..., ServerThread], delimiter: bytes
) -> None:
    recorder = Recorder()
    server = serve(recorder, protocol=pygev.Delimited(delimiter))
    framing = pygev.Delimited(delimiter)
    assert framing.delimiter == delimiter
    rng = random.Random(len(delimiter))
    payloads = [b"", b"one", b"two words"]
    payloads += [bytes(rng.choice(b"abcxyz") for _ in range(rng.randrange(50))) for _ in range(20)]
    wire = b"".join(p + delimiter for p in payloads)
    with server.connect() as sock:
        for i in range(len(wire)):
            sock.sendall(wire[i : i + 1])
        assert recv_exactly(sock, len(wire)) == wire
    assert messages_of(recorder, only_conn_id(recorder)) == payloads


def test_no_delimiter_within_the_limit_closes_only_that_connection(
    serve: Callable[..., ServerThread], pygev_log
) -> None:
    server = serve(Recorder(), protocol=pygev.Delimited(b"\r\n", max_frame_size=100))
    with server.connect() as good, server.connect() as bad:
        good.sendall(b"x" * 100 + b"\r\n")
        assert recv_exactly(good, 102) == b"x" * 100 + b"\r\n"
        bad.sendall(b"y" * 60)
        bad.sendall(b"y" * 60)
        assert expect_reset(bad) == b""
        record = pygev_log.wait_for("no delimiter within max_frame_size 100")
        assert "delimited" in record.getMessage()
        good.sendall(b"still here\r\n")
        assert recv_exactly(good, 12) == b"still here\r\n"


def test_a_payload_with_the_delimiter_inside_is_refused(
    serve: Callable[..., ServerThread], pygev_log
) -> None:
    errors: list[BaseException] = []

    class Lines(pygev.Handler):
        def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
            if data == b"send":
                try:
                    conn.send(b"two\nlines")
                except ValueError as exc:
                    errors.append(exc)
                return b"ok"
            return b"bad\nreply"  # a returned reply is checked the same way

    server = serve(Lines(), protocol=pygev.Delimited(b"\n"))
    with server.connect() as sock:
        sock.sendall(b"send\n")
        assert recv_exactly(sock, 3) == b"ok\n"
        assert len(errors) == 1 and "contains the delimiter" in str(errors[0])
        sock.sendall(b"other\n")
        expect_eof(sock)
    record = pygev_log.wait_for("sending on_message's reply raised")
    assert "contains the delimiter" in pygev_log.formatted(record)


# ---- properties -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def framed_servers() -> Iterator[dict[str, ServerThread]]:
    servers = {
        "length": ServerThread(Recorder(), protocol=pygev.LengthPrefix(2, "little")).start(),
        "lines": ServerThread(Recorder(), protocol=pygev.Delimited(b"\r\n")).start(),
    }
    yield servers
    for server in servers.values():
        server.stop()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=15),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_any_payloads_any_cuts_come_back_framed(
    framed_servers: dict[str, ServerThread], payloads: list[bytes], cuts: list[int]
) -> None:
    length_wire = b"".join(frame(p, 2, "little") for p in payloads)
    lines = [p.replace(b"\r", b"") for p in payloads]  # no delimiter inside a line
    lines_wire = b"".join(p + b"\r\n" for p in lines)
    for name, wire in (("length", length_wire), ("lines", lines_wire)):
        with framed_servers[name].connect() as sock:
            send_pieces(sock, wire, cuts)
            assert recv_exactly(sock, len(wire)) == wire

"""Framings written in Python: pygev.Protocol over pygev.RingBuffer, as in gev."""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable

import pytest
from conftest import Recorder, ServerThread, expect_reset, recv_exactly
from hypothesis import given, settings
from hypothesis import strategies as st

import pygev

HEADER = struct.Struct(">H")


class TwoByteLength(pygev.Protocol):
    """2-byte big-endian length, then the payload; the header's first byte is the ctx
    handed to on_message (as gev's protocols may return a context)."""

    def __init__(self) -> None:
        self.calls = 0

    def unpacket(
        self, conn: pygev.Connection, buffer: pygev.RingBuffer
    ) -> tuple[object, bytes] | None:
        self.calls += 1
        if buffer.virtual_length() < HEADER.size:
            return None
        (length,) = HEADER.unpack(buffer.virtual_read(HEADER.size))
        if buffer.virtual_length() < length:
            buffer.virtual_revert()
            return None
        payload = buffer.virtual_read(length)
        buffer.virtual_flush()
        return ("len", length), payload

    def packet(self, conn: pygev.Connection, data: bytes) -> bytes:
        return HEADER.pack(len(data)) + data


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


class CtxRecorder(Recorder):
    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes | None:
        self._record(conn, "message", (ctx, data))
        return data


def test_frames_and_their_ctx_reach_on_message_however_split(
    serve: Callable[..., ServerThread],
) -> None:
    recorder = CtxRecorder()
    protocol = TwoByteLength()
    server = serve(recorder, protocol=protocol)
    payloads = [b"", b"a", b"hello world", bytes(range(256)) * 3]
    wire = b"".join(frame(p) for p in payloads)
    with server.connect() as sock:
        for i in range(0, len(wire), 3):  # three bytes at a time
            sock.sendall(wire[i : i + 3])
        assert recv_exactly(sock, len(wire)) == wire
        sock.sendall(wire * 5)  # many frames glued: unpacket runs while it returns frames
        assert recv_exactly(sock, 5 * len(wire)) == wire * 5
    with recorder.cond:
        (events,) = recorder.events.values()
    messages = [v for k, v in events if k == "message"]
    assert messages == [(("len", len(p)), p) for p in payloads] * 6


def test_send_from_another_thread_goes_through_packet(
    serve: Callable[..., ServerThread],
) -> None:
    recorder = Recorder(echo=False)
    server = serve(recorder, protocol=TwoByteLength())
    with server.connect() as sock:
        recorder.wait(lambda: recorder.connects == 1, what="the connection")
        conn = next(iter(recorder.conns.values()))
        sender = threading.Thread(target=conn.send, args=(b"pushed",))
        sender.start()
        sender.join()
        assert recv_exactly(sock, 8) == frame(b"pushed")


def test_the_buffer_is_only_valid_inside_unpacket(serve: Callable[..., ServerThread]) -> None:
    kept: list[pygev.RingBuffer] = []

    class Keeper(TwoByteLength):
        def unpacket(
            self, conn: pygev.Connection, buffer: pygev.RingBuffer
        ) -> tuple[object, bytes] | None:
            kept.append(buffer)
            return super().unpacket(conn, buffer)

    server = serve(Recorder(), protocol=Keeper())
    with server.connect() as sock:
        sock.sendall(frame(b"abc") + b"\x00")  # a frame, and one byte left in the buffer
        assert recv_exactly(sock, 5) == frame(b"abc")
    assert kept
    with pytest.raises(RuntimeError, match=r"only valid inside Protocol\.unpacket"):
        kept[-1].peek(1)
    with pytest.raises(RuntimeError, match="only valid inside"):
        len(kept[-1])
    with pytest.raises(RuntimeError, match="cannot be written to"):
        kept[-1].write(b"more")


def test_the_buffer_is_not_lent_while_on_message_runs(serve: Callable[..., ServerThread]) -> None:
    seen: list[str] = []

    class Grabber(TwoByteLength):
        def unpacket(
            self, conn: pygev.Connection, buffer: pygev.RingBuffer
        ) -> tuple[object, bytes] | None:
            conn.context = buffer
            return super().unpacket(conn, buffer)

    class Peeker(pygev.Handler):
        def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
            try:
                conn.context.peek(1)
                seen.append("usable")
            except RuntimeError:
                seen.append("refused")
            return data

    server = serve(Peeker(), protocol=Grabber())
    with server.connect() as sock:
        sock.sendall(frame(b"one") + frame(b"two"))
        assert recv_exactly(sock, 10) == frame(b"one") + frame(b"two")
    assert seen == ["refused", "refused"]


def test_a_send_packet_cannot_frame_raises_type_error_and_keeps_the_connection(
    serve: Callable[..., ServerThread],
) -> None:
    recorder = Recorder(echo=False)
    server = serve(recorder, protocol=pygev.Protocol())  # packet() returns data unchanged
    with server.connect() as sock:
        recorder.wait(lambda: recorder.connects == 1, what="the connection")
        conn = next(iter(recorder.conns.values()))
        with pytest.raises(TypeError, match=r"packet\(\) must return bytes.*got str"):
            conn.send("not bytes")
        conn.send(b"still open")
        assert recv_exactly(sock, 10) == b"still open"


@pytest.mark.parametrize(
    "mistake, message",
    [
        ("raise", "unpacket failure on purpose"),
        ("bad_return", "must return (ctx, payload) or None"),
        ("no_consume", "consumed no input"),
        ("packet_raise", "packet failure on purpose"),
        ("packet_type", "must return bytes, bytearray or memoryview, got int"),
    ],
)
def test_a_failing_protocol_closes_only_that_connection(
    serve: Callable[..., ServerThread], pygev_log, mistake: str, message: str
) -> None:
    class Faulty(TwoByteLength):
        def unpacket(self, conn, buffer):  # type: ignore[no-untyped-def]
            if buffer.peek(1) == b"!":
                if mistake == "raise":
                    raise ValueError("unpacket failure on purpose")
                if mistake == "bad_return":
                    return "not a pair"
                if mistake == "no_consume":
                    return None, b"same frame forever"
            return super().unpacket(conn, buffer)

        def packet(self, conn, data):  # type: ignore[no-untyped-def]
            if data == b"!bad":
                if mistake == "packet_raise":
                    raise ValueError("packet failure on purpose")
                if mistake == "packet_type":
                    return 42
            return super().packet(conn, data)

    server = serve(Recorder(), protocol=Faulty())
    with server.connect() as good, server.connect() as bad:
        good.sendall(frame(b"before"))
        assert recv_exactly(good, 8) == frame(b"before")
        if mistake.startswith("packet"):
            bad.sendall(frame(b"!bad"))  # echoed, so its reply goes through packet()
        else:
            bad.sendall(b"!")
        assert expect_reset(bad) == b""
        record = pygev_log.wait_for("raised; resetting connection")
        assert message in pygev_log.formatted(record)
        good.sendall(frame(b"after"))
        assert recv_exactly(good, 7) == frame(b"after")


def test_a_send_that_packet_refuses_raises_connection_closed(
    serve: Callable[..., ServerThread], pygev_log
) -> None:
    class Refuser(TwoByteLength):
        def packet(self, conn: pygev.Connection, data: bytes) -> bytes:
            raise ValueError("cannot frame this")

    recorder = Recorder(echo=False)
    server = serve(recorder, protocol=Refuser())
    with server.connect() as sock:
        recorder.wait(lambda: recorder.connects == 1, what="the connection")
        conn = next(iter(recorder.conns.values()))
        with pytest.raises(pygev.ConnectionClosed, match="packet\\(\\) raised") as info:
            conn.send(b"x")
        assert isinstance(info.value.__cause__, ValueError)
        assert expect_reset(sock) == b""
    assert "cannot frame this" in pygev_log.formatted(pygev_log.wait_for("Protocol.packet()"))


def test_unparsed_input_is_bounded_by_max_input_buffer(
    serve: Callable[..., ServerThread], pygev_log
) -> None:
    class Never(pygev.Protocol):
        def unpacket(
            self, conn: pygev.Connection, buffer: pygev.RingBuffer
        ) -> tuple[object, bytes] | None:
            return None  # waits forever for a frame that never completes

    server = serve(Recorder(), protocol=Never(), max_input_buffer=64 * 1024)
    with server.connect() as sock:
        sock.sendall(b"x" * 100_000)
        assert expect_reset(sock) == b""
    record = pygev_log.wait_for("over max_input_buffer")
    assert "over max_input_buffer 65536" in record.getMessage()


def test_default_protocol_methods_pass_bytes_through(serve: Callable[..., ServerThread]) -> None:
    server = serve(Recorder(), protocol=pygev.Protocol())
    with server.connect() as sock:
        sock.sendall(b"as it is")
        assert recv_exactly(sock, 8) == b"as it is"


def test_a_protocol_must_be_a_pygev_protocol() -> None:
    with pytest.raises(TypeError, match=r"pygev\.Protocol instance"):
        pygev.Server(pygev.Handler(), "127.0.0.1:0", protocol=object())


# ---- RingBuffer against a model ------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.binary(max_size=50)),
        st.tuples(
            st.sampled_from(["peek", "read", "retrieve", "virtual_read"]),
            st.integers(0, 60),
        ),
        st.tuples(
            st.sampled_from(["retrieve_all", "virtual_flush", "virtual_revert", "bytes"]),
            st.none(),
        ),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(operations)
def test_ring_buffer_matches_a_bytes_model(ops: list[tuple[str, object]]) -> None:
    buf = pygev.RingBuffer()
    model = bytearray()
    cursor = 0  # the virtual read cursor
    for op, arg in ops:
        if op == "write":
            assert isinstance(arg, bytes)
            buf.write(arg)
            model += arg
        elif op == "peek":
            assert buf.peek(arg) == bytes(model[:arg])  # type: ignore[misc]
        elif op == "read":
            n = min(arg, len(model))  # type: ignore[type-var]
            assert buf.read(n) == bytes(model[:n])
            del model[:n]
            cursor = 0
        elif op == "retrieve":
            buf.retrieve(arg)  # type: ignore[arg-type]
            del model[: min(arg, len(model))]  # type: ignore[type-var]
            cursor = 0
        elif op == "retrieve_all":
            buf.retrieve_all()
            model.clear()
            cursor = 0
        elif op == "virtual_read":
            n = min(arg, len(model) - cursor)  # type: ignore[type-var]
            assert buf.virtual_read(arg) == bytes(model[cursor : cursor + n])  # type: ignore[arg-type]
            cursor += n
        elif op == "virtual_flush":
            buf.virtual_flush()
            del model[:cursor]
            cursor = 0
        elif op == "virtual_revert":
            buf.virtual_revert()
            cursor = 0
        elif op == "bytes":
            assert buf.bytes() == bytes(model)
        assert len(buf) == buf.len() == len(model)
        assert buf.virtual_length() == len(model) - cursor

"""Rust protocol plugins through the C ABI (pygev-plugin): what `protocol=` accepts, what it
refuses with a clear error, and how a failing or panicking plugin is contained. The framing
tests in test_framing.py run against a plugin twin of LengthPrefix as well."""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable

import pytest
from conftest import Recorder, ServerThread, expect_reset, recv_exactly

import pygev

MAGIC = int.from_bytes(b"pygevPRO", "big")

capsule_new = ctypes.pythonapi.PyCapsule_New
capsule_new.restype = ctypes.py_object
capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def fake_capsule(name: bytes, magic: int, version: int, size: int) -> tuple[object, object]:
    """A capsule over a table head that is not a real plugin (and the buffer it points to,
    which must outlive it)."""
    head = ctypes.create_string_buffer(struct.pack("<QIIQ", magic, version, 0, size) + bytes(64))
    return capsule_new(ctypes.addressof(head), name, None), head


@pytest.mark.parametrize(
    ("name", "magic", "version", "size", "error", "match"),
    [
        (b"other.name", MAGIC, 1, 200, TypeError, 'must be named "pygev.protocol"'),
        (b"pygev.protocol", 0x1234, 1, 200, ValueError, "not a pygev protocol table"),
        (b"pygev.protocol", MAGIC, 99, 200, ValueError, "ABI version 99"),
        (b"pygev.protocol", MAGIC, 1, 16, ValueError, "has 16 bytes"),
    ],
)
def test_a_bad_capsule_is_refused_at_server_construction(
    name: bytes, magic: int, version: int, size: int, error: type[Exception], match: str
) -> None:
    capsule, _head = fake_capsule(name, magic, version, size)
    with pytest.raises(error, match=match):
        pygev.Server(pygev.Handler(), "127.0.0.1:0", protocol=capsule)


def test_an_object_with_pygev_protocol_is_accepted(serve: Callable[..., ServerThread]) -> None:
    class Framing:
        def __pygev_protocol__(self) -> object:
            return pygev._pygev._length_prefix_plugin(2)

    server = serve(Recorder(), protocol=Framing())
    with server.connect() as sock:
        sock.sendall(b"\x00\x02hi")
        assert recv_exactly(sock, 4) == b"\x00\x02hi"


def test_pygev_protocol_must_return_a_capsule() -> None:
    class Wrong:
        def __pygev_protocol__(self) -> object:
            return 42

    with pytest.raises(TypeError, match="must return a"):
        pygev.Server(pygev.Handler(), "127.0.0.1:0", protocol=Wrong())


def test_a_panic_in_unpack_closes_only_that_connection(
    serve: Callable[..., ServerThread], pygev_log
) -> None:
    recorder = Recorder()
    plugin = pygev._pygev._length_prefix_plugin(panic_on=b"boom")
    server = serve(recorder, protocol=plugin)
    with server.connect() as good, server.connect() as bad:
        good.sendall(frame(b"fine"))
        assert recv_exactly(good, 8) == frame(b"fine")
        bad.sendall(frame(b"boom"))
        assert expect_reset(bad) == b""
        record = pygev_log.wait_for("panicked in unpack")
        assert "asked to panic" in record.getMessage()
        good.sendall(frame(b"still fine"))
        assert recv_exactly(good, 14) == frame(b"still fine")


def test_a_panic_in_pack_closes_only_that_connection(
    serve: Callable[..., ServerThread], pygev_log
) -> None:
    class Shout(pygev.Handler):
        def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
            return data.upper()

    plugin = pygev._pygev._length_prefix_plugin(panic_on=b"BOOM")
    server = serve(Shout(), protocol=plugin)
    with server.connect() as good, server.connect() as bad:
        bad.sendall(frame(b"boom"))  # its reply, b"BOOM", panics the plugin's pack
        assert expect_reset(bad) == b""
        assert pygev_log.wait_for("panicked in pack")
        good.sendall(frame(b"ok"))
        assert recv_exactly(good, 6) == frame(b"OK")


def test_a_plugin_error_closes_the_connection_with_its_message(
    serve: Callable[..., ServerThread], pygev_log
) -> None:
    server = serve(Recorder(), protocol=pygev._pygev._length_prefix_plugin(max_frame_size=10))
    with server.connect() as sock:
        sock.sendall(struct.pack(">I", 11))
        assert expect_reset(sock) == b""
    record = pygev_log.wait_for("failed in unpack")
    assert "frame declares 11 bytes, over max_frame_size 10" in record.getMessage()
    assert "length-prefix-plugin" in record.getMessage()


def test_nothing_is_written_after_a_failed_pack(
    serve: Callable[..., ServerThread], pygev_log
) -> None:
    class Three(pygev.Handler):
        def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
            conn.send(b"first")
            conn.send(b"BOOM")  # the plugin panics packing this one
            conn.send(b"third")

    plugin = pygev._pygev._length_prefix_plugin(panic_on=b"BOOM")
    server = serve(Three(), protocol=plugin)
    with server.connect() as sock:
        sock.sendall(frame(b"go"))
        # The reply before the failure arrives; nothing after it, then a reset (the lost
        # reply must not look like a clean end).
        assert expect_reset(sock) == frame(b"first")
    assert pygev_log.wait_for("panicked in pack")

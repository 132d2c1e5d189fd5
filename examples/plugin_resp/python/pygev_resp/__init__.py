"""Redis protocol (RESP2) framing for pygev servers, written in Rust as a pygev plugin.

    server = pygev.Server(handler, "127.0.0.1:6380", protocol=pygev_resp.Resp())

Each whole command reaches ``on_message(conn, ctx, frame)``; ``args(frame)`` gives its
arguments. Replies are RESP: build them with ``simple``, ``error``, ``integer``, ``bulk``
and ``array``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pygev_resp._pygev_resp import capsule

if TYPE_CHECKING:
    from typing_extensions import CapsuleType

__all__ = ["Resp", "args", "array", "bulk", "error", "integer", "simple"]


class Resp:
    """The framing, for ``protocol=``; pygev calls ``__pygev_protocol__()`` for the capsule."""

    def __init__(self, max_command_size: int = 64 << 20) -> None:
        self.max_command_size = max_command_size

    def __pygev_protocol__(self) -> CapsuleType:
        return capsule(self.max_command_size)


def args(frame: bytes) -> list[bytes]:
    """A command's arguments (the frame holds each as a 4-byte little-endian length and bytes)."""
    out = []
    i, n = 0, len(frame)
    while i < n:
        size = int.from_bytes(frame[i : i + 4], "little")
        out.append(frame[i + 4 : i + 4 + size])
        i += 4 + size
    return out


def simple(text: str) -> bytes:
    return b"+" + text.encode() + b"\r\n"


def error(text: str) -> bytes:
    return b"-" + text.encode() + b"\r\n"


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def bulk(value: bytes | None) -> bytes:
    if value is None:
        return b"$-1\r\n"
    return b"$%d\r\n%s\r\n" % (len(value), value)


def array(items: Sequence[bytes | None]) -> bytes:
    return b"*%d\r\n" % len(items) + b"".join(bulk(item) for item in items)

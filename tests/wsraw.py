"""A raw WebSocket client for tests that must send what no well-behaved client would:
unmasked or malformed frames, bad handshakes, requests cut at any byte."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import zlib

from conftest import WAIT, connect, recv_exactly, recv_until_eof

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def upgrade_request(
    path: str = "/", key: bytes | None = None, extra: list[tuple[str, str]] | None = None
) -> tuple[bytes, bytes]:
    """A valid upgrade request and its key."""
    key = key or base64.b64encode(os.urandom(16))
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in extra or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key


def accept_of(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def read_response(sock: socket.socket, timeout: float = WAIT) -> tuple[int, dict[str, str], bytes]:
    """Reads an HTTP response head: status, headers (lower-case names), and the bytes after
    the head that were already read."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"EOF before the response head ended: {buf!r}")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, rest


class RawClient:
    """One raw WebSocket connection: a socket, plus bytes already read past the handshake."""

    def __init__(
        self, port: int, handshake: bool = True, extra: list[tuple[str, str]] | None = None
    ):
        self.sock = connect(port)
        self.buffer = b""
        self.headers: dict[str, str] = {}
        if handshake:
            request, key = upgrade_request(extra=extra)
            self.sock.sendall(request)
            status, self.headers, self.buffer = read_response(self.sock)
            assert status == 101, (status, self.headers)
            assert self.headers["sec-websocket-accept"] == accept_of(key).decode()

    def close(self) -> None:
        self.sock.close()

    def send_frame(
        self,
        opcode: int,
        payload: bytes = b"",
        fin: bool = True,
        rsv: int = 0,
        mask: bool = True,
        length: int | None = None,
    ) -> None:
        self.sock.sendall(frame(opcode, payload, fin, rsv, mask, length))

    def _take(self, n: int) -> bytes:
        if len(self.buffer) < n:
            self.buffer += recv_exactly(self.sock, n - len(self.buffer))
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_frame(self) -> tuple[int, bool, int, bytes]:
        """The next server frame: (opcode, fin, rsv bits, payload)."""
        b0, b1 = self._take(2)
        assert b1 & 0x80 == 0, "server frames must not be masked"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", self._take(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", self._take(8))
        return b0 & 0x0F, bool(b0 & 0x80), (b0 >> 4) & 0x7, self._take(n)

    def read_message(self) -> tuple[int, bytes]:
        """The next data message (pings answered, fragments joined)."""
        kind, data = None, b""
        while True:
            opcode, fin, _, payload = self.read_frame()
            if opcode == PING:
                self.send_frame(PONG, payload)
                continue
            if opcode in (TEXT, BINARY):
                kind = opcode
            elif opcode != CONT:
                return opcode, payload
            data += payload
            if fin:
                assert kind is not None
                return kind, data

    def expect_close(self, code: int) -> bytes:
        """Reads frames up to the server's close frame, asserts its code, then expects EOF;
        returns the close reason."""
        while True:
            opcode, _, _, payload = self.read_frame()
            if opcode == CLOSE:
                break
            assert opcode in (PING, PONG, TEXT, BINARY, CONT), opcode
        assert len(payload) >= 2, f"close frame without a code: {payload!r}"
        (got,) = struct.unpack(">H", payload[:2])
        assert got == code, f"close code {got}, expected {code} ({payload[2:]!r})"
        rest = self.buffer + recv_until_eof(self.sock)
        assert rest == b"", f"data after the close frame: {rest[:40]!r}"
        return payload[2:]


def frame(
    opcode: int,
    payload: bytes = b"",
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """One client frame (masked unless told otherwise); ``length`` may lie about the size."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n <= 0xFFFF:
        head += bytes([mask_bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    size = len(payload)
    stream = (key * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")
    return head + key + masked


def deflate_message(data: bytes) -> bytes:
    """permessage-deflate's form of one message (RFC 7692: raw deflate, tail removed)."""
    compressor = zlib.compressobj(wbits=-15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]

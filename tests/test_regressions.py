"""Tests named after the bugs they pin (found in review)."""

from __future__ import annotations

import socket
import threading

import pytest
from conftest import WAIT, Echo, ServerThread, connect, recv_exactly

import pygev


def test_reuse_port_loop_accepts_a_backlog_larger_than_one_accept_batch() -> None:
    # The per-loop listener accepts at most 256 connections per round; the rest of a full
    # backlog must still be accepted although epoll (edge-triggered) reports it only once.
    clients = 600
    st = ServerThread(Echo(), num_loops=1, reuse_port=True, backlog=2048)
    socks = [connect(st.port) for _ in range(clients)]  # all queued before start()
    try:
        st.start()
        for i, sock in enumerate(socks):
            sock.sendall(b"%04d" % i)
        for i, sock in enumerate(socks):
            assert recv_exactly(sock, 4) == b"%04d" % i
    finally:
        for sock in socks:
            sock.close()
        st.stop()


class SendThenClose(pygev.Handler):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
        if data.startswith(b"go"):
            conn.send(self.payload)
            conn.close()


def test_close_with_unread_input_does_not_reset_flushed_output(serve) -> None:
    # close(2) with unread input sends RST, and the peer loses what it had not read yet:
    # the server must linger (shut down writing, discard input until EOF) instead.
    payload = bytes(range(256)) * (8 << 12)  # 8 MiB
    st = serve(SendThenClose(payload), num_loops=1)
    sock = connect(st.port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    try:
        sock.sendall(b"go")
        # Keep sending while the server closes: these bytes arrive unread.
        stop = threading.Event()

        def chatter() -> None:
            while not stop.is_set():
                try:
                    sock.send(b"x" * 1024)
                except OSError:
                    return
                stop.wait(0.01)

        sender = threading.Thread(target=chatter, daemon=True)
        sender.start()
        got = recv_exactly(sock, len(payload))
        assert got == payload
        stop.set()
        sender.join(WAIT)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # a clean FIN, not a reset
    finally:
        sock.close()


@pytest.mark.parametrize("kwargs", [{"drain_timeout": 1e19}, {"idle_timeout": 1e19}])
def test_huge_durations_are_refused_instead_of_overflowing(kwargs) -> None:
    with pytest.raises(ValueError, match=r"^pygev: "):
        pygev.Server(Echo(), "127.0.0.1:0", **kwargs)


def test_huge_timer_delay_is_refused_instead_of_overflowing() -> None:
    server = pygev.Server(Echo(), "127.0.0.1:0", num_loops=1)
    try:
        with pytest.raises(ValueError, match=r"^pygev: "):
            server.run_after(1e19, lambda: None)
        with pytest.raises(ValueError, match=r"^pygev: "):
            server.run_every(1e19, lambda: None)
    finally:
        server.stop()

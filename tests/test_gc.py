"""A server that is dropped frees its handler, even through reference cycles."""

from __future__ import annotations

import gc
import os
import queue
import threading
import weakref

import pytest
from conftest import WAIT, connect, echo_roundtrip, expect_eof

import pygev


class CyclicEcho(pygev.Handler):
    """Can hold its server (a cycle: server -> handler -> server) and holds its
    connections (handler -> conn -> context -> handler)."""

    def __init__(self):
        self.server = None
        self.conns = []
        self.timer = None

    def on_connect(self, conn):
        self.conns.append(conn)
        conn.context = self  # another cycle: handler -> conn -> context -> handler

    def on_message(self, conn, ctx, data):
        return data

    def tick(self):
        pass


def collect() -> None:
    for _ in range(3):
        gc.collect()


def _make(cyclic: bool, with_timer: bool = False):
    handler = CyclicEcho()
    server = pygev.Server(handler, "127.0.0.1:0", num_loops=1)
    if cyclic:
        handler.server = server
    if with_timer:
        # The server holds the timer callback, a bound method of the handler.
        handler.timer = server.run_every(10.0, handler.tick)
    return weakref.ref(handler), server


def _server_ref(server):
    try:
        return weakref.ref(server)
    except TypeError:  # Server without weakref support: only the handler is checked
        return lambda: None


def _run_and_stop(server) -> None:
    thread = threading.Thread(target=server.start, daemon=True)
    thread.start()
    try:
        port = server.address[1]
        with connect(port) as sock:
            echo_roundtrip(sock, b"gc")
            server.stop()
            expect_eof(sock)
    finally:
        server.stop()
        thread.join(WAIT)
    assert not thread.is_alive()


def _assert_freed_on_drop(cyclic: bool, with_timer: bool) -> None:
    handler_ref, server = _make(cyclic, with_timer)
    collect()
    assert handler_ref() is not None  # sanity: the server keeps it alive while it lives
    server_ref = _server_ref(server)
    del server
    collect()
    assert handler_ref() is None, "handler still alive after the server was dropped"
    assert server_ref() is None, "server still alive after it was dropped"


@pytest.mark.parametrize("cyclic", [False, True], ids=["plain", "handler-holds-server"])
def test_never_started_server_frees_its_handler(cyclic):
    _assert_freed_on_drop(cyclic, with_timer=False)


def test_never_started_server_frees_handler_holding_server_and_timer():
    _assert_freed_on_drop(cyclic=True, with_timer=True)


def test_never_started_server_frees_handler_holding_a_timer():
    """The common pattern ``self.timer = server.run_every(..., self.tick)``, then the server
    is dropped without ever being started or stopped."""
    _assert_freed_on_drop(cyclic=False, with_timer=True)


@pytest.mark.parametrize("cyclic", [False, True], ids=["plain", "handler-holds-server"])
@pytest.mark.parametrize("with_timer", [False, True], ids=["", "timer"])
def test_started_then_stopped_server_frees_its_handler(cyclic, with_timer):
    handler_ref, server = _make(cyclic, with_timer)
    _run_and_stop(server)
    collect()
    assert handler_ref() is not None  # sanity: the server keeps it alive while it lives
    server_ref = _server_ref(server)
    del server
    collect()
    assert handler_ref() is None, "handler still alive after the server was dropped"
    assert server_ref() is None, "server still alive after it was dropped"


def test_stopped_before_start_server_frees_its_handler():
    handler_ref, server = _make(cyclic=True)
    server.stop()
    del server
    collect()
    assert handler_ref() is None


def test_connection_kept_by_user_does_not_keep_handler_alive():
    """A Connection object that outlives its server does not pin the handler."""
    kept = queue.Queue()

    class Keeper(pygev.Handler):
        def on_connect(self, conn):
            kept.put(conn)

        def on_message(self, conn, ctx, data):
            return data

    handler = Keeper()
    handler_ref = weakref.ref(handler)
    server = pygev.Server(handler, "127.0.0.1:0", num_loops=1)
    del handler
    _run_and_stop(server)
    conn = kept.get(timeout=WAIT)
    del server
    collect()
    assert handler_ref() is None
    assert conn.connected is False
    with pytest.raises(pygev.ConnectionClosed):
        conn.send(b"x")


# ---- threads and descriptors ---------------------------------------------------------------


def _pygev_threads() -> set[tuple[str, str]]:
    """(tid, name) of this process's threads named pygev-* (the Rust loop/acceptor threads)."""
    found = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue  # the thread just ended
        if name.startswith("pygev-"):
            found.add((tid, name))
    return found


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
@pytest.mark.parametrize("reuse_port", [False, True], ids=["acceptor", "reuse_port"])
def test_stop_ends_every_thread_and_dropping_frees_every_descriptor(reuse_port):
    collect()
    threads_before = _pygev_threads()
    fds_before = _fd_count()
    handler = CyclicEcho()
    server = pygev.Server(handler, "127.0.0.1:0", num_loops=2, reuse_port=reuse_port)
    handler.server = server
    thread = threading.Thread(target=server.start, daemon=True)
    thread.start()
    try:
        socks = [connect(server.address[1]) for _ in range(6)]
        for s in socks:
            echo_roundtrip(s, b"fd")
        started = _pygev_threads() - threads_before
        assert len(started) >= 2, started  # sanity: the loops are pygev-* threads
        server.stop()
        for s in socks:
            expect_eof(s)
            s.close()
    finally:
        server.stop()
        thread.join(WAIT)
    assert not thread.is_alive()
    # start() returned: every loop (and acceptor) thread has been joined.
    assert _pygev_threads() - threads_before == set()
    del server, handler
    collect()
    assert _fd_count() == fds_before, "descriptors left open after the server was dropped"

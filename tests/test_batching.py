"""Batching: one dispatch (one GIL acquisition) serves many events."""

from __future__ import annotations

import random
import selectors
import socket
import threading
import time

import pytest
from conftest import WAIT, Echo, Recorder, echo_roundtrip, recv_exactly, wait_until


def pipeline(sockets: list[socket.socket], rounds: int, msg_size: int, seed: int) -> None:
    """Every socket sends ``rounds`` messages back to back without waiting for replies,
    while the replies are read concurrently; checks every byte came back in order."""
    rng = random.Random(seed)
    payloads = [[rng.randbytes(msg_size) for _ in range(rounds)] for _ in sockets]
    expected = [b"".join(p) for p in payloads]
    received = [bytearray() for _ in sockets]
    sel = selectors.DefaultSelector()
    for i, s in enumerate(sockets):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    try:
        for r in range(rounds):
            for i, s in enumerate(sockets):
                _send_all(s, payloads[i][r])
        deadline = time.monotonic() + 60
        left = sum(len(e) for e in expected)
        while left:
            assert time.monotonic() < deadline, f"{left} echo bytes missing"
            for key, _ in sel.select(1.0):
                i = key.data
                try:
                    data = sockets[i].recv(1 << 16)
                except BlockingIOError:
                    continue
                assert data, f"connection {i}: EOF"
                received[i] += data
                left -= len(data)
        for i, e in enumerate(expected):
            assert bytes(received[i]) == e, f"connection {i}: echo differs"
    finally:
        sel.close()
        for s in sockets:
            s.setblocking(True)


def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    deadline = time.monotonic() + WAIT
    while view:
        try:
            n = sock.send(view)
            view = view[n:]
        except BlockingIOError:
            assert time.monotonic() < deadline, "send blocked"
            time.sleep(0.001)


@pytest.mark.timeout(120)
def test_load_from_many_connections_is_dispatched_in_batches(serve):
    st_ = serve(Echo(), num_loops=2)
    socks = [st_.connect() for _ in range(100)]
    try:
        for s in socks:
            echo_roundtrip(s, b"hello")
        before = st_.stats()
        pipeline(socks, rounds=30, msg_size=64, seed=1)
        after = st_.stats()
        events = after["events_dispatched"] - before["events_dispatched"]
        batches = after["batches_dispatched"] - before["batches_dispatched"]
        assert after["messages_in"] - before["messages_in"] <= events
        assert batches > 0
        # How many events a batch carries depends on how fast the dispatcher is relative to
        # the clients (a busy machine means smaller batches); but with 100 connections
        # sending at once, batches carry more than one event on average, and some many.
        assert events / batches > 1, (events, batches)
        assert after["max_batch"] >= 10, after["max_batch"]
        assert after["max_batch"] <= after["events_dispatched"]
    finally:
        for s in socks:
            s.close()


def test_events_queued_while_the_dispatcher_is_busy_form_one_batch(serve):
    """While a callback runs, the loops keep reading and queueing; everything queued in the
    meantime is dispatched in a single batch."""
    rec = Recorder()
    st_ = serve(rec, num_loops=2)
    socks = [st_.connect() for _ in range(100)]
    busy = threading.Event()
    release = threading.Event()

    def hold_the_dispatcher():
        busy.set()
        release.wait(WAIT)

    try:
        for s in socks:
            echo_roundtrip(s, b"hi")
        base = st_.stats()["messages_in"]
        st_.server.run_after(0, hold_the_dispatcher)
        assert busy.wait(WAIT)
        for i, s in enumerate(socks):
            s.sendall(b"msg %03d" % i)
        # The loops have read (and queued) all 100 messages while the dispatcher is busy.
        wait_until(lambda: st_.stats()["messages_in"] >= base + 100, what="100 messages read")
        release.set()
        for i, s in enumerate(socks):
            assert recv_exactly(s, 7) == b"msg %03d" % i
        stats = st_.stats()
        assert stats["max_batch"] >= 100, stats["max_batch"]
    finally:
        release.set()
        for s in socks:
            s.close()


def test_stats_shape(serve):
    st_ = serve(Echo(), num_loops=2)
    with st_.connect() as s:
        echo_roundtrip(s, b"12345")
        stats = st_.stats()
    for key in (
        "connections",
        "accepted",
        "closed",
        "bytes_in",
        "bytes_out",
        "messages_in",
        "events_dispatched",
        "batches_dispatched",
        "max_batch",
        "loop_wakeups",
        "read_pauses",
        "input_pauses",
        "write_buffered",
    ):
        assert isinstance(stats[key], int), key
        assert stats[key] >= 0, key
    assert len(stats["loops"]) == 2
    assert stats["connections"] == 1
    assert stats["bytes_in"] == 5
    assert stats["messages_in"] >= 1
    assert sum(loop["bytes_in"] for loop in stats["loops"]) == stats["bytes_in"]
    assert sum(loop["accepted"] for loop in stats["loops"]) == stats["accepted"] == 1

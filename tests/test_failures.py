"""Failure behaviour: raising callbacks, bad replies, idle connections, a peer that never
reads, invalid arguments, address in use."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import select
import socket
import time

import pytest
from conftest import (
    WAIT,
    Echo,
    Recorder,
    echo_roundtrip,
    expect_eof,
    recv_exactly,
    recv_until_eof,
    wait_until,
)

import pygev

# ---- exceptions in callbacks --------------------------------------------------------------


class Faulty(Recorder):
    """Echoes; raises on b"boom"; returns a str on b"str"; raises in on_connect while
    ``fail_connect`` is set."""

    def __init__(self):
        super().__init__()
        self.fail_connect = False

    def on_connect(self, conn):
        super().on_connect(conn)
        if self.fail_connect:
            raise KeyError("on_connect failure on purpose")

    def on_message(self, conn, ctx, data):
        self._record(conn, "message", data)
        if data == b"boom":

            def failing_helper():
                raise ZeroDivisionError("on_message failure on purpose")

            failing_helper()
        if data == b"str":
            return "a str is not bytes"
        return data


def _assert_closed_once(rec: Recorder, cid: int) -> None:
    rec.wait(lambda: any(k == "close" for k, _ in rec.events[cid]), what="on_close")
    with rec.cond:
        kinds = [k for k, _ in rec.events[cid]]
    assert kinds.count("close") == 1
    assert kinds[-1] == "close"


def test_exception_in_on_message_closes_only_that_connection(serve, pygev_log):
    rec = Faulty()
    st_ = serve(rec, num_loops=2)
    others = [st_.connect() for _ in range(5)]
    try:
        for s in others:
            echo_roundtrip(s, b"before")
        with st_.connect() as bad:
            echo_roundtrip(bad, b"fine so far")
            cid = rec.conn_by_peer_port(bad.getsockname()[1]).id
            bad.sendall(b"boom")
            expect_eof(bad)
        record = pygev_log.wait_for("on_message raised")
        assert record.levelno >= logging.ERROR
        assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError
        assert str(cid) in record.getMessage()
        assert "on_message failure on purpose" in pygev_log.formatted(record)
        _assert_closed_once(rec, cid)
        for s in others:
            echo_roundtrip(s, b"after")
        with st_.connect() as fresh:
            echo_roundtrip(fresh, b"new connections work")
        assert st_.thread.is_alive()
    finally:
        for s in others:
            s.close()


def test_exception_in_on_message_is_logged_with_traceback(serve, pygev_log):
    st_ = serve(Faulty(), num_loops=1)
    with st_.connect() as bad:
        bad.sendall(b"boom")
        expect_eof(bad)
    record = pygev_log.wait_for("on_message raised")
    text = pygev_log.formatted(record)
    assert "Traceback (most recent call last)" in text, text
    assert "failing_helper" in text, text  # the frame that raised is in the traceback
    assert "ZeroDivisionError: on_message failure on purpose" in text


def test_messages_after_a_failure_are_not_dispatched(serve, pygev_log):
    class H(Recorder):
        def on_message(self, conn, ctx, data):
            self._record(conn, "message", data)
            if b"boom" in data:
                raise ZeroDivisionError("boom")
            return data

    rec = H()
    st_ = serve(rec, num_loops=1)
    with st_.connect() as bad:
        echo_roundtrip(bad, b"x")
        cid = rec.conn_by_peer_port(bad.getsockname()[1]).id
        bad.sendall(b"boom")
        for _ in range(20):
            try:
                bad.sendall(b"more")
            except OSError:
                break
        try:
            rest = recv_until_eof(bad)
        except ConnectionResetError:
            rest = b""  # closed with unread input: RST is fine
    assert rest == b""  # nothing after the failing message was echoed
    _assert_closed_once(rec, cid)
    with rec.cond:
        evs = list(rec.events[cid])
    failing = next(i for i, (k, v) in enumerate(evs) if k == "message" and b"boom" in v)
    assert [k for k, _ in evs[failing + 1 :]] == ["close"], evs[failing + 1 :]


def test_exception_in_on_connect_closes_only_that_connection(serve, pygev_log):
    rec = Faulty()
    st_ = serve(rec, num_loops=2)
    with st_.connect() as good:
        echo_roundtrip(good, b"good")
        rec.fail_connect = True
        with st_.connect() as bad:
            rec.wait(lambda: rec.connects == 2, what="second on_connect")
            rec.fail_connect = False
            expect_eof(bad)
            cid = rec.conn_by_peer_port(bad.getsockname()[1]).id
        record = pygev_log.wait_for("on_connect raised")
        assert record.exc_info is not None and record.exc_info[0] is KeyError
        assert "on_connect failure on purpose" in pygev_log.formatted(record)
        _assert_closed_once(rec, cid)
        with rec.cond:
            assert [k for k, _ in rec.events[cid]] == ["connect", "close"]
        echo_roundtrip(good, b"still good")
        with st_.connect() as fresh:
            echo_roundtrip(fresh, b"fresh")


def test_on_message_returning_str_is_a_logged_type_error(serve, pygev_log):
    rec = Faulty()
    st_ = serve(rec, num_loops=2)
    with st_.connect() as good, st_.connect() as bad:
        echo_roundtrip(good, b"good")
        echo_roundtrip(bad, b"bad is fine for now")
        cid = rec.conn_by_peer_port(bad.getsockname()[1]).id
        bad.sendall(b"str")
        expect_eof(bad)
        record = pygev_log.wait_for("non-bytes")
        assert record.exc_info is not None and record.exc_info[0] is TypeError
        assert "str" in pygev_log.formatted(record)
        _assert_closed_once(rec, cid)
        echo_roundtrip(good, b"good again")


def test_exception_in_on_close_is_logged_and_server_goes_on(serve, pygev_log):
    class H(Echo):
        def on_close(self, conn):
            raise RuntimeError("on_close failure on purpose")

    st_ = serve(H(), num_loops=1)
    with st_.connect() as s:
        echo_roundtrip(s, b"x")
    record = pygev_log.wait_for("on_close raised")
    assert record.exc_info[0] is RuntimeError
    with st_.connect() as s:
        echo_roundtrip(s, b"still serving")


# ---- idle timeout -------------------------------------------------------------------------


def test_idle_timeout_closes_silent_but_not_active_connections(serve):
    rec = Recorder()
    idle = 0.6
    st_ = serve(rec, num_loops=2, idle_timeout=idle)
    with st_.connect() as silent, st_.connect() as active:
        echo_roundtrip(silent, b"hello, then silence")
        echo_roundtrip(active, b"hello, and more")
        silent_id = rec.conn_by_peer_port(silent.getsockname()[1]).id
        active_id = rec.conn_by_peer_port(active.getsockname()[1]).id
        # Keep the active one busy (a message every idle/8 s) until the silent one is
        # closed, then for 24 more messages (at least three more idle periods).
        deadline = time.monotonic() + WAIT
        after_close = 0
        i = 0
        while after_close < 24:
            echo_roundtrip(active, b"ping %d" % i)
            i += 1
            if rec.closes >= 1:
                after_close += 1
            assert time.monotonic() < deadline, "the silent connection was never closed"
            time.sleep(idle / 8)
        expect_eof(silent)
        with rec.cond:
            assert [k for k, _ in rec.events[silent_id]][-1] == "close"
            assert rec.closes == 1
            assert not any(k == "close" for k, _ in rec.events[active_id])
        echo_roundtrip(active, b"still open")


def test_idle_timeout_counts_output_as_activity(serve):
    """A connection the server keeps writing to is not idle even if the client is silent
    (the timeout is for connections that "neither read nor wrote")."""
    rec = Recorder()
    idle = 0.6
    st_ = serve(rec, num_loops=1, idle_timeout=idle)
    with st_.connect() as s:
        echo_roundtrip(s, b"start")
        conn = rec.conn_by_peer_port(s.getsockname()[1])
        timer = st_.server.run_every(idle / 8, lambda: conn.send(b"t") if conn.connected else None)
        try:
            with st_.connect() as silent:
                expect_eof(silent)  # a silent one is closed meanwhile...
            # ...while this one keeps receiving: 40 sends at idle/8 span five idle periods.
            assert recv_exactly(s, 40) == b"t" * 40
            assert conn.connected
        finally:
            timer.cancel()


# ---- a peer that never reads ------------------------------------------------------------


class Stream:
    """A deterministic pseudo-random byte stream, hashed as it goes."""

    def __init__(self, seed: int) -> None:
        self.block = random.Random(seed).randbytes(1_000_003)  # prime: no aligned repeats
        self.offset = 0
        self.hash = hashlib.sha256()

    def take(self, n: int) -> memoryview:
        start = self.offset % len(self.block)
        chunk = memoryview(self.block)[start : start + n]
        return chunk

    def advance(self, chunk: memoryview) -> None:
        self.offset += len(chunk)
        self.hash.update(chunk)


def _kernel_buffering() -> int:
    """The most the kernel may buffer for one loopback connection: the server's socket
    buffers at their autotuning maxima plus the client's (small, fixed) ones."""
    total = 4 * (64 << 10)  # the client's SO_RCVBUF/SO_SNDBUF (doubled by the kernel)
    for name, default in (("tcp_rmem", 32 << 20), ("tcp_wmem", 4 << 20)):
        try:
            with open(f"/proc/sys/net/ipv4/{name}") as f:
                total += int(f.read().split()[2])
        except (OSError, ValueError, IndexError):
            total += default
    return total


@pytest.mark.timeout(120)
def test_peer_that_never_reads_is_paused_not_buffered(serve, pygev_log):
    high_water = 256 << 10
    max_write = 16 << 20
    st_ = serve(Echo(), num_loops=2, write_high_water=high_water, max_write_buffer=max_write)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Small client buffers so the kernel does not hide the server's behaviour.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    sock.settimeout(WAIT)
    sock.connect(("127.0.0.1", st_.port))
    sock.setblocking(False)
    out = Stream(1)
    buffered_samples = []
    blocked_wakeups = None
    try:
        # Phase 1: send as fast as possible, never read, until the socket stays unwritable
        # for a second (the server stopped reading) and then for one more second in which
        # the server did no work at all (nothing read, written or dispatched): that second
        # is the one whose loop wake-ups are counted.
        def activity(stats):
            return (stats["bytes_in"], stats["bytes_out"], stats["events_dispatched"])

        deadline = time.monotonic() + 30
        blocked_seconds = 0
        while blocked_wakeups is None:
            assert time.monotonic() < deadline, (
                f"after 30 s ({out.offset} bytes sent) the server never settled with a "
                f"peer that never reads: no backpressure, or it keeps working"
            )
            try:
                n = sock.send(out.take(256 << 10))
                out.advance(out.take(n))
                blocked_seconds = 0
                continue
            except BlockingIOError:
                pass
            before = st_.stats()
            buffered_samples.append(before["write_buffered"])
            _, writable, _ = select.select([], [sock], [], 1.0)
            if writable:
                blocked_seconds = 0
                continue
            blocked_seconds += 1
            after = st_.stats()
            buffered_samples.append(after["write_buffered"])
            if blocked_seconds >= 2 and activity(after) == activity(before):
                blocked_wakeups = after["loop_wakeups"] - before["loop_wakeups"]
        sent_total = out.offset
        stats = st_.stats()
        assert stats["read_pauses"] >= 1
        assert max(buffered_samples) <= max_write
        assert 0 < stats["write_buffered"] <= max_write
        # The loops sleep while the peer is blocked: a spinning loop would wake up
        # thousands of times per second.
        assert blocked_wakeups < 50, f"{blocked_wakeups} loop wake-ups in 1 s while blocked"
        # What the client could push is bounded by buffers, not by time: the server's
        # output (max_write_buffer at most) plus what the kernel buffers on both sides.
        assert sent_total <= max_write + _kernel_buffering() + (4 << 20), sent_total
        assert pygev_log.matching("max_write_buffer") == []

        # Phase 2: other connections are served meanwhile.
        with st_.connect() as other:
            echo_roundtrip(other, random.Random(2).randbytes(100_000))

        # Phase 3: the client reads; it gets back every byte it sent, in order.
        received = 0
        back = hashlib.sha256()
        deadline = time.monotonic() + 60
        while received < sent_total:
            assert time.monotonic() < deadline, f"read back {received} of {sent_total} bytes"
            readable, _, _ = select.select([sock], [], [], 1.0)
            if not readable:
                continue
            chunk = sock.recv(1 << 20)
            assert chunk, f"EOF after {received} of {sent_total} bytes"
            back.update(chunk)
            received += len(chunk)
        assert received == sent_total
        assert back.hexdigest() == out.hash.hexdigest(), "echo differs from what was sent"
        wait_until(lambda: st_.stats()["write_buffered"] == 0, what="output drained")
        # And the connection still works.
        sock.setblocking(True)
        echo_roundtrip(sock, b"alive")
    finally:
        sock.close()


def test_max_write_buffer_closes_a_peer_that_never_reads(serve, pygev_log):
    """Output past max_write_buffer (here: sends within one callback, more than the kernel's
    socket buffers and the limit together) resets the connection with a log line, and the
    send that would pass the limit raises ConnectionClosed; other connections are
    unaffected."""
    raised: list[BaseException] = []

    class Flood(Recorder):
        def on_message(self, conn, ctx, data):
            self._record(conn, "message", data)
            if data != b"flood me":
                conn.send(data * 1000)
                return
            try:
                for _ in range(96):  # 24 MiB in 256 KiB sends
                    conn.send(b"\0" * (256 << 10))
            except pygev.ConnectionClosed as exc:
                raised.append(exc)

    rec = Flood()
    st_ = serve(rec, num_loops=1, write_high_water=256 << 10, max_write_buffer=1 << 20)
    with st_.connect() as good:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.settimeout(WAIT)
        try:
            sock.connect(("127.0.0.1", st_.port))
            sock.sendall(b"flood me")
            record = pygev_log.wait_for("max_write_buffer")
            assert record.levelno >= 30
            assert "reset" in record.getMessage()
            rec.wait(lambda: rec.closes == 1, what="on_close of the flooded connection")
            assert len(raised) == 1 and "max_write_buffer" in str(raised[0])
        finally:
            sock.close()
        good.sendall(b"x")
        assert recv_exactly(good, 1000) == b"x" * 1000


# ---- invalid arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"num_loops": -1}, ValueError),
        ({"strategy": "x"}, ValueError),
        ({"strategy": ""}, ValueError),
        ({"idle_timeout": 0}, ValueError),
        ({"idle_timeout": -1.0}, ValueError),
        ({"idle_timeout": float("nan")}, ValueError),
        ({"backlog": 0}, ValueError),
        ({"drain_timeout": -1}, ValueError),
        ({"write_high_water": 0}, ValueError),
        ({"max_write_buffer": -5}, ValueError),
        ({"write_high_water": 2 << 20, "max_write_buffer": 1 << 20}, ValueError),
        ({"max_input_buffer": 0}, ValueError),
        ({"dispatch_high_water": 0}, ValueError),
        ({"address": "nonsense"}, ValueError),
        ({"address": "127.0.0.1"}, ValueError),
        ({"address": "127.0.0.1:70000"}, ValueError),
        ({"address": "127.0.0.1:port"}, ValueError),
    ],
    ids=lambda v: repr(v) if not isinstance(v, type) else v.__name__,
)
def test_invalid_arguments(kwargs, exc):
    kwargs = dict(kwargs)
    address = kwargs.pop("address", "127.0.0.1:0")
    with pytest.raises(exc) as info:
        pygev.Server(Echo(), address, **kwargs)
    assert str(info.value).startswith("pygev:"), str(info.value)


def test_invalid_argument_types():
    with pytest.raises(TypeError):
        pygev.Server(Echo(), "127.0.0.1:0", num_loops="2")
    with pytest.raises(TypeError):
        pygev.Server(Echo(), 1833)
    with pytest.raises(TypeError):
        pygev.Server(Echo(), "127.0.0.1:0", idle_timeout="soon")


class NoOnMessage:
    def on_connect(self, conn):
        pass

    def on_close(self, conn):
        pass


class NonCallableOnMessage(pygev.Handler):
    on_message = 42


@pytest.mark.parametrize("handler", [NoOnMessage(), NonCallableOnMessage(), object(), None])
def test_handler_without_on_message(handler):
    with pytest.raises(TypeError) as info:
        pygev.Server(handler, "127.0.0.1:0")
    assert str(info.value).startswith("pygev:"), str(info.value)
    assert "on_" in str(info.value)


def test_duck_typed_handler_is_accepted(serve):
    class Duck:
        def on_connect(self, conn):
            pass

        def on_message(self, conn, ctx, data):
            return data.upper()

        def on_close(self, conn):
            pass

    st_ = serve(Duck(), num_loops=1)
    with st_.connect() as s:
        s.sendall(b"quack")
        assert recv_exactly(s, 5) == b"QUACK"


def test_address_in_use_raises_oserror():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(OSError) as info:
            pygev.Server(Echo(), f"127.0.0.1:{port}")
        assert info.value.errno == errno.EADDRINUSE
        assert not isinstance(info.value, (ValueError, TypeError))


def test_address_in_use_by_another_pygev_server():
    first = pygev.Server(Echo(), "127.0.0.1:0", num_loops=1)
    try:
        with pytest.raises(OSError) as info:
            pygev.Server(Echo(), f"127.0.0.1:{first.address[1]}", num_loops=1)
        assert info.value.errno == errno.EADDRINUSE
    finally:
        first.stop()
    # Released: the same port can be bound again.
    second = pygev.Server(Echo(), f"127.0.0.1:{first.address[1]}", num_loops=1)
    second.stop()


def test_num_loops_zero_means_one_per_cpu():
    server = pygev.Server(Echo(), "127.0.0.1:0")
    try:
        assert 1 <= server.num_loops <= (os.cpu_count() or 1)
    finally:
        server.stop()

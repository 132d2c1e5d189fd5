"""Timers: run_after / run_every, cancel, the thread they run on, failures, bad arguments.

No assertion depends on how long anything took: a fast `run_every` "clock" timer serves as
the reference — timers fire in deadline order on the one dispatcher thread, so "the clock
ticked N more times" means "every earlier deadline has been handled".
"""

from __future__ import annotations

import math
import queue
import threading

import pytest
from conftest import WAIT, Echo, Recorder, ServerThread, echo_roundtrip, wait_until

import pygev


class Counter:
    """A callable counting its calls (thread-safe to read), remembering its threads."""

    def __init__(self, action=None):
        self.count = 0
        self.threads = set()
        self.lock = threading.Lock()
        self.action = action

    def __call__(self):
        with self.lock:
            self.count += 1
            self.threads.add(threading.get_ident())
        if self.action is not None:
            self.action(self)

    def value(self):
        with self.lock:
            return self.count


def wait_ticks(clock: Counter, n: int, what: str = "clock ticks") -> None:
    target = clock.value() + n
    wait_until(lambda: clock.value() >= target, what=f"{n} {what}")


@pytest.fixture
def clocked(serve):
    """A running echo server with a 10 ms run_every clock."""
    st_ = serve(Echo(), num_loops=1)
    clock = Counter()
    timer = st_.server.run_every(0.01, clock)
    wait_ticks(clock, 1)
    yield st_, clock
    timer.cancel()


def test_run_after_fires_once(clocked):
    st_, clock = clocked
    fired = Counter()
    timer = st_.server.run_after(0.02, fired)
    assert isinstance(timer, pygev.Timer)
    wait_until(lambda: fired.value() >= 1, what="run_after callback")
    wait_ticks(clock, 10)
    assert fired.value() == 1
    assert timer.active is False


def test_run_after_zero_delay(clocked):
    st_, _ = clocked
    fired = Counter()
    st_.server.run_after(0, fired)
    wait_until(lambda: fired.value() == 1, what="run_after(0) callback")


def test_run_every_fires_repeatedly_until_cancelled(clocked):
    st_, clock = clocked
    ticks = Counter()
    timer = st_.server.run_every(0.01, ticks)
    assert timer.active is True
    wait_until(lambda: ticks.value() >= 3, what="3 run_every calls")
    timer.cancel()
    assert timer.active is False
    # A call already under way when cancel() returned may still finish: let the dispatcher
    # move past it, then the count must not move any more.
    wait_ticks(clock, 2)
    settled = ticks.value()
    wait_ticks(clock, 10)
    assert ticks.value() == settled
    timer.cancel()  # idempotent


def test_run_every_cancelled_from_its_own_callback(clocked):
    st_, clock = clocked
    holder = {}

    def action(counter):
        if counter.count == 3:
            holder["timer"].cancel()

    ticks = Counter(action)
    ready = threading.Event()

    def start_it():
        holder["timer"] = st_.server.run_every(0.005, ticks)
        ready.set()

    # Scheduled from the dispatcher thread, so `holder` is filled before the first call.
    st_.server.run_after(0, start_it)
    assert ready.wait(WAIT)
    wait_until(lambda: ticks.value() >= 3, what="3 run_every calls")
    wait_ticks(clock, 10)
    assert ticks.value() == 3
    assert holder["timer"].active is False


def test_cancel_before_firing(clocked):
    st_, _ = clocked
    cancelled = Counter()
    sentinel = Counter()
    timer = st_.server.run_after(0.05, cancelled)
    assert timer.active is True
    timer.cancel()
    assert timer.active is False
    # Scheduled later with the same delay: fires after the cancelled one would have.
    st_.server.run_after(0.05, sentinel)
    wait_until(lambda: sentinel.value() == 1, what="sentinel timer")
    assert cancelled.value() == 0


def test_cancel_run_every_before_first_call(clocked):
    st_, clock = clocked
    ticks = Counter()
    timer = st_.server.run_every(0.02, ticks)
    timer.cancel()
    sentinel = Counter()
    st_.server.run_after(0.05, sentinel)
    wait_until(lambda: sentinel.value() == 1, what="sentinel timer")
    wait_ticks(clock, 3)
    assert ticks.value() == 0


def test_timers_run_on_the_dispatcher_thread(serve):
    rec = Recorder()
    st_ = serve(rec, num_loops=2)
    once = Counter()
    every = Counter()
    st_.server.run_after(0.01, once)
    timer = st_.server.run_every(0.01, every)
    with st_.connect() as sock:
        echo_roundtrip(sock, b"where am I")
    wait_until(lambda: once.value() == 1 and every.value() >= 2, what="timer calls")
    timer.cancel()
    with rec.cond:
        handler_threads = set(rec.threads)
    assert handler_threads == {st_.ident}
    assert once.threads == {st_.ident}
    assert every.threads == {st_.ident}
    assert st_.ident != threading.get_ident()


def test_timer_scheduled_before_start_fires(serve):
    st_ = ServerThread(Echo(), num_loops=1)
    fired = Counter()
    st_.server.run_after(0.01, fired)
    st_.start()
    try:
        wait_until(lambda: fired.value() == 1, what="timer scheduled before start()")
        assert fired.threads == {st_.ident}
    finally:
        st_.stop()


def test_raising_timer_is_logged_and_run_every_continues(clocked, pygev_log):
    st_, _ = clocked

    def action(counter):
        if counter.count == 1:
            raise RuntimeError("timer failure on purpose")

    ticks = Counter(action)
    timer = st_.server.run_every(0.01, ticks)
    try:
        wait_until(lambda: ticks.value() >= 4, what="run_every calls after a failure")
    finally:
        timer.cancel()
    record = pygev_log.wait_for("timer callback raised")
    assert record.levelno >= 40
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert "timer failure on purpose" in pygev_log.formatted(record)
    # The server is fine.
    with st_.connect() as sock:
        echo_roundtrip(sock, b"still serving")


def test_raising_timer_is_logged_with_traceback(clocked, pygev_log):
    st_, _ = clocked

    def inner_helper():
        raise RuntimeError("timer failure with a traceback")

    st_.server.run_after(0, inner_helper)
    record = pygev_log.wait_for("timer callback raised")
    text = pygev_log.formatted(record)
    assert "Traceback (most recent call last)" in text, text
    assert "inner_helper" in text, text  # the failing frame is named
    assert "timer failure with a traceback" in text


def test_raising_run_after_is_logged(clocked, pygev_log):
    st_, _ = clocked

    def boom():
        raise ValueError("one-shot failure")

    st_.server.run_after(0, boom)
    record = pygev_log.wait_for("timer callback raised")
    assert record.exc_info[0] is ValueError
    with st_.connect() as sock:
        echo_roundtrip(sock, b"ok")


def test_timer_bad_arguments():
    server = pygev.Server(Echo(), "127.0.0.1:0", num_loops=1)
    try:
        for bad in (-1, -0.001, math.nan, math.inf):
            with pytest.raises(ValueError, match=r"^pygev:"):
                server.run_after(bad, lambda: None)
        for bad in (0, -1, math.nan, math.inf):
            with pytest.raises(ValueError, match=r"^pygev:"):
                server.run_every(bad, lambda: None)
        with pytest.raises(TypeError, match=r"^pygev:"):
            server.run_after(0.1, "not callable")
        with pytest.raises(TypeError, match=r"^pygev:"):
            server.run_every(0.1, None)
        with pytest.raises(TypeError):
            server.run_after("soon", lambda: None)
    finally:
        server.stop()


def test_timer_after_stop_raises():
    server = pygev.Server(Echo(), "127.0.0.1:0", num_loops=1)
    server.stop()
    with pytest.raises(RuntimeError):
        server.run_after(0.1, lambda: None)


def test_timers_do_not_fire_after_stop(serve):
    st_ = serve(Echo(), num_loops=1)
    fired = queue.Queue()
    st_.server.run_after(2.0, lambda: fired.put(1))
    st_.stop()
    # start() has returned: nothing can run any more; the pending timer never ran.
    assert fired.empty()

"""Log records from the loop threads reach Python's ``logging`` as they were made (time,
thread, source location), and a changed level of the ``pygev`` logger takes effect while
the server runs, under ``start()`` and under ``serve()``."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import WAIT, LogCapture, ServerThread, connect, echo_roundtrip, expect_eof

import pygev

pytestmark = pytest.mark.timeout(60)

IDLE_CLOSE = "after idle timeout"


class Tracker(pygev.Handler):
    """Echoes; blocks the dispatcher on ``b"block"``; notes connects and closes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: list[int] = []
        self.closed: dict[int, threading.Event] = {}
        self.blocked: tuple[float, float] | None = None
        self.dispatcher: int | None = None
        self.server: pygev.Server | None = None

    def on_connect(self, conn: pygev.Connection) -> None:
        with self.lock:
            self.ids.append(conn.id)
            self.closed[conn.id] = threading.Event()
        self.dispatcher = threading.get_ident()

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        if data == b"block":
            start = time.time()
            time.sleep(1.0)  # the loops go on meanwhile: their records wait for us
            self.blocked = (start, time.time())
        return data

    def on_close(self, conn: pygev.Connection) -> None:
        # A timer runs in a later batch: by then the dispatcher has emitted every record
        # queued before this close (it does so at the end of each batch).
        assert self.server is not None
        self.server.run_after(0, self.closed[conn.id].set)

    def connection_id(self, index: int) -> int:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.ids) > index:
                    return self.ids[index]
            time.sleep(0.01)
        raise AssertionError(f"connection {index} never reached on_connect")


class ServeThread:
    """``await server.serve()`` on an asyncio loop of its own thread."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        self.server = pygev.Server(handler, "127.0.0.1:0", **kwargs)
        self.host, self.port = self.server.address
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()))

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "serve() did not return"


@pytest.fixture(params=["start", "serve"])
def run_server(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    running: list[Any] = []

    def factory(handler: Any, **kwargs: Any) -> Any:
        if request.param == "start":
            server: Any = ServerThread(handler, **kwargs)
            handler.server = server.server
            server.start()
        else:
            server = ServeThread(handler, **kwargs)
            handler.server = server.server
            server.start()
        running.append(server)
        return server

    yield factory
    for server in running:
        server.stop()


@pytest.fixture
def capture() -> Iterator[LogCapture]:
    """Collects the ``pygev`` logger's records; the level is left to each test."""
    logger = logging.getLogger("pygev")
    handler = LogCapture()
    old_level = logger.level
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def idle_close(server: Any, handler: Tracker, index: int) -> int:
    """Opens connection ``index``, lets the idle timeout close it, and returns its id once
    every record the loop made before the close has been emitted (or dropped)."""
    sock = connect(server.port)
    try:
        conn_id = handler.connection_id(index)
        expect_eof(sock)
    finally:
        sock.close()
    assert handler.closed[conn_id].wait(WAIT), "on_close never ran"
    return conn_id


def test_loop_records_keep_their_time_thread_and_location(
    run_server: Callable[..., Any], capture: LogCapture
) -> None:
    logging.getLogger("pygev").setLevel(logging.DEBUG)
    handler = Tracker()
    server = run_server(handler, num_loops=1, idle_timeout=0.3)
    blocker = connect(server.port)
    idle = connect(server.port)
    try:
        handler.connection_id(1)
        blocker.sendall(b"block")  # the dispatcher sleeps; the idle one times out meanwhile
        expect_eof(idle)
        record = capture.wait_for(IDLE_CLOSE)
        assert handler.blocked is not None
        start, end = handler.blocked
        # Made while the dispatcher slept, not when it emitted the record afterwards.
        assert start <= record.created < end, (start, record.created, end)
        assert record.msecs == pytest.approx((record.created % 1) * 1000, abs=1)
        assert record.threadName.startswith("pygev-loop-"), record.threadName
        assert record.thread not in (None, handler.dispatcher, threading.get_ident())
        assert record.pathname.endswith("timeouts.rs"), record.pathname
        assert record.filename == "timeouts.rs"
        assert record.lineno > 0
        assert record.funcName is not None and "timeouts" in record.funcName
        assert record.levelno == logging.DEBUG
        assert record.name == "pygev"
        # A formatter that shows all of it works on such a record.
        line = logging.Formatter(
            "%(asctime)s.%(msecs)03d %(threadName)s %(thread)d %(filename)s:%(lineno)d "
            "%(funcName)s %(message)s"
        ).format(record)
        assert f"timeouts.rs:{record.lineno}" in line and record.threadName in line
    finally:
        blocker.close()
        idle.close()


def test_a_changed_level_takes_effect_without_a_restart(
    run_server: Callable[..., Any], capture: LogCapture
) -> None:
    logger = logging.getLogger("pygev")
    logger.setLevel(logging.WARNING)
    handler = Tracker()
    server = run_server(handler, num_loops=2, idle_timeout=0.1)
    index = 0

    def closed_quietly() -> bool:
        nonlocal index
        conn_id = idle_close(server, handler, index)
        index += 1
        return not [r for r in capture.matching(IDLE_CLOSE) if f" {conn_id} " in r.msg]

    assert closed_quietly(), "a DEBUG record got through at WARNING"
    logger.setLevel(logging.DEBUG)
    # The loops learn of the level within a fraction of a second: closes go on until one
    # is logged.
    deadline = time.monotonic() + WAIT
    while closed_quietly():
        assert time.monotonic() < deadline, "DEBUG never took effect"
    logger.setLevel(logging.WARNING)
    assert closed_quietly() and closed_quietly(), "DEBUG records after going back"


SLOW = "took "


class Sleepy(pygev.Handler):
    """Echoes; sleeps for as many seconds as a message asks (``b"sleep 0.3"``)."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def on_connect(self, conn: pygev.Connection) -> None:
        self.ids.append(conn.id)

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        if data.startswith(b"sleep "):
            time.sleep(float(data.split()[1]))
        return data


def test_a_slow_callback_is_logged_with_its_method_and_connection(
    run_server: Callable[..., Any], capture: LogCapture
) -> None:
    logging.getLogger("pygev").setLevel(logging.WARNING)
    handler = Sleepy()
    server = run_server(handler, num_loops=1, slow_callback_duration=0.05)
    with connect(server.port) as quick, connect(server.port) as slow:
        echo_roundtrip(quick, b"quick")
        echo_roundtrip(slow, b"sleep 0.3")
        record = capture.wait_for(SLOW)
        slow_id = handler.ids[1]
        message = record.getMessage()
        assert f"Sleepy.on_message of connection {slow_id} took " in message, message
        assert "asyncio.to_thread" in message
        assert record.levelno == logging.WARNING
        took = float(message.split(" took ")[1].split()[0])
        assert took >= 0.05, message
        # Quick callbacks are not; nor the quick connection's after the slow one.
        echo_roundtrip(quick, b"quick again")
        assert len(capture.matching(SLOW)) == 1, [r.getMessage() for r in capture.records]
        # After a while without callbacks the watchdog sleeps; it wakes for the next one.
        time.sleep(1.5)
        echo_roundtrip(quick, b"sleep 0.3")
        deadline = time.monotonic() + WAIT
        while len(capture.matching(SLOW)) < 2:
            assert time.monotonic() < deadline, "the second slow callback went unreported"
            time.sleep(0.01)
        assert f"connection {handler.ids[0]} took " in capture.matching(SLOW)[1].getMessage()


class SlowEverywhere(pygev.Handler):
    def __init__(self, server_box: list[pygev.Server]) -> None:
        self.server_box = server_box

    def on_connect(self, conn: pygev.Connection) -> None:
        time.sleep(0.2)

    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        time.sleep(0.2)  # blocks before its first await: that step is the callback's
        await asyncio.sleep(0)
        return data

    def on_close(self, conn: pygev.Connection) -> None:
        self.server_box[0].run_after(0, lambda: time.sleep(0.2))


def test_slow_callbacks_of_every_kind_are_logged(
    run_server: Callable[..., Any], capture: LogCapture
) -> None:
    logging.getLogger("pygev").setLevel(logging.WARNING)
    box: list[pygev.Server] = []
    handler = SlowEverywhere(box)
    server = run_server(handler, num_loops=1, slow_callback_duration=0.05)
    box.append(server.server)
    with connect(server.port) as sock:
        echo_roundtrip(sock, b"x")
    for name in ("SlowEverywhere.on_connect of", "SlowEverywhere.on_message of", "timer"):
        capture.wait_for(name)


def test_slow_callbacks_go_unlogged_when_disabled(
    run_server: Callable[..., Any], capture: LogCapture
) -> None:
    logging.getLogger("pygev").setLevel(logging.DEBUG)
    handler = Tracker()
    server = run_server(handler, num_loops=1, slow_callback_duration=None)
    handler.server = server.server
    with connect(server.port) as sock:
        echo_roundtrip(sock, b"block")  # a second in on_message
    conn_id = handler.connection_id(0)
    assert handler.closed[conn_id].wait(WAIT)  # every record before it has been emitted
    assert not capture.matching(SLOW), [r.getMessage() for r in capture.records]


def test_slow_callback_duration_is_validated() -> None:
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="slow_callback_duration"):
            pygev.Server(pygev.Handler(), "127.0.0.1:0", slow_callback_duration=bad)


INTERRUPTED_WHILE_LOGGING = """
import logging, socket, struct, sys, threading
import pygev

class CtrlCNow(logging.Handler):
    # Ctrl+C arriving while the dispatcher hands a loop's record to logging.
    def emit(self, record):
        if "reset" in record.getMessage():
            raise KeyboardInterrupt

logging.getLogger("pygev").addHandler(CtrlCNow())
server = pygev.Server(pygev.Handler(), "127.0.0.1:0", num_loops=1,
                      protocol=pygev.LengthPrefix(max_frame_size=16))

def bad_client():
    with socket.create_connection(server.address) as sock:
        sock.sendall(struct.pack(">I", 1 << 20))  # past max_frame_size: reset, logged
        sock.recv(1)

threading.Thread(target=bad_client, daemon=True).start()
try:
    server.start()
except KeyboardInterrupt:
    pass
print("stopped", flush=True)
"""


#: The same, with Ctrl+C arriving while a callback's exception is logged.
INTERRUPTED_WHILE_LOGGING_AN_ERROR = (
    INTERRUPTED_WHILE_LOGGING.replace(
        'if "reset" in record.getMessage():', "if record.exc_info:"
    )
    .replace(
        "server = pygev.Server(pygev.Handler(),",
        "class Boom(pygev.Handler):\n"
        "    def on_message(self, conn, ctx, data):\n"
        "        raise RuntimeError('boom')\n\n"
        "server = pygev.Server(Boom(),",
    )
    .replace('struct.pack(">I", 1 << 20)', 'struct.pack(">I", 1) + b"x"')
)


@pytest.mark.parametrize("script", [INTERRUPTED_WHILE_LOGGING, INTERRUPTED_WHILE_LOGGING_AN_ERROR])
def test_ctrl_c_during_logging_still_stops_the_server(script: str) -> None:
    """A KeyboardInterrupt raised inside logging code the dispatcher runs (a loop's record,
    or a callback's exception) is not swallowed with the logging error: the server stops."""
    import subprocess
    import sys

    assert script.count("raise KeyboardInterrupt") == 1
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
    )
    assert proc.stdout.strip() == "stopped", (proc.stdout, proc.stderr)

"""Shared fixtures and helpers for the pygev test suite.

Every test talks to a real server over real sockets on the loopback interface, with port 0.
Every wait is bounded by a deadline (and pytest-timeout bounds each test as a whole); every
server started here is stopped and its thread joined at teardown.
"""

from __future__ import annotations

import logging
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

import pygev

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

#: Upper bound for any single wait in the tests. Generous on purpose: it bounds the test,
#: it does not measure speed.
WAIT = 15.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "library_bug(reason): fails because of a known pygev bug, reported with a diagnosis; "
        "the test states the contract and must pass once the library is fixed",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A test without its own timeout marker still cannot hang the suite.
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(60))


# ---- waiting ----------------------------------------------------------------------------


class LineFraming(pygev.Protocol):
    """Lines, framed in Python."""

    def unpacket(
        self, conn: pygev.Connection, buffer: pygev.RingBuffer
    ) -> tuple[object, object] | None:
        data = buffer.bytes()
        end = data.find(b"\n")
        if end < 0:
            return None
        buffer.retrieve(end + 1)
        return None, data[:end]

    def packet(self, conn: pygev.Connection, data: bytes) -> bytes:
        return data + b"\n"


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    """Polls ``predicate`` until it returns a true value (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.005)


# ---- sockets ----------------------------------------------------------------------------


def connect(port: int, host: str = "127.0.0.1", timeout: float = WAIT) -> socket.socket:
    """A blocking client socket connected to ``host:port`` with a socket timeout."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def connect_unix(address: str, timeout: float = WAIT) -> socket.socket:
    """A blocking client socket connected to a pygev Unix address (``"unix:/path"`` or
    ``"unix:@name"``) with a socket timeout."""
    name = address.removeprefix("unix:")
    target = "\0" + name[1:] if name.startswith("@") else name
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(target)
    return sock


def recv_exactly(sock: socket.socket, n: int, timeout: float = WAIT) -> bytes:
    """Reads exactly ``n`` bytes before the deadline; fails on EOF or timeout."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    old = sock.gettimeout()
    try:
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after reading {len(buf)} of {n} bytes")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(min(n - len(buf), 1 << 20))
            except socket.timeout:
                raise AssertionError(f"timed out after reading {len(buf)} of {n} bytes") from None
            if not chunk:
                raise AssertionError(f"EOF after reading {len(buf)} of {n} bytes")
            buf += chunk
    finally:
        sock.settimeout(old)
    return bytes(buf)


def read_to_end(
    sock: socket.socket, timeout: float = WAIT, limit: int = 1 << 30
) -> tuple[bytes, str]:
    """Reads until the peer ends the connection, before the deadline; returns everything
    read and how it ended: ``"eof"`` (a FIN) or ``"reset"`` (ECONNRESET)."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    old = sock.gettimeout()
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no end after {timeout:.0f} s ({len(buf)} bytes read)")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(1 << 20)
            except socket.timeout:
                raise AssertionError(
                    f"no end after {timeout:.0f} s ({len(buf)} bytes read)"
                ) from None
            except ConnectionResetError:
                return bytes(buf), "reset"
            if not chunk:
                return bytes(buf), "eof"
            buf += chunk
            if len(buf) > limit:
                raise AssertionError(f"read more than {limit} bytes without an end")
    finally:
        sock.settimeout(old)


def recv_until_eof(sock: socket.socket, timeout: float = WAIT, limit: int = 1 << 30) -> bytes:
    """Reads until EOF before the deadline; returns everything read."""
    data, end = read_to_end(sock, timeout, limit)
    assert end == "eof", f"a reset after {len(data)} bytes where a clean EOF was due"
    return data


def expect_reset(sock: socket.socket, timeout: float = WAIT) -> bytes:
    """Asserts the peer ends the connection with a reset (ECONNRESET), never a clean EOF,
    before the deadline; returns what was read before the reset."""
    data, end = read_to_end(sock, timeout)
    assert end == "reset", (
        f"a clean EOF (FIN) after {len(data)} bytes where a reset was due: the peer would "
        "take a cut-off stream for a complete one"
    )
    return data


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts that
    cannot take port 0: redis-server, HAProxy, a supervisor's fixed port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_tool(name: str, *elsewhere: str) -> str:
    """The path of the program `name` (a real server a test starts), looked for on PATH,
    then at `elsewhere`; missing, the test fails in CI (scripts/test.sh installs it) and is
    skipped on a user's machine."""
    found = shutil.which(name) or next((p for p in elsewhere if os.access(p, os.X_OK)), None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing: scripts/test.sh installs it (apt-get)")
        pytest.skip(f"{name} is not installed (scripts/test.sh installs it with apt-get)")
    return found


class RedisServer:
    """A ``redis-server`` on a loopback port of its own, which a test may kill and start
    again on the same port."""

    def __init__(self, executable: str, directory: Path) -> None:
        self.executable = executable
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        options = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        options += ["--appendonly", "no", "--dir", str(self.directory)]
        self.proc = subprocess.Popen(
            [self.executable, *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + WAIT
        while not self._answers():
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                pytest.fail(f"redis-server exited with {self.proc.returncode}: {out}")
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server did not answer on port {self.port}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: Redis vanishes at once, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self._reap()

    def pause(self) -> None:
        """SIGSTOP: Redis keeps its connections open and answers nothing, as behind a
        lost network."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused one would not end
            self.proc.terminate()
        self._reap()

    def _reap(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` started on a free loopback port, stopped at teardown."""
    server = RedisServer(require_tool("redis-server"), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def stop_group(proc: subprocess.Popen[Any], signum: int = signal.SIGTERM) -> int:
    """Stops `proc` (started with ``start_new_session=True``) with `signum` if it still
    runs, waits up to ``2 * WAIT`` for it, then kills whatever is left of its process group
    (its workers); its exit code."""
    try:
        if proc.poll() is None:
            proc.send_signal(signum)
        try:
            proc.wait(WAIT * 2)
        except subprocess.TimeoutExpired:
            pass
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return proc.returncode


def expect_refused(server: ServerThread, data: bytes = b"") -> None:
    """Connects to `server`, sends `data`, and asserts the server resets the connection at
    once: the reset may come before connect() returns, before the send, or at the read."""
    try:
        sock = server.connect()
    except ConnectionResetError:
        return
    with sock:
        try:
            if data:
                sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            return
        expect_reset(sock)


def expect_eof(sock: socket.socket, timeout: float = WAIT) -> None:
    """Asserts the peer closes (EOF) with no further data, before the deadline."""
    rest = recv_until_eof(sock, timeout)
    assert rest == b"", f"expected EOF, got {len(rest)} more bytes first"


def echo_roundtrip(sock: socket.socket, payload: bytes, timeout: float = WAIT) -> None:
    """Sends ``payload`` and asserts the same bytes come back."""
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload), timeout) == payload


def send_in_thread(sock: socket.socket, data: bytes) -> threading.Thread:
    """``sock.sendall(data)`` in a daemon thread (so the caller can read meanwhile)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            sock.sendall(data)
        except BaseException as exc:  # reported by join_sender
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True, name="test-sender")
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def join_sender(thread: threading.Thread, timeout: float = WAIT) -> None:
    thread.join(timeout)
    assert not thread.is_alive(), "sender thread did not finish"
    errors = thread.errors  # type: ignore[attr-defined]
    if errors:
        raise errors[0]


def ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# ---- servers ----------------------------------------------------------------------------


class Echo(pygev.Handler):
    """Returns every message as it came."""

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        return data


class ServerThread:
    """A pygev.Server whose ``start()`` runs in a background thread (the dispatcher)."""

    def __init__(self, handler: Any, address: Any = "127.0.0.1:0", **kwargs: Any) -> None:
        self.handler = handler
        self.server = pygev.Server(handler, address, **kwargs)
        bound = self.server.address
        #: The server's Unix address, or None on TCP (then host and port are set).
        self.unix: str | None = bound if isinstance(bound, str) else None
        self.host, self.port = ("", 0) if self.unix or bound is None else bound
        self.error: BaseException | None = None
        self.returned = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pygev-dispatcher", daemon=True)

    def _run(self) -> None:
        try:
            self.server.start()
        except BaseException as exc:
            self.error = exc
        finally:
            self.returned.set()

    def start(self) -> ServerThread:
        self.thread.start()
        return self

    @property
    def ident(self) -> int | None:
        """The dispatcher thread's ident (where every callback must run)."""
        return self.thread.ident

    def connect(self, timeout: float = WAIT) -> socket.socket:
        if self.unix is not None:
            return connect_unix(self.unix, timeout)
        return connect(self.port, self.host, timeout)

    def stats(self) -> dict[str, Any]:
        return self.server.stats()

    def join(self, timeout: float = WAIT) -> None:
        """Waits for ``start()`` to return; fails if it did not or if it raised."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"server.start() did not return within {timeout} s"
        if self.error is not None:
            raise AssertionError(f"server.start() raised {self.error!r}") from self.error

    def stop(self, timeout: float = WAIT) -> None:
        self.server.stop()
        if self.thread.ident is not None:
            self.join(timeout)


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerThread]]:
    """Factory: ``serve(handler, **server_kwargs)`` returns a running ServerThread.

    Teardown stops every server and joins its thread (failing the test if one hangs).
    """
    servers: list[ServerThread] = []

    def factory(handler: Any = None, address: Any = "127.0.0.1:0", **kwargs: Any) -> ServerThread:
        st = ServerThread(handler if handler is not None else Echo(), address, **kwargs)
        servers.append(st)
        return st.start()

    yield factory
    problems = []
    for st in servers:
        try:
            st.server.stop()
        except BaseException as exc:
            problems.append(f"stop() raised {exc!r}")
    for st in servers:
        st.thread.join(WAIT)
        if st.thread.is_alive():
            problems.append(f"server on port {st.port} did not stop")
    assert not problems, "; ".join(problems)


@pytest.fixture
def echo_server(serve: Callable[..., ServerThread]) -> ServerThread:
    return serve(Echo(), num_loops=2)


# ---- a handler that records everything --------------------------------------------------


class Recorder(pygev.Handler):
    """Records every callback per connection id (with the thread it ran on) and echoes.

    Test threads wait on it with :meth:`wait`; the dispatcher notifies on every callback.
    """

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.cond = threading.Condition()
        self.events: dict[int, list[tuple[str, Any]]] = defaultdict(list)
        self.conns: dict[int, pygev.Connection] = {}
        self.threads: set[int] = set()
        self.connects = 0
        self.closes = 0

    def _record(self, conn: pygev.Connection, kind: str, value: Any = None) -> None:
        with self.cond:
            self.threads.add(threading.get_ident())
            self.events[conn.id].append((kind, value))
            self.cond.notify_all()

    def on_connect(self, conn: pygev.Connection) -> None:
        with self.cond:
            self.conns[conn.id] = conn
            self.connects += 1
        self._record(conn, "connect", conn.peer_addr)

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes | None:
        self._record(conn, "message", data)
        return data if self.echo else None

    def on_close(self, conn: pygev.Connection) -> None:
        with self.cond:
            self.closes += 1
        self._record(conn, "close", conn.connected)

    def wait(self, predicate: Callable[[], Any], timeout: float = WAIT, what: str = "") -> Any:
        with self.cond:
            ok = self.cond.wait_for(predicate, timeout)
        if not ok:
            raise AssertionError(f"timed out waiting for {what or 'handler state'}")
        return ok

    def conn_by_peer_port(self, port: int) -> pygev.Connection:
        with self.cond:
            for conn in self.conns.values():
                if conn.peer_addr[1] == port:
                    return conn
        raise KeyError(port)

    def data_of(self, conn_id: int) -> bytes:
        with self.cond:
            return b"".join(v for k, v in self.events[conn_id] if k == "message")


# ---- logging ----------------------------------------------------------------------------


class LogCapture(logging.Handler):
    """Collects the records of the ``pygev`` logger (from any thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.cond:
            self.records.append(record)
            self.cond.notify_all()

    def matching(self, substring: str) -> list[logging.LogRecord]:
        with self.cond:
            return [r for r in self.records if substring in r.getMessage()]

    def wait_for(self, substring: str, timeout: float = WAIT) -> logging.LogRecord:
        with self.cond:
            ok = self.cond.wait_for(lambda: self.matching(substring), timeout)
        if not ok:
            with self.cond:
                seen = [r.getMessage() for r in self.records]
            raise AssertionError(f"no pygev log record containing {substring!r}; got {seen}")
        return self.matching(substring)[0]

    @staticmethod
    def formatted(record: logging.LogRecord) -> str:
        return logging.Formatter("%(levelname)s %(name)s %(message)s").format(record)


@pytest.fixture
def pygev_log() -> Iterator[LogCapture]:
    logger = logging.getLogger("pygev")
    capture = LogCapture()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(capture)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)


# ---- many concurrent echo clients ----------------------------------------------------------


@dataclass
class EchoClient:
    sock: socket.socket
    payload: bytes
    chunks: list[bytes]
    pauses: list[float]
    sockname: tuple[Any, ...] = ()
    next_chunk: int = 0
    pending: memoryview | None = None
    next_time: float = 0.0
    received: bytearray = field(default_factory=bytearray)
    shut: bool = False
    eof: bool = False
    done: bool = False

    @property
    def all_sent(self) -> bool:
        return self.pending is None and self.next_chunk >= len(self.chunks)


def random_plan(
    rng: random.Random, max_total: int = 64 * 1024, max_cuts: int = 16, max_pause: float = 0.004
) -> tuple[bytes, list[bytes], list[float]]:
    """A random payload, cut at random points, with a random small pause after each piece."""
    size = rng.randint(1, max_total)
    payload = rng.randbytes(size)
    cuts = sorted(rng.sample(range(1, size), min(size - 1, rng.randint(0, max_cuts))))
    bounds = [0, *cuts, size]
    chunks = [payload[a:b] for a, b in zip(bounds, bounds[1:])]
    pauses = [rng.choice((0.0, 0.0, rng.uniform(0, max_pause))) for _ in chunks]
    return payload, chunks, pauses


def run_echo_clients(
    host: str,
    port: int,
    plans: list[tuple[bytes, list[bytes], list[float]]],
    *,
    half_close: bool = False,
    timeout: float = 60.0,
) -> list[EchoClient]:
    """Runs one client per plan concurrently (one thread, a selector) against an echo server.

    Each client sends its chunks with their pauses while reading whatever comes back. With
    ``half_close`` a client shuts down its write side after its last chunk and finishes at
    EOF; otherwise it finishes (and closes) once every byte came back. Fails on timeout, on
    excess bytes or on EOF before every byte came back; returns the clients so the caller
    can compare ``received`` with ``payload``.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sel = selectors.DefaultSelector()
    clients: list[EchoClient] = []
    try:
        for payload, chunks, pauses in plans:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(WAIT)
            sock.connect((host, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            client = EchoClient(sock, payload, chunks, pauses, sockname=sock.getsockname())
            clients.append(client)
            sel.register(sock, selectors.EVENT_READ, client)
        start = time.monotonic()
        for client in clients:
            client.next_time = start
        deadline = start + timeout
        active = len(clients)
        while active:
            now = time.monotonic()
            if now > deadline:
                unfinished = [c for c in clients if not c.done]
                c = unfinished[0]
                raise AssertionError(
                    f"{len(unfinished)} echo clients unfinished after {timeout:.0f} s; e.g. "
                    f"{c.sockname}: received {len(c.received)} of {len(c.payload)} bytes, "
                    f"sent {c.next_chunk}/{len(c.chunks)} chunks, eof={c.eof}"
                )
            wake = now + 0.05
            for c in clients:
                if c.done:
                    continue
                while c.pending is not None or (
                    c.next_chunk < len(c.chunks) and now >= c.next_time
                ):
                    if c.pending is None:
                        c.pending = memoryview(c.chunks[c.next_chunk])
                        c.next_chunk += 1
                    try:
                        n = c.sock.send(c.pending)
                    except BlockingIOError:
                        wake = min(wake, now + 0.002)
                        break
                    c.pending = c.pending[n:] if n < len(c.pending) else None
                    if c.pending is None:
                        c.next_time = now + c.pauses[c.next_chunk - 1]
                        if c.next_time > now:
                            break
                if c.next_chunk < len(c.chunks) and c.pending is None:
                    wake = min(wake, c.next_time)
                if half_close and c.all_sent and not c.shut:
                    c.sock.shutdown(socket.SHUT_WR)
                    c.shut = True
            for key, _ in sel.select(max(0.0, wake - time.monotonic())):
                c = key.data
                while True:
                    try:
                        data = c.sock.recv(1 << 16)
                    except BlockingIOError:
                        break
                    except ConnectionError as exc:
                        raise AssertionError(
                            f"client {c.sockname}: {exc!r} after {len(c.received)} of "
                            f"{len(c.payload)} bytes"
                        ) from exc
                    if not data:
                        c.eof = True
                        break
                    c.received += data
                if len(c.received) > len(c.payload):
                    raise AssertionError(
                        f"client {c.sockname} received {len(c.received)} bytes, "
                        f"sent only {len(c.payload)}"
                    )
                if c.eof:
                    if len(c.received) < len(c.payload) or not c.all_sent:
                        raise AssertionError(
                            f"client {c.sockname}: EOF after {len(c.received)} of "
                            f"{len(c.payload)} bytes"
                        )
                    finished = half_close
                else:
                    finished = not half_close and len(c.received) == len(c.payload)
                if finished:
                    c.done = True
                    active -= 1
                    sel.unregister(c.sock)
                    c.sock.close()
        return clients
    finally:
        sel.close()
        for c in clients:
            c.sock.close()


def assert_echoed(clients: list[EchoClient]) -> None:
    for c in clients:
        if bytes(c.received) != c.payload:
            first = next(
                (i for i, (a, b) in enumerate(zip(c.received, c.payload)) if a != b),
                min(len(c.received), len(c.payload)),
            )
            raise AssertionError(
                f"client {c.sockname}: echo differs at byte {first} "
                f"(received {len(c.received)}, sent {len(c.payload)})"
            )


# ---- the example as a subprocess ----------------------------------------------------------


class ExampleProcess:
    """``examples/echo.py`` in a subprocess; ``port`` parsed from its first line."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "echo.py"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(ROOT),
        )
        self.first_line = self._read_first_line()
        prefix = "pygev echo server listening on "
        if not self.first_line.startswith(prefix):
            self.kill()
            _, err = self.proc.communicate(timeout=WAIT)
            raise AssertionError(
                f"unexpected first line {self.first_line!r}; stderr: {err.decode(errors='replace')}"
            )
        where = self.first_line[len(prefix) :].strip()
        self.unix_path: str | None = None
        if where.startswith("unix:"):
            self.unix_path = where[len("unix:") :]
            self.host, self.port = "", 0
            return
        host, _, port = where.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)

    def _read_first_line(self) -> str:
        lines: list[bytes] = []
        reader = threading.Thread(
            target=lambda: lines.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(WAIT)
        if not lines:
            self.kill()
            raise AssertionError("examples/echo.py printed nothing")
        return lines[0].decode(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> tuple[int, str]:
        """Waits for exit; returns (returncode, stderr)."""
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"examples/echo.py did not exit within {timeout} s") from None
        return self.proc.returncode, err.decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)


@pytest.fixture
def example_echo() -> Iterator[Callable[..., ExampleProcess]]:
    procs: list[ExampleProcess] = []

    def factory(*args: str) -> ExampleProcess:
        p = ExampleProcess(*args)
        procs.append(p)
        return p

    yield factory
    for p in procs:
        p.kill()
        for stream in (p.proc.stdout, p.proc.stderr):
            if stream is not None:
                stream.close()


__all__ = [
    "WAIT",
    "Echo",
    "EchoClient",
    "LogCapture",
    "Recorder",
    "ServerThread",
    "assert_echoed",
    "connect",
    "echo_roundtrip",
    "expect_eof",
    "ipv6_available",
    "join_sender",
    "random_plan",
    "recv_exactly",
    "recv_until_eof",
    "run_echo_clients",
    "send_in_thread",
    "wait_until",
]

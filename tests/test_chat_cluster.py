"""``examples/chat_cluster.py``: a WebSocket chat whose worker processes relay every line
through Redis pub/sub, run as a real deployment (a supervisor and its workers, in a process
group of their own) against a real ``redis-server`` started here on a free loopback port.

Every wait is bounded; every process started here is killed at teardown, with its group."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from conftest import EXAMPLES, ROOT, WAIT, RedisServer, free_port
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

pytestmark = pytest.mark.timeout(120)

CHANNEL = "chat:test"
RELAY_DOWN = "* the chat relay is down"
RELAY_BACK = "* the chat relay is back"
NOT_DELIVERED = "* not delivered"


class ChatCluster:
    """``examples/chat_cluster.py`` in a process group of its own (the supervisor and its
    workers); its log (stderr) is collected for the failure messages."""

    def __init__(self, redis_url: str, workers: int, *options: str) -> None:
        self.port = free_port() if workers > 1 else 0
        command = [sys.executable, str(EXAMPLES / "chat_cluster.py"), "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--workers", str(workers), "--loops", "1"]
        command += ["--redis", redis_url, "--channel", CHANNEL, *options]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            cwd=str(ROOT),
            start_new_session=True,  # its workers too can be killed as a group
        )
        self.log: list[str] = []
        self.log_reader = threading.Thread(target=self._read_log, daemon=True)
        self.log_reader.start()
        self.port = self._read_port()
        self.clients = contextlib.ExitStack()

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace").rstrip())

    def _read_port(self) -> int:
        """The port of the ``... listening on HOST:PORT`` line printed first."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + WAIT
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(remaining, 0))
            if not ready:
                raise AssertionError(f"no 'listening on' line in {WAIT} s: {line!r} {self.log}")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"exited before listening: {line!r} {self.log}")
            line += chunk
        match = re.search(rb"listening on 127\.0\.0\.1:(\d+)$", line.strip())
        assert match, line
        return int(match.group(1))

    def join(self, name: str) -> ClientConnection:
        """A chat client named ``name``, once a worker serves the port (the workers bind
        after the supervisor printed its line). Closed at teardown."""
        deadline = time.monotonic() + WAIT
        while True:
            url = f"ws://127.0.0.1:{self.port}/?name={name}"
            try:
                return self.clients.enter_context(ws_connect(url, open_timeout=WAIT, proxy=None))
            except ConnectionRefusedError as refused:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    message = f"no worker serves port {self.port}: {self.log}"
                    raise AssertionError(message) from refused
                time.sleep(0.05)

    def join_every_worker(self, count: int, workers: int = 2) -> dict[ClientConnection, int]:
        """At least ``count`` clients, more until ``workers`` workers hold some (SO_REUSEPORT
        spreads them by hash, and a worker may still be starting): each with the pid of
        the worker that serves it, as its ``/whoami`` tells."""
        clients: dict[ClientConnection, int] = {}
        deadline = time.monotonic() + WAIT
        while len(clients) < count or len(set(clients.values())) < workers:
            if time.monotonic() > deadline:
                pids = set(clients.values())
                raise AssertionError(f"{len(clients)} clients on workers {pids} only")
            ws = self.join(f"c{len(clients)}")
            clients[ws] = whoami(ws)
        return clients

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Sends ``signum``; returns the exit code, which must come within a bounded time."""
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(WAIT * 2)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"did not exit in {WAIT * 2} s: {self.log}") from None
        self.log_reader.join(WAIT)  # the whole log: every process of the group has ended
        return code

    def wait_failed(self) -> int:
        """The exit code of a chat that ends by itself."""
        try:
            code = self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {WAIT} s: {self.log}") from None
        self.log_reader.join(WAIT)
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of the group
        self.proc.wait(WAIT)
        self.clients.close()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        self.log_reader.join(WAIT)


@pytest.fixture
def chat_cluster() -> Iterator[Callable[..., ChatCluster]]:
    """Factory: ``chat_cluster(redis_url, workers, *options)`` runs the example."""
    clusters: list[ChatCluster] = []

    def factory(redis_url: str, workers: int, *options: str) -> ChatCluster:
        cluster = ChatCluster(redis_url, workers, *options)
        clusters.append(cluster)
        return cluster

    yield factory
    for cluster in clusters:
        cluster.kill()


def whoami(ws: ClientConnection) -> int:
    """The pid of the worker that serves ``ws``."""
    ws.send("/whoami")
    reply = ws.recv(timeout=WAIT)
    match = re.fullmatch(r"\* you are \S+, on worker (\d+) at \S+ \(\d+ here\)", str(reply))
    assert match, reply
    return int(match.group(1))


def name_of(ws: ClientConnection) -> str:
    query = ws.request.path.partition("?name=")[2] if ws.request is not None else ""
    assert query, "clients are joined with a name"
    return query


def assert_closed_by_stop(ws: ClientConnection) -> None:
    """The client's next event is the server's close frame 1001 (going away), nothing
    before it."""
    with pytest.raises(ConnectionClosed) as closed:
        message = ws.recv(timeout=WAIT)
        raise AssertionError(f"{message!r} where the close was due")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001, closed.value


def test_a_line_reaches_the_clients_of_every_worker(
    redis_server: RedisServer, chat_cluster: Callable[..., ChatCluster]
) -> None:
    chat = chat_cluster(redis_server.url, 2)
    clients = chat.join_every_worker(16)
    pids = set(clients.values())
    assert len(pids) == 2 and chat.proc.pid not in pids, pids  # two workers, not the supervisor
    for pid in sorted(pids):
        # A line said on either worker reaches everyone, its sender included.
        sender = next(ws for ws, on in clients.items() if on == pid)
        sender.send(f"hello from worker {pid}")
        for ws in clients:
            assert ws.recv(timeout=WAIT) == f"{name_of(sender)}: hello from worker {pid}"
    # Whatever is published to the channel (another host, an operator) reaches everyone.
    with redis.Redis.from_url(redis_server.url) as direct:
        assert direct.publish(CHANNEL, "* maintenance at 18:00") == 2  # one per worker
    for ws in clients:
        assert ws.recv(timeout=WAIT) == "* maintenance at 18:00"
    assert chat.stop(signal.SIGTERM) == 0, chat.log
    for ws in clients:
        assert_closed_by_stop(ws)  # every worker drained its clients
    assert any("stopping 2 workers" in line for line in chat.log), chat.log


def test_every_client_sees_every_line_in_the_same_order(
    redis_server: RedisServer, chat_cluster: Callable[..., ChatCluster]
) -> None:
    chat = chat_cluster(redis_server.url, 2)
    clients = chat.join_every_worker(8)
    lines = 10
    for i in range(lines):  # every client says its lines without waiting for any
        for ws in clients:
            ws.send(f"line {i}")
    seen = {ws: [str(ws.recv(timeout=WAIT)) for _ in range(lines * len(clients))] for ws in clients}
    first = next(iter(seen.values()))
    for ws, got in seen.items():
        assert got == first, f"{name_of(ws)} saw another order"  # one order for all
    for ws in clients:
        mine = [line for line in first if line.startswith(f"{name_of(ws)}: ")]
        assert mine == [f"{name_of(ws)}: line {i}" for i in range(lines)]  # in its order
    assert chat.stop(signal.SIGTERM) == 0, chat.log


def test_the_chat_survives_a_redis_restart(
    redis_server: RedisServer, chat_cluster: Callable[..., ChatCluster]
) -> None:
    chat = chat_cluster(redis_server.url, 2)
    clients = chat.join_every_worker(8)
    senders = {pid: next(ws for ws, on in clients.items() if on == pid) for pid in clients.values()}
    redis_server.kill()
    # Each worker sees its subscription go and tells its clients.
    for ws in clients:
        assert str(ws.recv(timeout=WAIT)).startswith(RELAY_DOWN)
    # A line said meanwhile is refused to its sender, who stays connected.
    sender = next(iter(senders.values()))
    sender.send("into the void")
    assert str(sender.recv(timeout=WAIT)).startswith(NOT_DELIVERED)
    redis_server.start()  # the same port
    for ws in clients:
        assert ws.recv(timeout=WAIT) == RELAY_BACK  # each worker subscribed again
    for pid, sender in sorted(senders.items()):
        sender.send(f"back on worker {pid}")
        for ws in clients:
            assert ws.recv(timeout=WAIT) == f"{name_of(sender)}: back on worker {pid}"
    assert chat.stop(signal.SIGTERM) == 0, chat.log
    for ws in clients:
        assert_closed_by_stop(ws)


def test_a_silent_redis_is_noticed_and_the_chat_resumes(
    redis_server: RedisServer, chat_cluster: Callable[..., ChatCluster]
) -> None:
    # A pinged Redis must answer within a second; the connections stay open meanwhile, so
    # only the pings can tell that it went silent.
    chat = chat_cluster(redis_server.url, 2, "--health-check", "1")
    clients = chat.join_every_worker(8)
    redis_server.pause()
    try:
        for ws in clients:
            assert str(ws.recv(timeout=WAIT)).startswith(RELAY_DOWN)
    finally:
        redis_server.resume()
    for ws in clients:
        assert ws.recv(timeout=WAIT) == RELAY_BACK
    sender = next(iter(clients))
    sender.send("heard again")
    for ws in clients:
        assert ws.recv(timeout=WAIT) == f"{name_of(sender)}: heard again"
    assert chat.stop(signal.SIGTERM) == 0, chat.log


def test_one_process_commands_and_limits(
    redis_server: RedisServer, chat_cluster: Callable[..., ChatCluster]
) -> None:
    # --workers 1 (the default): the process serves itself, on the port it was given (0).
    chat = chat_cluster(redis_server.url, 1, "--max-message", "64")
    ann = chat.join("ann")
    assert whoami(ann) == chat.proc.pid
    ann.send("/who")
    assert ann.recv(timeout=WAIT) == "* unknown command: /whoami is the only one"
    ann.send("x" * 64)  # the longest line
    assert ann.recv(timeout=WAIT) == "ann: " + "x" * 64
    bob = chat.join("bob")
    bob.send("x" * 65)
    with pytest.raises(ConnectionClosed) as too_long:
        bob.recv(timeout=WAIT)
    assert too_long.value.rcvd is not None and too_long.value.rcvd.code == 1009
    eve = chat.join("eve")
    eve.send(b"\x00binary")
    with pytest.raises(ConnectionClosed) as binary:
        eve.recv(timeout=WAIT)
    assert binary.value.rcvd is not None and binary.value.rcvd.code == 1003
    ann.send("still here")  # the refused clients took nobody else down
    assert ann.recv(timeout=WAIT) == "ann: still here"
    assert chat.stop(signal.SIGINT) == 0, chat.log  # Ctrl+C
    assert_closed_by_stop(ann)


def test_a_chat_that_cannot_reach_redis_fails_at_start(
    chat_cluster: Callable[..., ChatCluster],
) -> None:
    nothing_there = f"redis://127.0.0.1:{free_port()}/0"
    chat = chat_cluster(nothing_there, 1)
    assert chat.wait_failed() == 1
    assert any(f"cannot subscribe to {CHANNEL}" in line for line in chat.log), chat.log

"""Metrics: the figures behind them in ``server.stats()`` (closes by reason, the dispatch
queue, callback durations), ``pygev.metrics``'s collector scraped over HTTP, and
``examples/metrics.py`` scraped as a user would, in one process and with two workers whose
figures the supervisor's endpoint adds up."""

from __future__ import annotations

import glob
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets.sync.client as ws_client
from conftest import (
    EXAMPLES,
    WAIT,
    ServerThread,
    echo_roundtrip,
    expect_eof,
    expect_refused,
    free_port,
    recv_exactly,
    stop_group,
    wait_until,
)
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

import pygev
from pygev import metrics

pytestmark = pytest.mark.timeout(90)

REASONS = {"peer", "local", "stop", "idle", "timeout", "protocol", "abort", "error", "tls"}
REFUSALS = {"untrusted_proxy", "tls_handshakes"}


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


class CloseOnBye(pygev.Handler):
    """Echoes; closes the connection when told ``bye``."""

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes | None:
        if data == b"bye":
            conn.close()
            return None
        return data


class WsCloseOnBye(pygev.WebSocketHandler):
    def on_message(self, conn: pygev.Connection, data: bytes | str) -> bytes | str | None:
        if data == "bye":
            conn.close()
            return None
        return data


def closes(server: ServerThread) -> dict[str, int]:
    return dict(server.stats()["closed_by_reason"])


# ---- stats() ----------------------------------------------------------------------------


def test_closes_are_counted_by_the_cause_that_began_them(
    serve: Callable[..., ServerThread],
) -> None:
    server = serve(CloseOnBye(), protocol=pygev.LengthPrefix(4, max_frame_size=64), num_loops=2)
    peer = server.connect()
    echo_roundtrip(peer, frame(b"hello"))
    peer.close()
    local = server.connect()
    local.sendall(frame(b"bye"))
    expect_eof(local)
    protocol = server.connect()
    protocol.sendall(struct.pack(">I", 1000))  # over max_frame_size: refused at once
    stays = server.connect()
    echo_roundtrip(stays, frame(b"still here"))
    wait_until(lambda: server.stats()["closed"] == 3, what="three closes")
    assert closes(server) == dict.fromkeys(REASONS, 0) | {"peer": 1, "local": 1, "protocol": 1}
    server.stop()
    stats = server.stats()
    assert stats["closed_by_reason"]["stop"] == 1
    assert sum(stats["closed_by_reason"].values()) == stats["closed"] == 4
    per_loop = [loop["closed_by_reason"] for loop in stats["loops"]]
    assert {r: sum(c[r] for c in per_loop) for r in REASONS} == stats["closed_by_reason"]
    for sock in (local, protocol, stays):
        sock.close()


def test_an_idle_timeout_counts_as_idle(serve: Callable[..., ServerThread]) -> None:
    server = serve(idle_timeout=0.2)
    silent = server.connect()
    expect_eof(silent)
    wait_until(lambda: server.stats()["closed"] == 1)
    assert closes(server)["idle"] == 1
    silent.close()


def test_websocket_closes_count_whoever_began_them(serve: Callable[..., ServerThread]) -> None:
    server = serve(WsCloseOnBye())
    url = f"ws://127.0.0.1:{server.port}/"
    with ws_client.connect(url, open_timeout=WAIT, close_timeout=WAIT) as ws:
        ws.send("hi")
        assert ws.recv(timeout=WAIT) == "hi"
    # The peer's close frame, which our side answers: the peer's close.
    wait_until(lambda: server.stats()["closed"] == 1)
    # The handler's close: ours.
    with ws_client.connect(url, open_timeout=WAIT, close_timeout=WAIT) as ws:
        ws.send("bye")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=WAIT)
    wait_until(lambda: server.stats()["closed"] == 2)
    assert closes(server) == dict.fromkeys(REASONS, 0) | {"peer": 1, "local": 1}


def test_callbacks_are_timed_only_when_asked(serve: Callable[..., ServerThread]) -> None:
    server = serve()
    assert server.server.time_callbacks is False
    sock = server.connect()
    echo_roundtrip(sock, b"untimed")
    wait_until(lambda: server.stats()["events_dispatched"] >= 2)
    assert server.stats()["callback_durations"]["count"] == 0
    server.server.time_callbacks = True
    for i in range(20):
        echo_roundtrip(sock, b"timed %d" % i)
    durations = wait_until(lambda: (d := server.stats()["callback_durations"])["count"] >= 20 and d)
    buckets = durations["buckets"]
    bounds = [bound for bound, _ in buckets]
    counts = [count for _, count in buckets]
    assert bounds[0] == 1e-6 and bounds[-1] == float("inf")
    assert all(b2 == 2 * b1 for b1, b2 in zip(bounds[:-2], bounds[1:-1]))
    assert counts[-1] == durations["count"]
    assert durations["sum"] > 0
    sock.close()


def test_the_dispatch_queue_depth_shows_what_waits_for_python(
    serve: Callable[..., ServerThread],
) -> None:
    blocked = threading.Event()
    seen: list[dict[str, Any]] = []

    class Blocking(pygev.Handler):
        def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
            if data == b"first":
                blocked.set()
                # The dispatcher is held here: what the loop reads now waits in the queue.
                deadline = time.monotonic() + WAIT
                while time.monotonic() < deadline:
                    stats = server.server.stats()
                    if stats["dispatch_queue_depth"] > 0:
                        seen.append(stats)
                        break
                    time.sleep(0.005)
            return data

    server = serve(Blocking(), protocol=pygev.LengthPrefix(4), num_loops=1)
    sock = server.connect()
    sock.sendall(frame(b"first"))
    assert blocked.wait(WAIT)
    sock.sendall(frame(b"second"))
    replies = frame(b"first") + frame(b"second")
    assert recv_exactly(sock, len(replies)) == replies
    wait_until(lambda: seen, what="the queue seen from the blocked callback")
    assert seen[0]["dispatch_pending"] > 0
    assert seen[0]["loops"][0]["dispatch_pending"] == seen[0]["dispatch_pending"]
    wait_until(lambda: server.stats()["dispatch_pending"] == 0, what="all handled")
    assert server.stats()["dispatch_queue_depth"] == 0
    sock.close()


# ---- the collector, scraped ---------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    """The samples at ``url``, keyed ``name`` or ``name{label=value,...}``."""
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@pytest.fixture
def http_server() -> Iterator[Callable[[CollectorRegistry], str]]:
    """Factory: serves a registry with ``metrics.start_http_server``; returns its URL."""
    servers: list[Any] = []

    def factory(registry: CollectorRegistry) -> str:
        httpd = metrics.start_http_server(0, "127.0.0.1", registry)
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_port}/metrics"

    yield factory
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def test_the_collector_reports_stats_and_they_move(
    serve: Callable[..., ServerThread], http_server: Callable[[CollectorRegistry], str]
) -> None:
    # (idle_timeout long enough that a stalled machine does not close a talking client)
    server = serve(idle_timeout=2.0, num_loops=2)
    registry = CollectorRegistry()
    metrics.ServerCollector(server.server, registry)
    assert server.server.time_callbacks is True
    url = http_server(registry)
    before = scrape(url)
    assert before["pygev_connections_accepted_total"] == 0
    assert before["pygev_open_connections"] == 0
    assert before["pygev_callback_duration_seconds_count"] == 0
    assert {f"pygev_connections_closed_total{{reason={r}}}" for r in REASONS} <= set(before)
    refused = {f"pygev_connections_refused_total{{reason={r}}}" for r in REFUSALS}
    assert refused <= set(before) and all(before[name] == 0 for name in refused)

    socks = [server.connect() for _ in range(3)]
    for i, sock in enumerate(socks):
        for j in range(5):
            echo_roundtrip(sock, b"message %d.%d" % (i, j))
    moved = wait_until(lambda: (s := scrape(url))["pygev_open_connections"] == 3 and s)
    assert moved["pygev_connections_accepted_total"] == 3
    assert moved["pygev_messages_received_total"] >= 15  # (a message may come in parts)
    assert moved["pygev_received_bytes_total"] == moved["pygev_sent_bytes_total"] > 0
    assert moved["pygev_dispatched_batches_total"] > 0
    assert moved["pygev_callback_duration_seconds_count"] >= 15
    assert (
        moved["pygev_callback_duration_seconds_bucket{le=+Inf}"]
        == (moved["pygev_callback_duration_seconds_count"])
    )
    for sock in socks[:2]:
        sock.close()  # the peer's close; the third stays silent until idle_timeout

    def all_closed() -> dict[str, float] | None:
        s = scrape(url)
        return s if s["pygev_open_connections"] == 0 else None

    after = wait_until(all_closed, what="every connection closed")
    assert after["pygev_connections_closed_total{reason=peer}"] == 2
    assert after["pygev_connections_closed_total{reason=idle}"] == 1
    expect_eof(socks[2])
    socks[2].close()


# ---- examples/metrics.py ------------------------------------------------------------------


class MetricsExample:
    """``examples/metrics.py`` in a subprocess (its own process group, killed at the end);
    the metrics URL and the echo port parsed from its first two lines."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        command = [sys.executable, str(EXAMPLES / "metrics.py"), "--host", "127.0.0.1"]
        self.proc = subprocess.Popen(
            [*command, "--metrics-port", "0", "--loops", "1", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
            start_new_session=True,
        )
        self.log: list[str] = []
        threading.Thread(target=self._read_log, daemon=True).start()
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda: lines.extend(self.proc.stdout.readline() for _ in range(2)),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(WAIT)
        if len(lines) < 2:
            self.stop()
            raise AssertionError(f"no address lines: {lines} {self.log}")
        url = re.search(r"metrics on (\S+)", lines[0])
        port = re.search(r"listening on \S+:(\d+)", lines[1])
        assert url and port, lines
        self.url = url.group(1)
        self.port = int(port.group(1))

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip())

    def connect(self) -> socket.socket:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                return socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Stops it gracefully (killing whatever is left of its group after); its code."""
        try:
            return stop_group(self.proc, signum)
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def example() -> Iterator[Callable[..., MetricsExample]]:
    started: list[MetricsExample] = []

    def factory(*args: str, env: dict[str, str] | None = None) -> MetricsExample:
        started.append(MetricsExample(*args, env=env))
        return started[-1]

    yield factory
    for e in started:
        e.stop()


def test_the_example_serves_metrics_that_move(example: Callable[..., MetricsExample]) -> None:
    app = example("--port", "0", "--idle-timeout", "2")
    before = wait_until(lambda: scrape(app.url))
    assert before["pygev_connections_accepted_total"] == 0
    talker, silent = app.connect(), app.connect()
    for i in range(10):
        echo_roundtrip(talker, b"ping %d" % i)
    talker.close()
    expect_eof(silent)  # idle_timeout
    silent.close()

    def moved() -> dict[str, float] | None:
        s = scrape(app.url)
        return s if s["pygev_connections_closed_total{reason=idle}"] == 1 else None

    after = wait_until(moved, what="the idle close in the metrics")
    assert after["pygev_connections_accepted_total"] == 2
    assert after["pygev_connections_closed_total{reason=peer}"] == 1
    assert after["pygev_received_bytes_total"] == after["pygev_sent_bytes_total"] >= 60
    assert after["pygev_messages_received_total"] >= 10
    assert after["pygev_callback_duration_seconds_count"] >= 10
    assert app.stop(signal.SIGINT) == 0, app.log


def _per_worker(directory: Path, name: str) -> dict[int, float]:
    """``name``'s value in each worker's own multiprocess files (a counter's samples)."""
    by_pid: dict[int, float] = {}
    for path in glob.glob(str(directory / "counter_*.db")):
        pid = int(Path(path).stem.split("_")[1])
        for family in MultiProcessCollector.merge([path]):
            for sample in family.samples:
                if sample.name == name:
                    by_pid[pid] = sample.value
    return by_pid


def test_with_two_workers_one_endpoint_adds_them_up(
    example: Callable[..., MetricsExample], tmp_path: Path
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    app = example(
        "--port",
        str(free_port()),
        "--workers",
        "2",
        "--interval",
        "0.1",
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
    )
    socks: list[socket.socket] = []
    accepted = "pygev_connections_accepted_total"

    def workers_with_connections() -> int:
        return sum(1 for n in _per_worker(directory, accepted).values() if n > 0)

    # 40 connections, more until both workers took some (SO_REUSEPORT spreads them by
    # hash; one worker may still be binding at first).
    deadline = time.monotonic() + WAIT
    while len(socks) < 40 or workers_with_connections() < 2:
        assert time.monotonic() < deadline, f"one worker took every connection: {app.log}"
        if len(socks) >= 40:
            time.sleep(0.05)  # the workers mirror every 0.1 s
        sock = app.connect()
        echo_roundtrip(sock, b"hello")
        socks.append(sock)

    def summed() -> dict[str, float] | None:
        s = scrape(app.url)
        n = len(socks)
        return s if s[accepted] == n and s["pygev_open_connections"] == n else None

    total = wait_until(summed, what="both workers' connections in the sums")
    per_worker = wait_until(
        lambda: (p := _per_worker(directory, accepted)) and sum(p.values()) == len(socks) and p
    )
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker
    assert total["pygev_messages_received_total"] >= len(socks)
    assert total["pygev_received_bytes_total"] == 5 * len(socks)

    # A worker killed: its connections are gone from the open gauge (the supervisor marks
    # it dead), its accepts stay in the counter's sum.
    victim, victims_count = next(iter(per_worker.items()))
    os.kill(victim, signal.SIGKILL)

    def after_kill() -> dict[str, float] | None:
        s = scrape(app.url)
        open_now = len(socks) - victims_count
        return s if s["pygev_open_connections"] == open_now else None

    later = wait_until(after_kill, what="the dead worker's gauges dropped")
    assert later[accepted] == len(socks)
    assert app.stop() == 0, app.log
    # The survivor's drain is in the files too: its last mirror comes after the stop.
    merged = MultiProcessCollector.merge(glob.glob(str(directory / "counter_*.db")))
    stopped = sum(
        sample.value
        for family in merged
        for sample in family.samples
        if sample.name == "pygev_connections_closed_total" and sample.labels["reason"] == "stop"
    )
    assert stopped == len(socks) - victims_count
    for sock in socks:
        sock.close()


def test_refusals_are_counted_by_reason(
    serve: Callable[..., ServerThread], http_server: Callable[[CollectorRegistry], str]
) -> None:
    """A connection not from a trusted proxy is reset before it counts as accepted; the
    refusal shows in its own counter."""
    server = serve(proxy_protocol=True, trusted_proxies=["192.0.2.0/24"])
    registry = CollectorRegistry()
    metrics.ServerCollector(server.server, registry)
    url = http_server(registry)
    for _ in range(2):
        expect_refused(server)
    name = "pygev_connections_refused_total{reason=untrusted_proxy}"
    after = wait_until(lambda: (s := scrape(url))[name] == 2 and s, what="the refusals")
    assert after["pygev_connections_accepted_total"] == 0

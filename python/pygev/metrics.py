"""Prometheus metrics for pygev servers, with ``prometheus_client`` (``pip install
pygev[metrics]``).

One process: a collector reads :meth:`pygev.Server.stats` at each scrape::

    import pygev
    from pygev import metrics

    server = pygev.Server(Echo(), "0.0.0.0:1833")
    metrics.ServerCollector(server)          # into prometheus_client.REGISTRY
    metrics.start_http_server(9100)          # GET /metrics, from a daemon thread
    server.start()

Worker processes (``pygev.run(make_server, workers=N)``): a scrape-time collector sees one
process only, so each worker mirrors its ``stats()`` into ``prometheus_client``'s
multiprocess mode (files in ``PROMETHEUS_MULTIPROC_DIR``, which must be set, to an empty
directory, before ``prometheus_client`` is first imported), and the supervisor serves one
endpoint that adds them up::

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
    from prometheus_client.multiprocess import mark_process_dead
    from pygev import metrics

    def make_server():
        server = pygev.Server(Echo(), "0.0.0.0:1833")
        metrics.MultiprocessExporter(server)   # every second, in the worker
        return server

    metrics.start_http_server(9100, registry=metrics.multiprocess_registry())
    pygev.run(make_server, workers=4, on_worker_exit=mark_process_dead)

The metrics (all named ``pygev_...``): counters ``connections_accepted_total``,
``connections_dialed_total``, ``connect_failures_total``, ``connections_closed_total``
(label ``reason``: peer, local, stop, idle, timeout, protocol, abort, error, tls; see
:meth:`pygev.Server.stats`), ``received_bytes_total``, ``sent_bytes_total``,
``messages_received_total``, ``dispatched_events_total``, ``dispatched_batches_total``,
``read_pauses_total``, ``input_pauses_total``, ``loop_wakeups_total``; gauges
``open_connections``, ``write_buffered_bytes``, ``dispatch_pending_bytes``,
``dispatch_queue_depth``, ``timers``, ``max_batch_events``; and the histogram
``callback_duration_seconds`` (buckets from 1 µs to 8.4 s, doubling), which needs
:attr:`pygev.Server.time_callbacks` (both classes here turn it on).
"""

from __future__ import annotations

import math
import os
import signal
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from pygev import _workers
from pygev._server import Server

__all__ = [
    "MultiprocessExporter",
    "ServerCollector",
    "multiprocess_registry",
    "start_http_server",
]

#: Counters: name (``_total`` is added), ``stats()`` key, help.
COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("pygev_connections_accepted", "accepted", "Connections accepted."),
    ("pygev_connections_dialed", "dialed", "Outgoing connections that connected."),
    ("pygev_connect_failures", "connect_failed", "Outgoing connections that failed to connect."),
    ("pygev_received_bytes", "bytes_in", "Bytes read from sockets."),
    ("pygev_sent_bytes", "bytes_out", "Bytes written to sockets."),
    ("pygev_messages_received", "messages_in", "Whole messages the loops handed to Python."),
    (
        "pygev_dispatched_events",
        "events_dispatched",
        "Callbacks the dispatcher ran (handler calls and timers).",
    ),
    (
        "pygev_dispatched_batches",
        "batches_dispatched",
        "Batches the dispatcher handled, one GIL acquisition each.",
    ),
    (
        "pygev_read_pauses",
        "read_pauses",
        "Times a connection stopped reading because its output passed the write high-water "
        "mark (a slow reader).",
    ),
    (
        "pygev_input_pauses",
        "input_pauses",
        "Times a connection stopped reading because its input waiting for the handler "
        "passed conn_dispatch_high_water (a slow handler).",
    ),
    ("pygev_loop_wakeups", "loop_wakeups", "Times a loop thread's poll returned."),
)

#: Closed connections, by the ``reason`` label.
CLOSED = (
    "pygev_connections_closed",
    "closed_by_reason",
    "Connections closed, by the cause that began the close.",
)

#: Connections refused before they counted as accepted, by the ``reason`` label.
REFUSED = (
    "pygev_connections_refused",
    "refused_by_reason",
    "Connections reset before they counted as accepted: not from a trusted proxy "
    "(untrusted_proxy), or past tls_max_handshakes (tls_handshakes).",
)

#: The counters with a ``reason`` label.
BY_REASON = (CLOSED, REFUSED)

#: Gauges: name, ``stats()`` key, help, how worker processes add up (multiprocess mode).
GAUGES: tuple[tuple[str, str, str, Literal["livesum", "livemax"]], ...] = (
    ("pygev_open_connections", "connections", "Connections open now.", "livesum"),
    (
        "pygev_write_buffered_bytes",
        "write_buffered",
        "Bytes queued for writing, over all connections.",
        "livesum",
    ),
    (
        "pygev_dispatch_pending_bytes",
        "dispatch_pending",
        "Bytes, plus 128 per event, that the loops handed to Python and it has not handled "
        "yet; reading stops past dispatch_high_water.",
        "livesum",
    ),
    (
        "pygev_dispatch_queue_depth",
        "dispatch_queue_depth",
        "Events queued for the dispatcher that it has not taken yet.",
        "livesum",
    ),
    ("pygev_timers", "timers_queued", "Timer entries held.", "livesum"),
    (
        "pygev_max_batch_events",
        "max_batch",
        "The most callbacks one batch ran so far.",
        "livemax",
    ),
)

#: The histogram of callback durations.
DURATIONS = (
    "pygev_callback_duration_seconds",
    "callback_durations",
    "How long Python callbacks held the dispatcher (from the previous callback's return "
    "in the same batch, so pygev's own work for the event is included).",
)

class ServerCollector(Collector):
    """Reports a server's :meth:`~pygev.Server.stats` at each scrape, for a server in this
    process.

    Args:
        server: The server (started or not: its loop counters are zero before ``start()``).
        registry: Where to register (``None``: register it yourself).
        time_callbacks: Turn on :attr:`pygev.Server.time_callbacks`, which the histogram
            ``pygev_callback_duration_seconds`` needs (one clock read per callback).

    A registry holds one collector of these names: give each server of a process its own
    registry. Scrapes run on the HTTP server's thread; ``stats()`` is thread-safe.
    """

    def __init__(
        self,
        server: Server,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        time_callbacks: bool = True,
    ) -> None:
        self.server = server
        if time_callbacks:
            server.time_callbacks = True
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return list(_families(None))

    def collect(self) -> Iterable[Metric]:
        return list(_families(self.server.stats()))


def _families(stats: Mapping[str, Any] | None) -> Iterator[Metric]:
    """The metric families of ``stats`` (``None``: without samples, to describe them)."""
    for name, key, documentation in COUNTERS:
        counter = CounterMetricFamily(name, documentation)
        if stats is not None:
            counter.add_metric([], stats[key])
        yield counter
    for name, key, documentation in BY_REASON:
        by_reason = CounterMetricFamily(name, documentation, labels=["reason"])
        if stats is not None:
            for reason, count in stats[key].items():
                by_reason.add_metric([reason], count)
        yield by_reason
    for name, key, documentation, _ in GAUGES:
        gauge = GaugeMetricFamily(name, documentation)
        if stats is not None:
            gauge.add_metric([], stats[key])
        yield gauge
    name, key, documentation = DURATIONS
    histogram = HistogramMetricFamily(name, documentation)
    if stats is not None:
        durations = stats[key]
        buckets = [(_le(bound), count) for bound, count in durations["buckets"]]
        histogram.add_metric([], buckets, durations["sum"])
    yield histogram


def _le(bound: float) -> str:
    """A bucket's upper bound as its ``le`` label (as prometheus_client writes it)."""
    return "+Inf" if math.isinf(bound) else repr(bound)


class MultiprocessExporter:
    """Mirrors a server's :meth:`~pygev.Server.stats` into ``prometheus_client``'s
    multiprocess-mode metrics every ``interval`` seconds, for a worker of
    ``pygev.run(..., workers=N)``: the endpoint of :func:`multiprocess_registry` then
    reports the sum over the workers (counters include workers that exited; gauges only
    live ones, once the supervisor calls ``mark_process_dead`` for the dead: give it to
    ``pygev.run`` as ``on_worker_exit``).

    Args:
        server: The worker's server; the mirror runs as its timer (``run_every``), on its
            dispatcher thread, from before ``start()`` until it stops.
        interval: Seconds between mirrors: the endpoint is that far behind at most.
        time_callbacks: Turn on :attr:`pygev.Server.time_callbacks` for the histogram.

    Raises:
        RuntimeError: ``prometheus_client`` is not in multiprocess mode
            (``PROMETHEUS_MULTIPROC_DIR`` was not set when it was first imported).

    One per process; the metrics are the process's own (not in ``REGISTRY``).
    """

    def __init__(
        self, server: Server, interval: float = 1.0, *, time_callbacks: bool = True
    ) -> None:
        if not getattr(values.ValueClass, "_multiprocess", False):
            raise RuntimeError(
                "pygev: prometheus_client is not in multiprocess mode: set "
                "PROMETHEUS_MULTIPROC_DIR before prometheus_client is first imported"
            )
        self.server = server
        if time_callbacks:
            server.time_callbacks = True
        stats = server.stats()
        self._counters = {
            key: Counter(name, documentation, registry=None)
            for name, key, documentation in COUNTERS
        }
        self._by_reason = {
            key: Counter(name, documentation, ["reason"], registry=None)
            for name, key, documentation in BY_REASON
        }
        self._gauges = {
            key: Gauge(name, documentation, registry=None, multiprocess_mode=mode)
            for name, key, documentation, mode in GAUGES
        }
        name, _, documentation = DURATIONS
        bounds = [bound for bound, _ in stats["callback_durations"]["buckets"]]
        self._durations = Histogram(name, documentation, registry=None, buckets=bounds)
        # NOTE: a Histogram only observes one value at a time; the mirror adds whole bucket
        # counts to its per-bucket values (its `_buckets`, `_sum`: prometheus_client's own
        # layout, which its multiprocess files and collector share).
        if not hasattr(self._durations, "_buckets") or not hasattr(self._durations, "_sum"):
            raise RuntimeError("pygev: this prometheus_client's Histogram has no _buckets")
        self._last: dict[str, int] = {}
        self._last_buckets = [0] * len(bounds)
        self._last_sum = 0.0
        self._mirror(stats)
        self.timer = server.run_every(interval, self.update)
        # Timers stop with the server: the drain's closes and last bytes are mirrored once
        # more when a worker of pygev.run ends.
        _workers._at_worker_exit.append(self.update)

    def update(self) -> None:
        """Mirrors the server's counters now (the timer calls it)."""
        self._mirror(self.server.stats())

    def _mirror(self, stats: Mapping[str, Any]) -> None:
        for key, counter in self._counters.items():
            counter.inc(self._delta(key, stats[key]))
        for key, by_reason in self._by_reason.items():
            for reason, count in stats[key].items():
                by_reason.labels(reason).inc(self._delta(f"{key}.{reason}", count))
        for key, gauge in self._gauges.items():
            gauge.set(stats[key])
        durations = stats["callback_durations"]
        below = 0
        for i, (_, cumulative) in enumerate(durations["buckets"]):
            count = cumulative - below
            below = cumulative
            if count > self._last_buckets[i]:
                self._durations._buckets[i].inc(count - self._last_buckets[i])
                self._last_buckets[i] = count
        if durations["sum"] > self._last_sum:
            self._durations._sum.inc(durations["sum"] - self._last_sum)
            self._last_sum = durations["sum"]

    def _delta(self, key: str, value: int) -> int:
        """How much a counter grew since the last mirror."""
        delta = value - self._last.get(key, 0)
        self._last[key] = int(value)
        return max(delta, 0)


def multiprocess_registry(path: str | None = None) -> CollectorRegistry:
    """A registry that reports the sum of every process's multiprocess-mode metrics (those
    of :class:`MultiprocessExporter`) in ``path`` (default: ``PROMETHEUS_MULTIPROC_DIR``),
    for the supervisor's endpoint."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]  # (unannotated)
    return registry


def start_http_server(
    port: int, addr: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY
) -> WSGIServer:
    """Serves ``registry`` over HTTP (``GET /metrics``, any path) from a daemon thread.

    ``prometheus_client.start_http_server``, made safe to call before ``pygev.run``
    forks workers: its threads keep SIGTERM, SIGINT and SIGCHLD blocked (the supervisor
    takes them with ``sigtimedwait`` on the main thread, and a thread that did not block
    them could take them instead), and each forked process closes its listening socket
    (so a worker never holds the metrics port). Thread-safe.

    Args:
        port: The port; 0 picks a free one.
        addr: The address to listen on.
        registry: What to serve.

    Returns:
        The HTTP server: ``server_port`` is the port it listens on; ``shutdown()`` then
        ``server_close()`` end it.
    """
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _workers._Supervisor.SIGNALS)
    try:
        httpd, _ = _start_http_server(port, addr, registry)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    held = weakref.ref(httpd)

    def close_in_child() -> None:
        server = held()
        if server is not None:
            server.socket.close()

    os.register_at_fork(after_in_child=close_in_child)
    return httpd

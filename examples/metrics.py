"""Echo server with Prometheus metrics at ``/metrics`` (``pip install pygev[metrics]``).

Every byte a client sends comes back to it, and an HTTP endpoint reports the server's
counters (``pygev.metrics``): connections, accepts, closes by reason, bytes, messages,
batches, read pauses, the dispatch queue, and a histogram of callback durations.

    python examples/metrics.py --port 1833 --metrics-port 9100
    python examples/metrics.py --port 1833 --metrics-port 9100 --workers 2
    curl http://127.0.0.1:9100/metrics

With ``--workers N`` the workers mirror their counters into prometheus_client's
multiprocess mode (files in ``PROMETHEUS_MULTIPROC_DIR``: a fresh temporary directory
unless it is set) every ``--interval`` seconds, and the supervisor serves one endpoint
with their sum.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable

import pygev


class Echo(pygev.Handler):
    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=1833, help="0 picks a free port")
    parser.add_argument("--loops", type=int, default=0, help="loop threads, 0 = one per CPU")
    parser.add_argument("--metrics-port", type=int, default=9100, help="0 picks a free port")
    parser.add_argument(
        "--idle-timeout", type=float, default=None, help="close connections silent this long"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port (SO_REUSEPORT), supervised by pygev.run; "
        "give a fixed --port",
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="with --workers: seconds between mirrors"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    def make_server() -> pygev.Server:
        return pygev.Server(
            Echo(),
            f"{args.host}:{args.port}",
            num_loops=args.loops,
            idle_timeout=args.idle_timeout,
        )

    if args.workers > 1:
        if args.port == 0:
            parser.error("--workers needs a fixed --port")
        serve_workers(make_server, args)
        return

    from pygev import metrics

    server = make_server()
    metrics.ServerCollector(server)
    http = metrics.start_http_server(args.metrics_port, args.host)
    # SIGINT (Ctrl+C) and SIGTERM stop the server cleanly, even before start() runs.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: server.stop())
    host, port = server.address
    print(f"metrics on http://{args.host}:{http.server_port}/metrics", flush=True)
    print(f"pygev echo server listening on {host}:{port}", flush=True)
    server.start()


def serve_workers(make_echo: Callable[[], pygev.Server], args: argparse.Namespace) -> None:
    """Runs ``args.workers`` processes and serves their summed metrics from this one."""
    # Multiprocess mode is chosen when prometheus_client is first imported: the directory
    # is set before that, and holds nothing from an earlier run.
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    directory = given or tempfile.mkdtemp(prefix="pygev-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    for stale in glob.glob(os.path.join(directory, "*.db")):
        os.remove(stale)
    from prometheus_client.multiprocess import mark_process_dead

    from pygev import metrics

    def make_server() -> pygev.Server:
        server = make_echo()
        metrics.MultiprocessExporter(server, args.interval)
        return server

    try:
        registry = metrics.multiprocess_registry()
        http = metrics.start_http_server(args.metrics_port, args.host, registry)
        print(f"metrics on http://{args.host}:{http.server_port}/metrics", flush=True)
        print(f"pygev echo server listening on {args.host}:{args.port}", flush=True)
        # SIGINT and SIGTERM stop every worker gracefully (pygev.run handles both); the
        # supervisor drops a dead worker's gauges (its counters stay in the sums).
        pygev.run(make_server, workers=args.workers, on_worker_exit=mark_process_dead)
    finally:
        if given is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Echo server: gev's echo example in pygev.

Every byte a client sends comes back to it. With ``--framing length`` the server speaks
4-byte big-endian length-prefixed frames (``pygev.LengthPrefix``) and echoes each frame.

    python examples/echo.py --port 1833 --loops 0
    python examples/echo.py --unix /tmp/echo.sock     # a Unix socket instead
    python examples/echo.py --port 1833 --workers 2   # two processes sharing the port
"""

from __future__ import annotations

import argparse
import logging
import resource
import signal

import pygev


class Echo(pygev.Handler):
    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=1833, help="0 picks a free port")
    parser.add_argument("--unix", metavar="PATH", help="listen on this Unix socket instead")
    parser.add_argument("--loops", type=int, default=0, help="loop threads, 0 = one per CPU")
    parser.add_argument("--framing", choices=["raw", "length"], default="raw")
    parser.add_argument("--stats", action="store_true", help="log server.stats() at exit")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port (SO_REUSEPORT), supervised by pygev.run; "
        "give a fixed --port",
    )
    parser.add_argument(
        "--tls", nargs=2, metavar=("CERT", "KEY"), help="speak TLS with this certificate and key"
    )
    parser.add_argument(
        "--plugin",
        action="store_true",
        help="with --framing length: run the length-prefix framing built as a Rust plugin "
        "(the C ABI of pygev-plugin) instead of the built-in one",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Many connections need many descriptors: raise the soft limit to the hard one.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    framing = pygev.LengthPrefix(4) if args.framing == "length" else pygev.Raw()
    # The same framing built as a Rust plugin (benches/echo.py compares the two).
    plugin = pygev._pygev._length_prefix_plugin(4) if args.plugin else None
    protocol = plugin if plugin is not None and args.framing == "length" else framing
    address = f"unix:{args.unix}" if args.unix else f"{args.host}:{args.port}"
    tls = pygev.TLS(*args.tls) if args.tls else None

    def make_server() -> pygev.Server:
        return pygev.Server(Echo(), address, num_loops=args.loops, protocol=protocol, tls=tls)

    if args.workers > 1:
        if args.unix or args.port == 0:
            parser.error("--workers needs a fixed TCP --port")
        print(f"pygev echo server listening on {args.host}:{args.port}", flush=True)
        # SIGINT and SIGTERM stop every worker gracefully (pygev.run handles both).
        pygev.run(make_server, workers=args.workers)
        return
    server = make_server()
    bound = server.address
    where = bound if isinstance(bound, str) else f"{bound[0]}:{bound[1]}"
    # SIGINT (Ctrl+C) and SIGTERM stop the server cleanly, even before start() runs.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: server.stop())
    print(f"pygev echo server listening on {where}", flush=True)
    server.start()
    if args.stats:
        stats = server.stats()
        per_batch = stats["events_dispatched"] / max(stats["batches_dispatched"], 1)
        logging.getLogger("pygev").info("stats %s; %.1f events per batch", stats, per_batch)


if __name__ == "__main__":
    main()

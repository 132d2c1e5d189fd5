#!/usr/bin/env python3
"""Echo server on gevent (gevent.server.StreamServer): one greenlet per
connection, recv -> sendall.

Prints "listening on HOST:PORT" (flushed) once bound, serves until SIGINT/SIGTERM.
"""

import argparse
import resource
import signal
import sys

import gevent
from gevent.server import StreamServer


def raise_nofile_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def handle(sock, _addr):
    recv = sock.recv
    sendall = sock.sendall
    try:
        while True:
            data = recv(65536)
            if not data:
                break
            sendall(data)
    except OSError:
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port")
    ap.add_argument("--backlog", type=int, default=1024)
    args = ap.parse_args()
    raise_nofile_limit()
    server = StreamServer((args.host, args.port), handle, backlog=args.backlog)
    server.start()
    host, port = server.address[:2]
    print(f"listening on {host}:{port}", flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(sig, server.stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

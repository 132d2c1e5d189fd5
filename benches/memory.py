#!/usr/bin/env python3
"""Memory per idle connection: pygev against asyncio, uvloop (and gevent if installed).

For each server: start it, serve one warm-up connection, read its RSS (VmRSS
from /proc/PID/status); then open N connections in batches (so the listen
backlog never overflows), each sending one small message and reading its echo
back (so the server has really accepted and served every one), leave them
idle, wait a moment and read the RSS again. Reports
(RSS_after - RSS_before) / N bytes per connection.

Writes benches/results/memory.json.
Usage: python benches/memory.py [-n 10000] [--servers pygev,asyncio,uvloop,gevent]
       python benches/memory.py --websocket [-n 10000] [--servers pygev,picows,websockets]
       python benches/memory.py --tls [-n 10000] [--servers pygev,uvloop]
"""
from __future__ import annotations

import argparse
import datetime
import errno
import json
import os
import selectors
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
from common import ServerError, log, median

MIB = 1024 * 1024


def message(i):
    return b"ping %010d\n" % i  # 16 bytes, unique per connection


WS_REQUEST = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")


def ws_message(i):
    """The upgrade request (no extensions) and one masked 16-byte binary frame."""
    mask = os.urandom(4)
    payload = message(i)
    masked = bytes(b ^ mask[k % 4] for k, b in enumerate(payload))
    return WS_REQUEST + bytes([0x82, 0x80 | len(payload)]) + mask + masked


def echoed(sent, got, websocket):
    """None while the reply is incomplete, else whether it is the right one."""
    if not websocket:
        return None if len(got) < len(sent) else got == sent
    head_end = got.find(b"\r\n\r\n")
    if head_end < 0 or len(got) < head_end + 4 + 2 + 16:
        return None
    frame = got[head_end + 4:]
    payload = bytes(b ^ m for b, m in zip(sent[-16:], sent[-20:-16] * 4))
    return got.startswith(b"HTTP/1.1 101") and frame == bytes([0x82, 16]) + payload


class Conn:
    __slots__ = ("connected", "got", "msg", "sock")

    def __init__(self, sock, msg):
        self.sock, self.msg, self.got, self.connected = sock, msg, b"", False


def open_idle_connections(host, port, n, batch, timeout=60.0, websocket=False):
    """Open n connections, batch at a time; each sends one message and reads
    the echo (for WebSocket: completes the handshake and echoes one frame). Returns the
    open (now idle) sockets."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sel = selectors.DefaultSelector()
    socks = []
    try:
        for first in range(0, n, batch):
            pending = 0
            for i in range(first, min(n, first + batch)):
                s = socket.socket(family, socket.SOCK_STREAM)
                s.setblocking(False)
                socks.append(s)
                err = s.connect_ex((host, port))
                if err not in (0, errno.EINPROGRESS):
                    raise OSError(err, f"connect #{i}: {os.strerror(err)}")
                msg = ws_message(i) if websocket else message(i)
                sel.register(s, selectors.EVENT_WRITE, Conn(s, msg))
                pending += 1
            deadline = time.monotonic() + timeout
            while pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"batch at {first}: {pending} connection(s) not echoed "
                                       f"within {timeout:.0f} s")
                for key, _mask in sel.select(timeout=1.0):
                    c = key.data
                    if not c.connected:
                        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            raise OSError(err, f"connect: {os.strerror(err)}")
                        c.connected = True
                        c.sock.sendall(c.msg)  # a few bytes into an empty socket buffer
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                        continue
                    data = c.sock.recv(4096)
                    if not data:
                        raise ConnectionError("server closed a connection")
                    c.got += data
                    ok = echoed(c.msg, c.got, websocket)
                    if ok is not None:
                        if not ok:
                            raise ValueError(f"bad echo: sent {c.msg!r}, got {c.got!r}")
                        sel.unregister(c.sock)
                        pending -= 1
    except BaseException:
        for s in socks:
            s.close()
        raise
    finally:
        sel.close()
    return socks


def open_tls_connections(host, port, n, workers=16):
    """Open n TLS connections (Python's ssl, the certificate not verified), each echoing one
    message; returns them, open and idle."""
    import ssl
    from concurrent.futures import ThreadPoolExecutor

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def one(i):
        sock = ctx.wrap_socket(socket.create_connection((host, port), timeout=60),
                               server_hostname="localhost")
        sent = message(i)
        sock.sendall(sent)
        got = b""
        while len(got) < len(sent):
            chunk = sock.recv(64)
            if not chunk:
                raise ConnectionError("server closed a connection")
            got += chunk
        if got != sent:
            raise ValueError(f"bad echo: sent {sent!r}, got {got!r}")
        return sock

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(n)))


def echo_once(host, port, websocket=False, tls=False):
    """The warm-up connection: one round trip, then close."""
    if tls:
        for s in open_tls_connections(host, port, 1):
            s.close()
        return
    if websocket:
        for s in open_idle_connections(host, port, 1, 1, websocket=True):
            s.close()
        return
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"warm-up\n")
        got = b""
        while len(got) < 8:
            chunk = s.recv(64)
            if not chunk:
                raise ConnectionError("server closed the warm-up connection")
            got += chunk


def measure(spec, n, batch, settle, websocket=False, tls=False):
    server = common.Server(spec, cpu=None, log_name=f"memory-{spec.name}")
    socks = []
    try:
        echo_once(server.host, server.port, websocket, tls)
        time.sleep(settle)
        before = server.rss_bytes()
        t0 = time.monotonic()
        if tls:
            socks = open_tls_connections(server.host, server.port, n)
        else:
            socks = open_idle_connections(server.host, server.port, n, batch,
                                          websocket=websocket)
        connect_s = time.monotonic() - t0
        time.sleep(settle)
        if not server.alive():
            raise ServerError("server died while holding the connections" + server.log_tail())
        after = server.rss_bytes()
        # Informative: what is given back once every connection is closed.
        for s in socks:
            s.close()
        socks = []
        time.sleep(settle)
        after_close = server.rss_bytes() if server.alive() else None
        return {
            "module": server.module_path,
            "connections": n,
            "rss_before": before,
            "rss_after": after,
            "rss_after_close": after_close,
            "bytes_per_conn": (after - before) / n,
            "connect_seconds": connect_s,
        }
    finally:
        for s in socks:
            s.close()
        server.stop()


def table(results, servers, args):
    headers = ["server", "connections", "RSS before MiB", "RSS after MiB", "bytes/conn",
               "KiB/conn", "RSS after close MiB"]
    rows = []
    for name in servers:
        rs = results.get(name)
        if not rs:
            continue
        rows.append([
            name, str(args.connections),
            f"{median([r['rss_before'] for r in rs]) / MIB:.1f}",
            f"{median([r['rss_after'] for r in rs]) / MIB:.1f}",
            f"{median([r['bytes_per_conn'] for r in rs]):,.0f}",
            f"{median([r['bytes_per_conn'] for r in rs]) / 1024:.2f}",
            "-" if any(r["rss_after_close"] is None for r in rs)
            else f"{median([r['rss_after_close'] for r in rs]) / MIB:.1f}",
        ])
    if "pygev" in results:
        base = median([r["bytes_per_conn"] for r in results["pygev"]])
        headers.append("vs pygev")
        for row in rows:
            other = float(row[4].replace(",", ""))
            row.append(f"{other / base:.2f}x" if base > 0 else "-")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    what = ("completed the WebSocket handshake and echoed one 16-byte binary message"
            if args.websocket else
            "completed a TLS handshake and echoed one 16-byte message" if args.tls
            else "echoed one 16-byte message")
    out = [f"memory per idle connection (VmRSS delta / N, median of {args.rounds} round(s); "
           f"each connection {what})",
           line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description="Server memory per idle connection.")
    ap.add_argument("-n", "--connections", type=int, default=10000)
    ap.add_argument("--servers", default=None,
                    help="comma-separated subset of: pygev,asyncio,uvloop,gevent (default: all)")
    ap.add_argument("--batch", type=int, default=100, help="connections opened at a time")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds to wait before reading RSS")
    ap.add_argument("--rounds", type=int, default=1, help="rounds (median reported)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1000 connections")
    ap.add_argument("--websocket", action="store_true",
                    help="WebSocket servers (pygev, picows, websockets): each connection "
                         "completes the handshake and echoes one 16-byte binary message")
    ap.add_argument("--tls", action="store_true",
                    help="TLS servers (pygev, uvloop with Python's ssl): each connection "
                         "completes a TLS handshake (Python's ssl client) and echoes one "
                         "16-byte message")
    ap.add_argument("--out", default=common.RESULTS_DIR, help="results directory")
    args = ap.parse_args()
    if args.quick:
        args.connections, args.settle = 1000, 0.5
    hard = common.raise_nofile_limit()
    if args.connections + 64 > hard:
        raise SystemExit(f"-n {args.connections} needs more file descriptors than the hard "
                         f"limit RLIMIT_NOFILE={hard} allows (the server needs as many)")
    if args.tls:
        import tls as tls_bench

        certs = tls_bench.certificate("ecdsa")
        specs = common.select_specs(tls_bench.specs(False, certs), args.servers)
    elif args.websocket:
        import websocket as ws_bench

        specs = common.select_specs(ws_bench.specs(), args.servers)
    else:
        specs = common.select_specs(common.server_specs(include_gevent=True), args.servers)

    results, skipped, failed = {}, {}, {}
    started = datetime.datetime.now(datetime.timezone.utc)
    for rnd in range(args.rounds):
        for spec in specs:
            if spec.name in skipped or spec.name in failed:
                continue
            try:
                r = measure(spec, args.connections, args.batch, args.settle, args.websocket,
                            args.tls)
            except ServerError as exc:
                skipped[spec.name] = str(exc)
                log(f"SKIP {spec.name}: {exc}")
                continue
            except (OSError, ValueError, TimeoutError) as exc:
                failed[spec.name] = f"{type(exc).__name__}: {exc}"
                log(f"FAILED {spec.name}: {failed[spec.name]}")
                continue
            r["round"] = rnd + 1
            results.setdefault(spec.name, []).append(r)
            log(f"round {rnd + 1} {spec.name:8s} before {r['rss_before'] / MIB:7.1f} MiB  "
                f"after {r['rss_after'] / MIB:7.1f} MiB  {r['bytes_per_conn']:9,.0f} B/conn  "
                f"(connected in {r['connect_seconds']:.1f} s)")

    names = [s.name for s in specs if s.name in results]
    text = table(results, names, args)
    print()
    print(text)
    for name, why in skipped.items():
        print(f"skipped {name}: {why.splitlines()[0]}")
    for name, why in failed.items():
        print(f"FAILED {name}: {why}")

    os.makedirs(args.out, exist_ok=True)
    stem = "memory-tls" if args.tls else "memory-websocket" if args.websocket else "memory"
    path = os.path.join(args.out, f"{stem}-quick.json" if args.quick else f"{stem}.json")
    with open(path, "w") as f:
        json.dump({
            "benchmark": "memory",
            "started": started.isoformat(timespec="seconds"),
            "args": {"connections": args.connections, "batch": args.batch,
                     "settle": args.settle, "rounds": args.rounds,
                     "servers": [s.name for s in specs]},
            "machine": common.machine_info(),
            "skipped": skipped,
            "failed": failed,
            "results": results,
            "summary": {name: {"bytes_per_conn": median([r["bytes_per_conn"] for r in rs])}
                        for name, rs in results.items()},
            "table": text,
        }, f, indent=2)
    print(f"wrote {path}")
    return 1 if (failed or not results) else 0


if __name__ == "__main__":
    sys.exit(main())

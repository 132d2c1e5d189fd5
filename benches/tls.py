#!/usr/bin/env python3
"""TLS benchmark: pygev's TLS (rustls in the loops) against uvloop with Python's ssl
(OpenSSL) and, with --websocket, against picows over TLS (wss://), in one run each.

The same harness as echo.py (interleaved rounds, server pinned to CPU 0, the C load
generator pinned to CPU 1, server CPU time sampled over the measured window, paired
per-round ratios, rounds with too much hypervisor steal left out), with the load generator
speaking TLS (`loadgen -T`, OpenSSL, any version the server offers: TLS 1.3 here). Every
server uses the same certificate (ECDSA P-256 or RSA-2048, made at start with trustme).

Tests:
  tls-raw     "raw echo over TLS MiB/s": 50 connections, 4096-byte messages, 8 in flight
  tls-framed  "length-prefix over TLS msg/s": 100 connections, 16 frames of 64 bytes in
              flight each (4-byte length + 60 bytes)
  handshakes  "full handshakes/s": 50 connections, each in a loop: connect, a full TLS
              handshake (never resumed), one 64-byte echo, close (`loadgen -T -R`)
  wss64       (--websocket) "wss 64-byte messages": 100 connections, 64-byte binary
              messages, 16 in flight each (`loadgen -T -W`)

Servers: pygev (examples/echo.py --tls, one loop; with --websocket
examples/websocket_echo.py --tls), uvloop (benches/peers/uvloop_echo.py --tls: an asyncio
Protocol with ssl= on uvloop), picows (--websocket: benches/peers/picows_echo.py --tls).

Writes benches/results/tls-ecdsa.json and .png (tls-rsa.* with --key rsa, tls_websocket.*
with --websocket).
Usage: python benches/tls.py [--websocket] [--key ecdsa|rsa] [--duration 5] [--warmup 1]
                             [--rounds 5] [--servers ...] [--tests ...] [--quick]

--key picks the certificate: ecdsa (P-256, the default) or rsa (2048 bits). With ECDSA the
load generator's side of a handshake (an ECDSA verify) costs about as much as the
server's (an ECDSA sign), so on one core each it is the load generator that limits
handshakes/s; with RSA the server's signature dominates and the server is the limit.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import echo
from common import ServerSpec

PYTHON_DIR = os.path.join(common.REPO, "python")

TCP_TESTS = {
    "tls-raw": {
        "title": "raw echo over TLS",
        "connections": 50, "size": 4096, "inflight": 8,
        "unit": "MiB/s", "per_cpu_unit": "MiB/CPU-s",
        "loadgen_args": ["-T"],
    },
    "tls-framed": {
        "title": "length-prefix over TLS",
        "connections": 100, "size": 64, "inflight": 16,
        "unit": "msg/s", "per_cpu_unit": "msg/CPU-s",
        "framing": "length", "loadgen_args": ["-T", "-f", "4"],
    },
    "handshakes": {
        "title": "full TLS handshakes (+1 echo)",
        "connections": 50, "size": 64, "inflight": 1,
        "unit": "msg/s", "per_cpu_unit": "msg/CPU-s",
        "loadgen_args": ["-T", "-R"],
    },
}

WS_TESTS = {
    "wss64": {
        "title": "wss 64-byte messages",
        "connections": 100, "size": 64, "inflight": 16,
        "unit": "msg/s", "per_cpu_unit": "msg/CPU-s",
        "loadgen_args": ["-T", "-W"],
    },
}


def certificate(key_type):
    """A certificate for localhost and 127.0.0.1 and its key ("rsa": RSA-2048, "ecdsa":
    P-256), in a temporary folder."""
    import trustme

    folder = tempfile.mkdtemp(prefix="pygev-tls-bench-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    kind = trustme.KeyType.RSA if key_type == "rsa" else trustme.KeyType.ECDSA
    cert = trustme.CA(key_type=kind).issue_cert("localhost", "127.0.0.1", key_type=kind)
    certfile, keyfile = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    cert.private_key_and_cert_chain_pem.write_to_path(certfile)
    cert.private_key_pem.write_to_path(keyfile)
    return certfile, keyfile


def specs(websocket, tls):
    if websocket:
        return [
            ServerSpec("pygev", "examples/websocket_echo.py",
                       ["--port", "0", "--loops", "1", "--tls", *tls], "pygev",
                       fallback_pythonpath=PYTHON_DIR),
            ServerSpec("picows", "benches/peers/picows_echo.py", ["--port", "0", "--tls", *tls],
                       "picows"),
        ]
    return [
        ServerSpec("pygev", "examples/echo.py", ["--port", "0", "--loops", "1", "--tls", *tls],
                   "pygev", fallback_pythonpath=PYTHON_DIR),
        ServerSpec("uvloop", "benches/peers/uvloop_echo.py", ["--port", "0", "--tls", *tls],
                   "uvloop"),
    ]


def main():
    websocket = "--websocket" in sys.argv
    if websocket:
        sys.argv.remove("--websocket")
    key_type = "ecdsa"
    if "--key" in sys.argv:
        i = sys.argv.index("--key")
        key_type = sys.argv[i + 1]
        del sys.argv[i : i + 2]
    tls = certificate(key_type)
    tests = WS_TESTS if websocket else TCP_TESTS
    echo.TESTS.clear()
    echo.TESTS.update(tests)
    echo.SUITE.update({
        "name": "tls_websocket" if websocket else f"tls-{key_type}",
        "title": "TLS over WebSocket" if websocket else "TLS echo benchmark",
        "servers": "pygev,picows" if websocket else "pygev,uvloop",
        "tests": ",".join(tests),
        "peers": ("picows",) if websocket else ("uvloop",),
        "specs": lambda: specs(websocket, tls),
    })
    return echo.main()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""WebSocket echo benchmark: pygev against picows and websockets, in one run.

The same harness as echo.py (interleaved rounds, server pinned to CPU 0, the C load
generator pinned to CPU 1, server CPU time sampled over the measured window, paired
per-round ratios), with the load generator speaking WebSocket (`loadgen -W`: an upgrade
request without extensions, then masked binary frames with random keys; every echoed
frame is checked byte for byte).

Tests:
  ws64   "64-byte messages": 100 connections, 64-byte binary messages, 16 in flight each
  ws16k  "16 KiB messages":  50 connections, 16 KiB binary messages, 4 in flight each

Servers: pygev (examples/websocket_echo.py, one loop), picows (benches/peers/picows_echo.py,
on uvloop), websockets (benches/peers/websockets_echo.py, asyncio).

Writes benches/results/websocket.json and benches/results/websocket.png.
Usage: python benches/websocket.py [--duration 5] [--warmup 1] [--rounds 3] [--quick]
                                   [--servers pygev,picows,websockets] [--tests ws64,ws16k]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import echo
from common import ServerSpec

TESTS = {
    "ws64": {
        "title": "64-byte messages",
        "connections": 100, "size": 64, "inflight": 16,
        "unit": "msg/s", "per_cpu_unit": "msg/CPU-s",
        "loadgen_args": ["-W"],
    },
    "ws16k": {
        "title": "16 KiB messages",
        "connections": 50, "size": 16384, "inflight": 4,
        "unit": "MiB/s", "per_cpu_unit": "MiB/CPU-s",
        "loadgen_args": ["-W"],
    },
}


def specs():
    return [
        ServerSpec("pygev", "examples/websocket_echo.py", ["--port", "0", "--loops", "1"],
                   "pygev", fallback_pythonpath=os.path.join(common.REPO, "python")),
        ServerSpec("picows", "benches/peers/picows_echo.py", ["--port", "0"], "picows"),
        ServerSpec("websockets", "benches/peers/websockets_echo.py", ["--port", "0"],
                   "websockets"),
        # the same pygev server, built from an older revision (PYGEV_BASELINE)
        *common.baseline_spec("pygev-old", "examples/websocket_echo.py",
                              ["--port", "0", "--loops", "1"]),
    ]


def main():
    echo.TESTS.clear()
    echo.TESTS.update(TESTS)
    echo.SUITE.update({
        "name": "websocket",
        "title": "WebSocket echo benchmark",
        "servers": "pygev,picows,websockets",
        "tests": "ws64,ws16k",
        "peers": ("picows", "websockets", "pygev-old"),
        "specs": specs,
    })
    return echo.main()


if __name__ == "__main__":
    sys.exit(main())

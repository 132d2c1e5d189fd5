#!/usr/bin/env python3
"""Awaiting handlers: pygev's ``async def on_message`` under ``await server.serve()``
against uvloop, in one run.

The same harness as echo.py (interleaved rounds, server pinned to CPU 0, the C load
generator pinned to CPU 1, server CPU time sampled over the measured window, paired
per-round ratios, rounds with too much hypervisor steal left out).

Tests:
  framed  "length-prefix msg/s": 100 connections, 16 frames of 64 bytes in flight each
          (4-byte length + 60 bytes); every frame is one handler call
  raw     "raw echo MiB/s": 50 connections, 4096-byte messages, 8 in flight each

Servers:
  pygev-async     examples/asyncio_echo.py --async: ``async def on_message`` under
                  ``await server.serve()`` in asyncio's own loop
  pygev-serve     the same with a plain ``def on_message``
  pygev-serve-uvloop  the same on uvloop
  pygev           examples/echo.py: the plain handler under ``start()``
  uvloop          benches/peers/uvloop_echo.py: an asyncio ``Protocol`` on uvloop
  uvloop-streams  benches/peers/uvloop_streams_echo.py: ``asyncio.start_server`` on uvloop,
                  a coroutine per connection (``readexactly`` + ``write`` + ``await drain()``),
                  what most asyncio users write

Ratios: pygev-async/uvloop and pygev-async/uvloop-streams (the claim of issue 12: an
awaiting handler at least as cheap as uvloop's Protocol and 5x its streams), and
pygev-serve/pygev, pygev-serve-uvloop/pygev (the asyncio driver in asyncio's own loop and in
uvloop against the blocking one, same handler: each wake-up of the dispatcher costs a round
of the event loop, which asyncio's pure-Python loop makes dearer).

Writes benches/results/async_handlers.json and benches/results/async_handlers.png.
Usage: python benches/async_handlers.py [--duration 5] [--warmup 1] [--rounds 5] [--quick]
          [--servers pygev-async,pygev-serve,pygev-serve-uvloop,pygev,uvloop,uvloop-streams]
          [--tests framed,raw]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import echo
from common import ServerSpec

PYTHON_DIR = os.path.join(common.REPO, "python")
SERVE_ARGS = ["--port", "0", "--loops", "1", "--report", "3600"]


def specs():
    return [
        ServerSpec("pygev-async", "examples/asyncio_echo.py", [*SERVE_ARGS, "--async"],
                   "pygev", fallback_pythonpath=PYTHON_DIR),
        ServerSpec("pygev-serve", "examples/asyncio_echo.py", SERVE_ARGS, "pygev",
                   fallback_pythonpath=PYTHON_DIR),
        ServerSpec("pygev-serve-uvloop", "examples/asyncio_echo.py", [*SERVE_ARGS, "--uvloop"],
                   "pygev", fallback_pythonpath=PYTHON_DIR),
        ServerSpec("pygev", "examples/echo.py", ["--port", "0", "--loops", "1", "--stats"],
                   "pygev", fallback_pythonpath=PYTHON_DIR),
        ServerSpec("uvloop", "benches/peers/uvloop_echo.py", ["--port", "0"], "uvloop"),
        ServerSpec("uvloop-streams", "benches/peers/uvloop_streams_echo.py", ["--port", "0"],
                   "uvloop"),
    ]


def main():
    tests = {name: echo.TESTS[name] for name in ("framed", "raw")}
    echo.TESTS.clear()
    echo.TESTS.update(tests)
    echo.SUITE.update({
        "name": "async_handlers",
        "title": "awaiting handlers",
        "servers": "pygev-async,pygev-serve,pygev-serve-uvloop,pygev,uvloop,uvloop-streams",
        "tests": "framed,raw",
        "peers": (),
        "pairs": [("pygev-async", "uvloop"), ("pygev-async", "uvloop-streams"),
                  ("pygev-serve", "pygev"), ("pygev-serve-uvloop", "pygev")],
        "specs": specs,
    })
    return echo.main()


if __name__ == "__main__":
    sys.exit(main())

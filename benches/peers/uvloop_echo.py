#!/usr/bin/env python3
"""Echo server on uvloop: the very same asyncio Protocol code as asyncio_echo.py
(data_received -> transport.write), run on uvloop's event loop.

Prints "listening on HOST:PORT" (flushed) once bound, serves until SIGINT/SIGTERM;
with --unix PATH it listens on a Unix-domain socket there ("listening on unix:PATH").
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from asyncio_echo import main

if __name__ == "__main__":
    sys.exit(main(use_uvloop=True))

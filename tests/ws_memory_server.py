"""A WebSocket echo server for memory measurements, run as a subprocess by the tests so
that its resident memory is the server's alone.

Prints ``port N`` once listening; serves until its standard input closes. Every 100 ms it
asks malloc to return freed memory to the system (``malloc_trim``), so that resident
memory shows what the server holds, not what glibc keeps around after a free.
"""

from __future__ import annotations

import ctypes
import sys
import threading

import pygev


class Echo(pygev.WebSocketHandler):
    def on_message(self, conn: pygev.Connection, data: str | bytes) -> str | bytes:
        return data


def main() -> None:
    compression = sys.argv[1] == "compressed"
    bits = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    protocol = pygev.WebSocket(
        compression=compression, ping_interval=None, client_max_window_bits=bits
    )
    server = pygev.Server(Echo(), "127.0.0.1:0", num_loops=1, protocol=protocol)
    libc = ctypes.CDLL("libc.so.6")
    server.run_every(0.1, lambda: libc.malloc_trim(0))
    threading.Thread(target=lambda: (sys.stdin.read(), server.stop()), daemon=True).start()
    print("port", server.address[1], flush=True)
    server.start()


if __name__ == "__main__":
    main()

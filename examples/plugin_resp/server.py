"""A small Redis-compatible key-value server on pygev, with the RESP framing plugin.

    pip install examples/plugin_resp            # builds the plugin wheel (maturin)
    python examples/plugin_resp/server.py --port 6380
    redis-cli -p 6380 set greeting hello        # or any Redis client

Commands: PING [msg], ECHO msg, SET key value, GET key, DEL key..., EXISTS key...,
INCR key, INCRBY key n, DBSIZE, FLUSHDB, HELLO [2], CLIENT ..., COMMAND (an empty reply, for
redis-cli), QUIT.
"""

from __future__ import annotations

import argparse
import logging
import signal

import pygev_resp
from pygev_resp import args, array, bulk, error, integer, simple

import pygev


class Store(pygev.Handler):
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes | None:
        argv = args(data)
        name = argv[0].upper()
        rest = argv[1:]
        if name == b"PING":
            return bulk(rest[0]) if rest else simple("PONG")
        if name == b"ECHO" and len(rest) == 1:
            return bulk(rest[0])
        if name == b"SET" and len(rest) == 2:
            self.data[rest[0]] = rest[1]
            return simple("OK")
        if name == b"GET" and len(rest) == 1:
            return bulk(self.data.get(rest[0]))
        if name == b"DEL" and rest:
            return integer(sum(self.data.pop(key, None) is not None for key in rest))
        if name == b"EXISTS" and rest:
            return integer(sum(key in self.data for key in rest))
        if (name == b"INCR" and len(rest) == 1) or (name == b"INCRBY" and len(rest) == 2):
            try:
                step = int(rest[1]) if name == b"INCRBY" else 1
                value = int(self.data.get(rest[0], b"0")) + step
            except ValueError:
                return error("ERR value is not an integer or out of range")
            self.data[rest[0]] = b"%d" % value
            return integer(value)
        if name == b"DBSIZE":
            return integer(len(self.data))
        if name == b"FLUSHDB":
            self.data.clear()
            return simple("OK")
        if name == b"COMMAND":
            return b"*0\r\n"
        if name == b"HELLO" and (not rest or rest[0] == b"2"):
            # What clients ask first; this server speaks RESP2.
            info = [b"server", b"pygev-resp", b"version", b"0.1.0", b"proto", b"2"]
            return array(info)
        if name == b"HELLO":
            return error("NOPROTO this server speaks RESP2 only")
        if name == b"CLIENT":
            return simple("OK")  # SETNAME, SETINFO: accepted, not kept
        if name == b"QUIT":
            conn.send(simple("OK"))
            conn.close()
            return None
        return error(f"ERR unknown command or wrong arguments: {name.decode(errors='replace')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6380, help="0 picks a free port")
    parser.add_argument("--loops", type=int, default=1)
    args_ = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = pygev.Server(
        Store(), f"{args_.host}:{args_.port}", num_loops=args_.loops, protocol=pygev_resp.Resp()
    )
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: server.stop())
    host, port = server.address
    print(f"pygev resp server listening on {host}:{port}", flush=True)
    server.start()


if __name__ == "__main__":
    main()

"""Counters kept in Redis, from an ``async def`` handler: a real service in a handler.

Each line a client sends names a counter; the server increments it in Redis (``INCR``,
through ``redis.asyncio``) and answers ``name=value``. ``stats`` answers with the number of
counters Redis holds. While one connection waits for Redis, the others go on; per
connection, answers come in the order of the lines.

    redis-server --port 6379 &
    python examples/redis_counter.py --port 1833 --redis redis://127.0.0.1:6379/0
    printf 'apples\\napples\\npears\\n' | nc 127.0.0.1 1833     # apples=1 apples=2 pears=1
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import redis.asyncio as redis

import pygev

PREFIX = "pygev:counter:"


class Counters(pygev.Handler):
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    async def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        name = data.strip().decode("utf-8", "replace")
        if not name or len(name) > 200:
            return b"error: a counter name has 1 to 200 characters"
        if name == "stats":
            keys = [key async for key in self.redis.scan_iter(match=PREFIX + "*", count=1000)]
            return f"stats counters={len(keys)}".encode()
        async with asyncio.timeout(5):  # a stuck Redis fails this request, not the server
            value = await self.redis.incr(PREFIX + name)
        return f"{name}={value}".encode()


async def main(args: argparse.Namespace) -> None:
    # Blocking: past `pool` requests at once, a request waits for a connection to free up.
    pool = redis.BlockingConnectionPool.from_url(args.redis, max_connections=args.pool, timeout=5)
    client = redis.Redis(connection_pool=pool)
    await client.ping()  # fail at start, not at the first request
    address = f"{args.host}:{args.port}"
    protocol = pygev.Delimited(b"\n")
    try:
        async with pygev.Server(Counters(client), address, protocol=protocol) as server:
            host, port = server.address
            print(f"pygev redis counter listening on {host}:{port}", flush=True)
            await server.serve()
    finally:
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1833, help="0 picks a free port")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL")
    parser.add_argument("--pool", type=int, default=50, help="Redis connections at most")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(main(arguments))
    except KeyboardInterrupt:
        pass  # stopped cleanly: serve() drained before the interrupt went on

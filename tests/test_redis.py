"""A real service in an ``async def`` handler: ``examples/redis_counter.py`` against a real
``redis-server`` (started here on a free loopback port), with many concurrent clients."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import pytest
from conftest import EXAMPLES, ROOT, WAIT, RedisServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def counter_server(redis_url: str) -> Iterator[tuple[str, int]]:
    options = ["--port", "0", "--redis", redis_url, "--pool", "20"]
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "redis_counter.py"), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        cwd=str(ROOT),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        prefix = "pygev redis counter listening on "
        if not line.startswith(prefix):
            proc.kill()
            _, err = proc.communicate(timeout=WAIT)
            raise AssertionError(f"unexpected first line {line!r}; stderr: {err.decode()}")
        host, _, port = line[len(prefix) :].strip().rpartition(":")
        yield host, int(port)
        proc.terminate()
        _, err = proc.communicate(timeout=WAIT * 2)
        assert proc.returncode == 0, err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)


def test_concurrent_clients_count_through_redis(counter_server: tuple[str, int]) -> None:
    host, port = counter_server
    clients, lines, keys = 200, 25, 7

    async def client(n: int) -> list[bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        names = [b"k%d" % ((n + i) % keys) for i in range(lines)]
        writer.write(b"".join(name + b"\n" for name in names))  # pipelined
        replies = [(await reader.readline()).rstrip(b"\n") for _ in names]
        writer.close()
        await writer.wait_closed()
        # In order: each answer names the counter of its line.
        assert [reply.split(b"=")[0] for reply in replies] == names
        return replies

    async def main() -> tuple[list[list[bytes]], bytes]:
        got = await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(clients))), 60)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"stats\n")
        stats = await reader.readline()
        writer.close()
        return got, stats

    got, stats = asyncio.run(main())
    values: dict[bytes, list[int]] = {}
    for replies in got:
        for reply in replies:
            name, _, value = reply.partition(b"=")
            values.setdefault(name, []).append(int(value))
    totals = Counter(b"k%d" % ((n + i) % keys) for n in range(clients) for i in range(lines))
    assert set(values) == set(totals)
    for name, seen in values.items():
        # Every increment happened once: the answers are 1..total, each once.
        assert sorted(seen) == list(range(1, totals[name] + 1)), name
    assert stats == b"stats counters=%d\n" % keys

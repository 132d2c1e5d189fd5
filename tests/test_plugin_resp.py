"""examples/plugin_resp: a third-party plugin built on its own (its crate and pyproject.toml,
maturin, a wheel), installed, and used by a pygev server that real Redis clients talk to."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import WAIT, connect, expect_reset

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "plugin_resp"

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Builds the plugin's wheel with maturin and installs it into a fresh folder."""
    tmp = tmp_path_factory.mktemp("plugin_resp")
    env = dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "target" / "plugin-resp"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "maturin",
            "build",
            "--release",
            "-q",
            "-o",
            str(tmp / "dist"),
            "-m",
            str(EXAMPLE / "Cargo.toml"),
        ],
        check=True,
        env=env,
        timeout=800,
    )
    (wheel,) = (tmp / "dist").glob("pygev_resp-*.whl")
    site = tmp / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        timeout=120,
    )
    return site


@pytest.fixture
def resp_server(plugin_site: Path) -> Iterator[tuple[str, int]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_site), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        match = re.search(r"listening on (\S+):(\d+)$", line.strip())
        assert match, f"no listening line: {line!r}"
        yield match.group(1), int(match.group(2))
    finally:
        proc.terminate()
        try:
            assert proc.wait(WAIT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            assert proc.stdout is not None
            proc.stdout.close()


def test_a_redis_client_talks_to_the_plugin_server(resp_server: tuple[str, int]) -> None:
    host, port = resp_server
    client = redis.Redis(host=host, port=port, socket_timeout=WAIT, protocol=2)
    try:
        assert client.ping() is True
        assert client.set("greeting", "hello") is True
        assert client.get("greeting") == b"hello"
        assert client.incr("counter") == 1
        assert client.incr("counter") == 2
        big = os.urandom(1 << 20)
        assert client.set("big", big) is True
        assert client.get("big") == big
        assert client.get("missing") is None
        pipe = client.pipeline(transaction=False)
        for i in range(1000):
            pipe.set(f"k{i}", i)
        for i in range(1000):
            pipe.get(f"k{i}")
        results = pipe.execute()
        assert results[:1000] == [True] * 1000
        assert results[1000:] == [str(i).encode() for i in range(1000)]
        assert client.delete("greeting", "missing") == 1
        assert client.exists("greeting") == 0
        assert client.dbsize() == 1002
    finally:
        client.close()


def test_inline_commands_and_a_protocol_error_close_only_that_connection(
    resp_server: tuple[str, int],
) -> None:
    host, port = resp_server
    with connect(port, host) as good, connect(port, host) as bad:
        good.sendall(b"PING\r\n")
        deadline = time.monotonic() + WAIT
        got = b""
        while not got.endswith(b"\r\n") and time.monotonic() < deadline:
            got += good.recv(100)
        assert got == b"+PONG\r\n"
        bad.sendall(b"*1\r\n$-5\r\n")  # a negative bulk length
        assert expect_reset(bad) == b""
        client = redis.Redis(host=host, port=port, socket_timeout=WAIT, protocol=2)
        assert client.echo("still serving") == b"still serving"
        client.close()


def test_commands_trickling_in_and_oversized_headers(resp_server: tuple[str, int]) -> None:
    host, port = resp_server
    command = b"*3\r\n$3\r\nSET\r\n$4\r\nslow\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET\r\n$4\r\nslow\r\n"
    with connect(port, host) as sock:
        for i in range(len(command)):
            sock.sendall(command[i : i + 1])
        expected = b"+OK\r\n$5\r\nvalue\r\n"
        got = b""
        deadline = time.monotonic() + WAIT
        while len(got) < len(expected) and time.monotonic() < deadline:
            got += sock.recv(100)
        assert got == expected
    for bad in (b"*" + b"1" * 40, b"*1\r\n$" + b"9" * 40, b"PING" + b" " * 70000):
        with connect(port, host) as sock:
            sock.sendall(bad)
            assert expect_reset(sock) == b""

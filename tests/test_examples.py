"""Each example in examples/ runs as a real process and is talked to over real sockets."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# Bounds every wait so that a broken example fails the test instead of hanging it.
WAIT = 10.0
REFUSAL = b"server full\n"

Address = tuple[str, int]


def _read_address(proc: subprocess.Popen[bytes]) -> Address:
    """Reads the ``... listening on HOST:PORT`` line the example prints once bound."""
    assert proc.stdout is not None
    deadline = time.monotonic() + WAIT
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(remaining, 0))
        if not ready:
            pytest.fail(f"no 'listening on' line within {WAIT}s, got {line!r}")
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            pytest.fail(f"example exited with {proc.wait()} before listening, got {line!r}")
        line += chunk
    match = re.search(rb"listening on (\S+):(\d+)$", line.strip())
    assert match, line
    return match.group(1).decode(), int(match.group(2))


def _stop(proc: subprocess.Popen[bytes], stop: signal.Signals) -> int:
    """Stops the example with the signal ``stop`` and returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(stop)
        try:
            proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    return proc.returncode


@contextlib.contextmanager
def run_example(name: str, *args: str, stop: signal.Signals = signal.SIGINT) -> Iterator[Address]:
    """Runs ``examples/<name>.py`` on a free port; yields its address; stops it after.

    ``stop`` is the signal that ends it (SIGINT is Ctrl+C); the example must exit with 0.
    """
    command = [sys.executable, str(EXAMPLES / f"{name}.py")]
    command += ["--host", "127.0.0.1", "--port", "0", "--loops", "2", *args]
    # stderr (the examples' logs) is inherited: pytest shows it when a test fails.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE)
    try:
        address = _read_address(proc)
        yield address
    finally:
        code = _stop(proc, stop)
    assert code == 0, f"{name} exited with {code}"


def connect(address: Address) -> socket.socket:
    return socket.create_connection(address, timeout=WAIT)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_until_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def recv_lines(sock: socket.socket, count: int) -> list[bytes]:
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(4096)
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data.split(b"\n")[:count]


def assert_echoes(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload


def test_echo() -> None:
    with run_example("echo") as address, connect(address) as client:
        assert_echoes(client, b"hello pygev\n")
        payload = bytes(range(256)) * 1000
        assert_echoes(client, payload)


def test_max_connections_refuses_past_max_and_frees_slots_on_close() -> None:
    with run_example("max_connections", "--max", "1") as address:
        with connect(address) as first:
            assert_echoes(first, b"first")
            with connect(address) as second:
                assert recv_until_eof(second) == REFUSAL
            assert_echoes(first, b"still served")
        # The server sees the first client's close asynchronously: until then a new client
        # may still be refused. Retry until served (bounded by the test timeout).
        payload = b"third client"  # as long as the refusal: either reply is read whole
        assert len(payload) == len(REFUSAL)
        while True:
            with connect(address) as third:
                third.sendall(payload)
                reply = recv_exactly(third, len(payload))
                if reply != REFUSAL:
                    assert reply == payload
                    break
            time.sleep(0.05)


def test_server_push_reaches_every_client() -> None:
    with run_example("server_push", "--interval", "0.05") as address:
        with connect(address) as second, second.makefile("rb") as second_lines:
            with connect(address) as first, first.makefile("rb") as first_lines:
                first.sendall(b"ignored")  # clients' data is not echoed
                assert_pushed(first_lines, 2)
                assert_pushed(second_lines, 2)
            # Pushes go on for the clients left.
            assert_pushed(second_lines, 2)


def assert_pushed(lines: BinaryIO, count: int) -> None:
    for _ in range(count):
        line = lines.readline()
        assert re.fullmatch(rb"hello \d\d:\d\d:\d\d\n", line), line


def test_idle_connection_closes_silent_clients() -> None:
    with run_example("idle_connection", "--idle", "0.5") as address:
        with connect(address) as silent:
            assert recv_until_eof(silent) == b""
        with connect(address) as client:
            assert_echoes(client, b"after the idle close")


@pytest.mark.parametrize("name", ["length_prefix", "custom_protocol"])
def test_length_framing_examples_and_their_client(name: str) -> None:
    with run_example(name) as address, connect(address) as client:
        # Two frames glued in one write, then one split in the middle of its header.
        client.sendall(b"\x00\x00\x00\x02hi\x00\x00\x00\x00")
        client.sendall(b"\x00\x00")
        time.sleep(0.05)
        client.sendall(b"\x00\x05pygev")
        expected = [b"2 bytes: hi", b"0 bytes: ", b"5 bytes: pygev"]
        for reply in expected:
            header = recv_exactly(client, 4)
            assert recv_exactly(client, int.from_bytes(header, "big")) == reply
        host, port = address
        command = [sys.executable, str(EXAMPLES / f"{name}.py"), "--client"]
        command += ["--host", host, "--port", str(port), "--send", "hello", "--send", ""]
        out = subprocess.run(command, capture_output=True, timeout=WAIT, check=True).stdout
        assert out.splitlines() == [b"5 bytes: hello", b"0 bytes: "]


@pytest.mark.parametrize("name", ["max_connections", "server_push", "idle_connection"])
def test_sigterm_stops_the_example(name: str) -> None:
    args = ("--interval", "0.05") if name == "server_push" else ()
    with run_example(name, *args, stop=signal.SIGTERM) as address, connect(address) as client:
        # A reply shows that start() runs: the kernel accepts connections before it does.
        if name == "server_push":
            recv_lines(client, 1)
        else:
            assert_echoes(client, b"ping")


def test_websocket_echo() -> None:
    from websockets.sync.client import connect as ws_connect

    with run_example("websocket_echo") as (host, port):
        with ws_connect(f"ws://{host}:{port}/", open_timeout=WAIT, proxy=None) as ws:
            ws.send("hello ✓")
            assert ws.recv(timeout=WAIT) == "hello ✓"
            ws.send(b"\x00\xff" * 50000)
            assert ws.recv(timeout=WAIT) == b"\x00\xff" * 50000


def test_websocket_client_sends_stdin_lines_and_prints_replies() -> None:
    with run_example("websocket_echo") as (host, port):
        lines = ["hello", "wörld ✓", "", "x" * 70000]
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / "websocket_client.py"), f"ws://{host}:{port}/"],
            input="\n".join(lines) + "\n",
            capture_output=True,
            text=True,
            timeout=WAIT * 3,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == lines


def test_websocket_client_reports_a_refusal() -> None:
    from websockets.sync.client import connect as ws_connect

    with run_example("websocket_chat") as (host, port):
        url = f"ws://{host}:{port}/?name=ann"
        with ws_connect(url, open_timeout=WAIT, proxy=None):
            # The chat refuses a second "ann" with 409 and says why in the body.
            done = subprocess.run(
                [sys.executable, str(EXAMPLES / "websocket_client.py"), url],
                input="",
                capture_output=True,
                text=True,
                timeout=WAIT * 3,
            )
        assert done.returncode == 1
        assert "refused the WebSocket handshake: 409" in done.stderr, done.stderr
        assert "the name ann is taken" in done.stderr, done.stderr


def test_websocket_chat_broadcasts_to_everyone() -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect as ws_connect

    def join(host: str, port: int, name: str):  # type: ignore[no-untyped-def]
        return ws_connect(
            f"ws://{host}:{port}/?name={name}",
            subprotocols=["chat"],  # type: ignore[list-item]
            open_timeout=WAIT,
            proxy=None,
        )

    with run_example("websocket_chat") as (host, port):
        with join(host, port, "ann") as ann:
            assert ann.subprotocol == "chat"
            assert ann.recv(timeout=WAIT) == "* ann joined (1 here)"
            with join(host, port, "bob") as bob:
                assert ann.recv(timeout=WAIT) == "* bob joined (2 here)"
                assert bob.recv(timeout=WAIT) == "* bob joined (2 here)"
                with pytest.raises(InvalidStatus) as taken:
                    join(host, port, "ann")
                assert taken.value.response.status_code == 409
                bob.send("hi all")
                assert ann.recv(timeout=WAIT) == "bob: hi all"
                assert bob.recv(timeout=WAIT) == "bob: hi all"
            assert ann.recv(timeout=WAIT) == "* bob left (1 here)"


def test_echo_with_two_workers_serves_and_stops_on_sigterm() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, str(EXAMPLES / "echo.py"), "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--workers", "2"], stdout=subprocess.PIPE
    )
    try:
        assert _read_address(proc) == ("127.0.0.1", port)
        deadline = time.monotonic() + WAIT
        while True:  # the workers bind just after the supervisor's line
            try:
                client = connect(("127.0.0.1", port))
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "no worker listens"
                time.sleep(0.05)
        with client:
            assert_echoes(client, b"through a worker")
    finally:
        code = _stop(proc, signal.SIGTERM)
    assert code == 0

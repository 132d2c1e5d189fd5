"""``pygev.run(make_server, workers=N)``: worker processes sharing a port (SO_REUSEPORT),
restarted when they die, stopped gracefully by SIGTERM. Each test runs a supervisor in a
subprocess and talks to its workers over real sockets."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import WAIT, expect_eof

pytestmark = pytest.mark.timeout(90)

SCRIPT = """
import logging, os, sys, pygev
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

class Pid(pygev.Handler):
    def on_message(self, conn, ctx, data):
        return f"{os.getpid()}\\n".encode()
    def on_close(self, conn):
        # One write: the workers share the pipe, and lines must not interleave.
        os.write(1, f"closed {os.getpid()} {conn.id}\\n".encode())

def make_server():
    return pygev.Server(Pid(), "127.0.0.1:" + sys.argv[1], num_loops=1)

def reaped(pid):
    os.write(1, f"reaped {pid}\\n".encode())

pygev.run(make_server, workers=2, restart_delay=0.2, on_worker_exit=reaped)
print("supervisor returned", flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Deployment:
    """A supervisor with 2 workers in a subprocess; its stderr (the log) is collected."""

    def __init__(self, tmp_path: Path) -> None:
        script = tmp_path / "workers.py"
        script.write_text(SCRIPT)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its workers too can be killed as a group
        )
        self.log: list[str] = []
        self.reader = threading.Thread(target=self._read_log, daemon=True)
        self.reader.start()

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip())

    def pid_of_new_connection(self) -> tuple[socket.socket, int]:
        """A connection to the port and the pid of the worker that took it."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
                sock.sendall(b"?")
                line = b""
                while not line.endswith(b"\n"):
                    chunk = sock.recv(64)
                    if not chunk:
                        raise ConnectionResetError("closed before the reply")
                    line += chunk
                return sock, int(line)
            except (ConnectionRefusedError, ValueError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def pids(self, connections: int = 40) -> tuple[list[socket.socket], set[int]]:
        """At least `connections` connections, more until both workers took some (one may
        still be binding), and the pids that took them."""
        socks: list[socket.socket] = []
        pids: set[int] = set()
        deadline = time.monotonic() + WAIT
        while len(socks) < connections or (len(pids) < 2 and time.monotonic() < deadline):
            sock, pid = self.pid_of_new_connection()
            socks.append(sock)
            pids.add(pid)
        return socks, pids

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stdout is not None
        try:
            self.proc.wait(WAIT * 2)
        except subprocess.TimeoutExpired:
            pass
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of the group
            except ProcessLookupError:
                pass
            self.proc.wait()
        out = self.proc.stdout.read()
        self.reader.join(WAIT)
        return self.proc.returncode, out

    def wait_log(self, pattern: str) -> None:
        deadline = time.monotonic() + WAIT
        while not any(re.search(pattern, line) for line in list(self.log)):
            assert time.monotonic() < deadline, f"no log line {pattern!r}: {self.log}"
            time.sleep(0.05)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    yield d
    d.stop()


def test_connections_spread_over_every_worker(deployment: Deployment) -> None:
    socks, pids = deployment.pids(40)
    try:
        assert len(pids) == 2, f"connections went to {pids} only"
        assert deployment.proc.pid not in pids, "the supervisor serves nothing itself"
    finally:
        for sock in socks:
            sock.close()


def test_a_killed_worker_comes_back(deployment: Deployment) -> None:
    socks, pids = deployment.pids(40)
    for sock in socks:
        sock.close()
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while True:
        socks, now = deployment.pids(40)
        for sock in socks:
            sock.close()
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, f"no replacement worker: {now}"
        time.sleep(0.1)
    deployment.wait_log(rf"pid {victim}\) exited with -9 .* starting it again")


def test_sigterm_drains_every_worker(deployment: Deployment) -> None:
    socks, pids = deployment.pids(40)
    assert len(pids) == 2
    code, out = deployment.stop()
    assert code == 0, (code, out, deployment.log)
    closed = [line for line in out.splitlines() if line.startswith("closed")]
    assert len(closed) == 40, out  # on_close for every connection, in both workers
    assert {int(line.split()[1]) for line in closed} == pids
    assert out.splitlines()[-1] == "supervisor returned"
    for sock in socks:
        expect_eof(sock)  # closed in order
        sock.close()


def test_on_worker_exit_hears_of_every_worker_reaped(deployment: Deployment) -> None:
    socks, pids = deployment.pids(40)
    for sock in socks:
        sock.close()
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    deployment.wait_log(rf"pid {victim}\) exited with -9")
    socks, now = deployment.pids(40)  # the replacement serves too
    for sock in socks:
        sock.close()
    code, out = deployment.stop()
    assert code == 0, (code, out, deployment.log)
    reaped = {int(line.split()[1]) for line in out.splitlines() if line.startswith("reaped")}
    assert reaped == pids | now, out


def test_workers_do_not_outlive_a_killed_supervisor(deployment: Deployment) -> None:
    socks, pids = deployment.pids(10)
    for sock in socks:
        sock.close()
    deployment.proc.kill()  # SIGKILL: no chance to stop the workers itself
    deployment.proc.wait(WAIT)
    deadline = time.monotonic() + WAIT
    while any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"workers {pids} outlived their supervisor"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (not a zombie waiting for a reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_bad_arguments_are_refused() -> None:
    import pygev

    with pytest.raises(ValueError, match="workers"):
        pygev.run(lambda: pygev.Server(pygev.Handler(), "127.0.0.1:0"), workers=0)
    with pytest.raises(ValueError, match="restart_delay"):
        pygev.run(lambda: pygev.Server(pygev.Handler(), "127.0.0.1:0"), 2, restart_delay=0)

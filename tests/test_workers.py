"""``pygev.run(make_server, workers=N)``: worker processes sharing a port (SO_REUSEPORT),
or one socket (a Unix socket, or TCP with ``reuse_port=False``; TCP port 0 binds the first
worker's port), restarted when they die, stopped gracefully by SIGTERM, given up on when
they cannot start. Each test runs a supervisor in a subprocess and talks to its workers
over real sockets."""

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
from conftest import WAIT, expect_eof, free_port, stop_group

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
    server = pygev.Server(Pid(), sys.argv[1], num_loops=1)
    os.write(2, f"worker {os.getpid()} listens on {server.address}\\n".encode())
    return server

def reaped(pid):
    os.write(1, f"reaped {pid}\\n".encode())

pygev.run(make_server, workers=2, restart_delay=0.2, on_worker_exit=reaped)
print("supervisor returned", flush=True)
"""


class Deployment:
    """A supervisor with 2 workers in a subprocess, listening on a fixed TCP port, on port
    0 or on a Unix socket (`kind`); its stderr (the log) is collected."""

    def __init__(self, tmp_path: Path, kind: str = "tcp", source: str = SCRIPT) -> None:
        script = tmp_path / "workers.py"
        script.write_text(source)
        self.kind = kind
        self.socket_file = tmp_path / "workers.sock"
        address = {
            "tcp": f"127.0.0.1:{free_port()}",
            "port0": "127.0.0.1:0",
            "unix": f"unix:{self.socket_file}",
        }[kind]
        self.proc = subprocess.Popen(
            [sys.executable, str(script), address],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its workers too can be killed as a group
        )
        self.log: list[str] = []
        self.reader = threading.Thread(target=self._read_log, daemon=True)
        self.reader.start()
        self.target: tuple[str, int] | str = address
        if kind == "tcp":
            self.target = ("127.0.0.1", int(address.rpartition(":")[2]))
        elif kind == "unix":
            self.target = str(self.socket_file)
        else:  # the port the first worker got
            line = self.wait_log(r"listens on \('127.0.0.1', \d+\)")
            self.target = ("127.0.0.1", int(line.rpartition(" ")[2].rstrip(")")))

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip())

    def connect(self) -> socket.socket:
        if isinstance(self.target, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(WAIT)
            try:
                sock.connect(self.target)
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection(self.target, timeout=WAIT)

    def pid_of_new_connection(self) -> tuple[socket.socket, int]:
        """A connection to the port and the pid of the worker that took it."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                sock = self.connect()
                sock.sendall(b"?")
                line = b""
                while not line.endswith(b"\n"):
                    chunk = sock.recv(64)
                    if not chunk:
                        raise ConnectionResetError("closed before the reply")
                    line += chunk
                return sock, int(line)
            except (ValueError, OSError):
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
        assert self.proc.stdout is not None
        stop_group(self.proc)
        out = self.proc.stdout.read()
        self.reader.join(WAIT)
        return self.proc.returncode, out

    def wait_log(self, pattern: str) -> str:
        """The first log line matching `pattern`, once there is one."""
        deadline = time.monotonic() + WAIT
        while True:
            for line in list(self.log):
                if re.search(pattern, line):
                    return line
            assert time.monotonic() < deadline, f"no log line {pattern!r}: {self.log}"
            time.sleep(0.05)


@pytest.fixture(params=["tcp", "port0", "unix"])
def deployment(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    d = Deployment(tmp_path, request.param)
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
    assert len(closed) == len(socks), out  # on_close for every connection, in both workers
    assert {int(line.split()[1]) for line in closed} == pids
    assert out.splitlines()[-1] == "supervisor returned"
    for sock in socks:
        expect_eof(sock)  # closed in order
        sock.close()
    assert not deployment.socket_file.exists(), "the supervisor removes the socket file"


def test_workers_share_one_socket_bound_once(deployment: Deployment) -> None:
    """Every worker listens where the first one bound: the same port for port 0, the same
    socket for a Unix socket (no worker refused with EADDRINUSE, none on a port of its
    own), and a Unix socket's file outlives a worker's restart."""
    socks, pids = deployment.pids(20)
    for sock in socks:
        sock.close()
    addresses = {
        line.partition(" listens on ")[2] for line in deployment.log if "listens on" in line
    }
    assert len(addresses) == 1, deployment.log
    assert not any("failed" in line for line in deployment.log), deployment.log
    os.kill(min(pids), signal.SIGKILL)
    deployment.wait_log(rf"pid {min(pids)}\) exited with -9")
    if deployment.kind == "unix":
        assert deployment.socket_file.exists(), "a dying worker does not remove the file"
    deadline = time.monotonic() + WAIT
    while True:
        socks, now = deployment.pids(20)
        for sock in socks:
            sock.close()
        if len(now) == 2 and min(pids) not in now:
            break
        assert time.monotonic() < deadline, f"no replacement worker: {now}"
        time.sleep(0.1)


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


@pytest.mark.parametrize("kind", ["tcp", "port0"])
def test_without_reuse_port_the_workers_share_one_socket(tmp_path: Path, kind: str) -> None:
    """A server asked for with reuse_port=False is bound once, by the first worker, and its
    socket shared: every worker accepts from it, a killed one comes back to it, and SIGTERM
    drains them all."""
    source = SCRIPT.replace("num_loops=1)", "num_loops=1, reuse_port=False)")
    deployment = Deployment(tmp_path, kind, source)
    try:
        socks, pids = deployment.pids()
        assert len(pids) == 2, pids
        ports = {line.rpartition(" ")[2] for line in deployment.log if "listens on" in line}
        assert len(ports) == 1, deployment.log
        port = deployment.target[1] if isinstance(deployment.target, tuple) else 0
        listening = [_listening_inodes(port, pid) for pid in (*pids, deployment.proc.pid)]
        assert len(listening[0]) == 1 and all(i == listening[0] for i in listening), listening
        victim = next(iter(pids))
        os.kill(victim, signal.SIGKILL)
        deployment.wait_log(rf"\(pid {victim}\) exited with -9 .* starting it again")
        for sock in socks:
            sock.close()
        socks, after = deployment.pids()
        assert len(after) == 2 and victim not in after, (pids, after)
        for sock in socks:
            sock.close()
    finally:
        code, out = deployment.stop()
    assert code == 0, deployment.log
    assert "supervisor returned" in out
    with socket.socket() as again:  # nobody listens on the port any more
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (TIME_WAIT is fine)
        again.bind(("127.0.0.1", port))
        again.listen()


def _listening_inodes(port: int, pid: int) -> set[str]:
    """The inodes of the listening TCP sockets on `port` that process `pid` holds."""
    wanted = f":{port:04X}"
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(wanted) and fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held.add(target[8:-1])
    return held


SERVED_ONCE = """
import logging, os, pathlib, sys, pygev
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

def make_server():
    starts = pathlib.Path(sys.argv[2])
    count = len(starts.read_text()) if starts.exists() else 0
    if count >= 2:  # each worker starts once; every later start fails
        raise RuntimeError("cannot start again")
    starts.write_text("x" * (count + 1))
    server = pygev.Server(pygev.Handler(), sys.argv[1], num_loops=1)
    os.write(2, f"worker {os.getpid()} listens on {server.address}\\n".encode())
    return server

pygev.run(make_server, workers=2, restart_delay=0.05, max_restart_delay=0.1,
          max_boot_failures=2)
print("supervisor returned", flush=True)
"""


def test_a_place_that_served_once_is_retried_past_the_limit(tmp_path: Path) -> None:
    """Once a worker's place has served, its failures to start again never make the
    deployment give up: it is retried until stopped."""
    script = tmp_path / "served_once.py"
    script.write_text(SERVED_ONCE)
    proc = subprocess.Popen(
        [sys.executable, str(script), "127.0.0.1:0", str(tmp_path / "started")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stderr or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + WAIT
        pid = None
        while pid is None:
            assert time.monotonic() < deadline, log
            pid = next((int(line.split()[1]) for line in log if "listens on" in line), None)
            time.sleep(0.05)
        os.kill(pid, signal.SIGTERM)  # it served: now it cannot start again
        while sum("worker 0 " in line and "failed to start" in line for line in log) < 4:
            assert time.monotonic() < deadline, log
            assert proc.poll() is None, log
            time.sleep(0.05)
        assert not any("times in a row" in line for line in log if "worker 0" in line), log
    finally:
        stop_group(proc)
    reader.join(WAIT)

    import pygev

    with pytest.raises(ValueError, match="workers"):
        pygev.run(lambda: pygev.Server(pygev.Handler(), "127.0.0.1:0"), workers=0)
    with pytest.raises(ValueError, match="restart_delay"):
        pygev.run(lambda: pygev.Server(pygev.Handler(), "127.0.0.1:0"), 2, restart_delay=0)
    with pytest.raises(ValueError, match="max_boot_failures"):
        pygev.run(lambda: pygev.Server(pygev.Handler(), "127.0.0.1:0"), 2, max_boot_failures=0)


CANNOT_START = """
import logging, os, pathlib, sys, pygev
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

def make_server():
    if sys.argv[2] == "never":
        raise RuntimeError("no configuration here")
    started = pathlib.Path(sys.argv[3])
    if started.exists():  # the first worker starts; every later one fails
        raise RuntimeError("later workers cannot start")
    started.write_text("first")
    server = pygev.Server(pygev.Handler(), sys.argv[1], num_loops=1)
    os.write(2, f"worker {os.getpid()} listens on {server.address}\\n".encode())
    return server

try:
    pygev.run(make_server, workers=2, restart_delay=0.05, max_restart_delay=0.1,
              max_boot_failures=3)
except RuntimeError as exc:
    print("run() raised:", exc, flush=True)
    sys.exit(2)
"""


@pytest.mark.parametrize("case", ["never", "second"])
def test_a_deployment_that_cannot_start_gives_up(tmp_path: Path, case: str) -> None:
    """A worker's place that fails to start max_boot_failures times in a row without ever
    serving stops every worker, and run() raises: the first worker's make_server() always
    raises, or the first starts and the second's always raises."""
    script = tmp_path / "cannot_start.py"
    script.write_text(CANNOT_START)
    proc = subprocess.run(
        [sys.executable, str(script), "127.0.0.1:0", case, str(tmp_path / "started")],
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
    )
    slot = 0 if case == "never" else 1
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert f"run() raised: pygev: worker {slot} failed to start 3 times in a row" in proc.stdout
    causes = "no configuration here" if case == "never" else "later workers cannot start"
    assert proc.stderr.count(causes) >= 3, proc.stderr
    assert proc.stderr.count("failed to start after") == 2, proc.stderr
    if case == "second":  # the first worker served, and was stopped gracefully
        assert "listens on" in proc.stderr
        assert re.search(r"worker 0 \(pid \d+\) exited with 0", proc.stderr), proc.stderr


TWO_SERVERS = """
import logging, os, pathlib, sys, pygev
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
class Pid(pygev.Handler):
    def on_message(self, conn, ctx, data):
        return f"{os.getpid()}\\n".encode()

kept = []

def make_server():
    failed = pathlib.Path(os.environ["FAIL_FLAG"])
    if not failed.exists():  # the very first start fails, before anything is bound
        failed.write_text("once")
        raise RuntimeError("the first start fails")
    first = pygev.Server(Pid(), sys.argv[1], num_loops=1)
    second = pygev.Server(Pid(), sys.argv[1], num_loops=1)
    kept.append(second)
    os.write(2, f"second of {os.getpid()} on {second.address[1]}\\n".encode())
    os.write(2, f"worker {os.getpid()} listens on {first.address}\\n".encode())
    return first

pygev.run(make_server, workers=2, restart_delay=0.2)
"""


def test_a_first_worker_failing_and_two_port_0_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first worker fails before it reports: it is started again, and the others wait
    for its report. It builds two servers on port 0: every worker binds the same two
    ports, the first server's on the first port and the second's on the second."""
    monkeypatch.setenv("FAIL_FLAG", str(tmp_path / "failed"))
    deployment = Deployment(tmp_path, "port0", TWO_SERVERS)
    try:
        socks, pids = deployment.pids(20)
        for sock in socks:
            sock.close()
        assert len(pids) == 2, pids
        deployment.wait_log(r"failed to start .* starting it again")
        seconds = {
            line.split()[2]: line.split()[4]
            for line in deployment.log
            if line.startswith("second of")
        }
        firsts = {
            line.partition(" listens on ")[2] for line in deployment.log if "listens on" in line
        }
        assert set(seconds) >= {str(pid) for pid in pids}, deployment.log
        assert len(set(seconds.values())) == 1 and len(firsts) == 1, deployment.log
        first_port = deployment.target[1] if isinstance(deployment.target, tuple) else None
        assert first_port is not None and str(first_port) not in seconds.values()
    finally:
        deployment.stop()

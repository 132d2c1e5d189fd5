"""Stopping: idempotence, from any thread or callback, before start, draining, Ctrl+C."""

from __future__ import annotations

import pathlib
import queue
import random
import signal
import socket
import subprocess
import sys
import threading

import pytest
from conftest import (
    WAIT,
    Echo,
    Recorder,
    ServerThread,
    connect,
    echo_roundtrip,
    expect_eof,
    recv_exactly,
    recv_until_eof,
    wait_until,
)

import pygev


def port_is_free(port: int) -> bool:
    """Whether a plain socket (no SO_REUSEADDR) can bind and listen on the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            s.listen(1)
        except OSError:
            return False
    return True


def test_stop_from_another_thread_is_idempotent(serve):
    st_ = serve(Echo(), num_loops=2)
    with st_.connect() as sock:
        echo_roundtrip(sock, b"hi")
        threads = [threading.Thread(target=st_.server.stop) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        st_.join()
        expect_eof(sock)
    st_.server.stop()  # after start() returned: still fine
    st_.server.stop()


def test_stop_from_inside_on_message(serve):
    holder = {}

    class StopOnCommand(pygev.Handler):
        def on_message(self, conn, ctx, data):
            if data == b"stop":
                holder["server"].stop()
                holder["server"].stop()  # idempotent inside a callback too
                return b"stopping"
            return data

    st_ = ServerThread(StopOnCommand(), num_loops=2)
    holder["server"] = st_.server
    st_.start()
    try:
        with st_.connect() as other, st_.connect() as sock:
            echo_roundtrip(other, b"other")
            sock.sendall(b"stop")
            # The reply written before the stop is flushed, then the socket is closed.
            assert recv_until_eof(sock) == b"stopping"
            expect_eof(other)
        st_.join()
    finally:
        st_.stop()


def test_stop_from_inside_a_timer(serve):
    st_ = serve(Echo(), num_loops=1)
    st_.server.run_after(0.01, st_.server.stop)
    st_.join()


def test_stop_before_start_releases_the_port():
    server = pygev.Server(Echo(), "127.0.0.1:0", num_loops=1)
    port = server.address[1]
    assert not port_is_free(port)  # sanity: the constructor bound it
    server.stop()
    assert port_is_free(port)
    server.stop()  # idempotent
    # start() after that does not serve: it raises RuntimeError or returns at once (a
    # signal handler may call stop() just before start() runs).
    done = threading.Event()
    errors = []

    def run():
        try:
            server.start()
        except RuntimeError as exc:
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    if not done.wait(WAIT):
        server.stop()
        t.join(WAIT)
        raise AssertionError("start() after stop() served instead of returning")
    assert port_is_free(port)
    with pytest.raises(RuntimeError):
        server.run_after(0.1, lambda: None)


def test_start_after_stop_raises(serve):
    st_ = serve(Echo(), num_loops=1)
    with st_.connect() as sock:
        echo_roundtrip(sock, b"x")
    st_.stop()
    with pytest.raises(RuntimeError, match=r"^pygev:"):
        st_.server.start()


def test_start_while_running_raises(serve):
    st_ = serve(Echo(), num_loops=1)
    with st_.connect() as sock:
        echo_roundtrip(sock, b"x")  # the dispatcher is running
    with pytest.raises(RuntimeError, match=r"^pygev:"):
        st_.server.start()
    with st_.connect() as sock:
        echo_roundtrip(sock, b"still running")


def test_after_stop_the_port_is_closed(serve):
    st_ = serve(Echo(), num_loops=2)
    with st_.connect() as sock:
        echo_roundtrip(sock, b"x")
    st_.stop()
    with pytest.raises(ConnectionRefusedError):
        connect(st_.port, timeout=5).close()
    assert port_is_free(st_.port)


@pytest.mark.parametrize("where", ["other_thread", "callback"])
def test_stop_drains_pending_output_and_closes_everything(serve, where):
    big = random.Random(11).randbytes(4 << 20)
    sent = threading.Event()
    holder = {}

    class H(Recorder):
        def on_message(self, conn, ctx, data):
            self._record(conn, "message", data)
            if data == b"big":
                conn.send(big)
                conn.send(b"<end>")
                if where == "callback":
                    holder["server"].stop()
                sent.set()
                return None
            return data

    rec = H()
    st_ = ServerThread(rec, num_loops=2)
    holder["server"] = st_.server
    st_.start()
    idle = []
    try:
        idle = [st_.connect() for _ in range(5)]
        for s in idle:
            echo_roundtrip(s, b"idle")
        with st_.connect() as sock:
            sock.sendall(b"big")
            assert sent.wait(WAIT)
            if where == "other_thread":
                st_.server.stop()
            # The client had not read anything yet: it must now get every byte, then EOF.
            got = recv_until_eof(sock, timeout=30)
            assert len(got) == len(big) + 5
            assert got == big + b"<end>"
        for s in idle:
            expect_eof(s)
        st_.join()
        with rec.cond:
            assert rec.connects == 6
            assert rec.closes == 6, "on_close not called for every open connection"
            for evs in rec.events.values():
                assert [k for k, _ in evs].count("close") == 1
                assert evs[-1] == ("close", False)  # connected is False in on_close
        stats = st_.stats()
        assert stats["connections"] == 0
        assert stats["closed"] == 6
    finally:
        for s in idle:
            s.close()
        st_.stop()


def test_stop_echoes_everything_read_before_it(serve):
    """Messages the server has read when stop() is called are handled and their replies
    flushed before the sockets are closed."""
    rec = Recorder()
    st_ = serve(rec, num_loops=2)
    rng = random.Random(12)
    socks = [st_.connect() for _ in range(20)]
    payloads = [rng.randbytes(rng.randint(1, 48 << 10)) for _ in socks]
    try:
        for s, p in zip(socks, payloads):
            s.sendall(p)
        total = sum(map(len, payloads))
        wait_until(lambda: st_.stats()["bytes_in"] == total, what="server read everything")
        st_.server.stop()
        for s, p in zip(socks, payloads):
            got = recv_until_eof(s)
            assert got == p
        st_.join()
        assert rec.closes == 20
    finally:
        for s in socks:
            s.close()


def test_stop_is_bounded_by_drain_timeout(serve, pygev_log):
    """A client that never reads cannot keep the server from stopping."""
    sent = threading.Event()

    class H(pygev.Handler):
        def on_message(self, conn, ctx, data):
            conn.send(b"\0" * (16 << 20))
            sent.set()

    rec_close = queue.Queue()
    H.on_close = lambda self, conn: rec_close.put(conn.id)
    st_ = serve(H(), num_loops=1, drain_timeout=0.2)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", st_.port))
        sock.sendall(b"go")
        assert sent.wait(WAIT)
        wait_until(lambda: st_.stats()["write_buffered"] > 0, what="output queued")
        st_.server.stop()
        st_.join()  # returns although the client never read
        assert rec_close.get(timeout=WAIT) is not None
        pygev_log.wait_for("drain timeout")
    finally:
        sock.close()


def _sigint_test(example_echo, nconns: int, signum: int = signal.SIGINT):
    proc = example_echo("--host", "127.0.0.1", "--port", "0", "--loops", "2")
    # One round trip first: start() is running (the signal must not race the startup).
    with connect(proc.port) as probe:
        echo_roundtrip(probe, b"probe")
    socks = [connect(proc.port) for _ in range(nconns)]
    try:
        for i, s in enumerate(socks):
            echo_roundtrip(s, b"before signal %d" % i)
        proc.signal(signum)
        code, err = proc.wait(timeout=10.0)
        for s in socks:
            expect_eof(s)
        return code, err
    finally:
        for s in socks:
            s.close()


@pytest.mark.timeout(60)
def test_ctrl_c_stops_example_cleanly_with_open_connections(example_echo):
    code, err = _sigint_test(example_echo, nconns=10)
    assert code == 0, err
    assert "stopping; draining" in err
    assert "Traceback" not in err, err


SELF_INTERRUPT = """
import logging, os, signal, sys, threading
import pygev

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
server = pygev.Server(pygev.Handler(), "127.0.0.1:0", num_loops=1)
# No SIGINT handler of our own: Python's default raises KeyboardInterrupt, which start()
# must turn into a clean stop and return from.
threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
server.start()
print("start returned", flush=True)
"""


@pytest.mark.timeout(60)
def test_keyboard_interrupt_while_serving_returns_from_start():
    proc = subprocess.run(
        [sys.executable, "-c", SELF_INTERRUPT], capture_output=True, text=True, timeout=WAIT
    )
    assert proc.returncode == 0, proc.stderr
    assert "start returned" in proc.stdout
    assert "interrupted (Ctrl+C)" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.timeout(60)
def test_ctrl_c_stops_idle_example(example_echo):
    code, err = _sigint_test(example_echo, nconns=0)
    assert code == 0, err
    assert "Traceback" not in err, err


@pytest.mark.timeout(60)
def test_sigterm_stops_example(example_echo):
    # The example serves "until SIGINT/SIGTERM": SIGTERM must end it and close the clients.
    code, err = _sigint_test(example_echo, nconns=3, signum=signal.SIGTERM)
    assert code == 0, (code, err)
    assert "Traceback" not in err, err


@pytest.mark.timeout(60)
def test_ctrl_c_while_a_client_is_mid_transfer(example_echo):
    proc = example_echo("--host", "127.0.0.1", "--port", "0", "--loops", "2")
    payload = random.Random(13).randbytes(1 << 20)
    with connect(proc.port) as s:
        s.sendall(payload)
        first = recv_exactly(s, 1024)
        proc.signal(signal.SIGINT)
        code, err = proc.wait(timeout=10.0)
        assert code == 0, err
        # What came back is a prefix of what was sent, and the stream ends.
        try:
            rest = recv_until_eof(s)
        except ConnectionResetError:
            rest = b""  # unread input on the server side turns close into RST; allowed
        got = first + rest
        assert payload.startswith(got)


def test_keyboard_interrupt_in_a_callback_stops_the_server_cleanly(serve, pygev_log):
    """Ctrl+C arriving while Python code of a callback runs surfaces there as
    KeyboardInterrupt: the server stops (as for Ctrl+C) and start() returns normally."""

    class H(Echo):
        def on_message(self, conn, ctx, data):
            if data == b"ctrl-c":
                raise KeyboardInterrupt
            return data

    st_ = serve(H(), num_loops=1)
    with st_.connect() as other, st_.connect() as sock:
        echo_roundtrip(other, b"x")
        sock.sendall(b"ctrl-c")
        st_.join()  # returned, and did not raise
        expect_eof(other)


def test_sigterm_stops_a_plain_start_gracefully(tmp_path: pathlib.Path) -> None:
    """No signal handler of the application's: start() itself stops on SIGTERM, drains,
    calls on_close for every connection and returns normally."""
    script = tmp_path / "serve.py"
    script.write_text(
        "import sys, pygev\n"
        "class H(pygev.Handler):\n"
        "    def on_message(self, conn, ctx, data):\n"
        "        return data\n"
        "    def on_close(self, conn):\n"
        "        print('closed', conn.id, flush=True)\n"
        "server = pygev.Server(H(), '127.0.0.1:0')\n"
        "print('port', server.address[1], flush=True)\n"
        "server.start()\n"
        "print('returned', flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=str(tmp_path)
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        clients = [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(3)]
        for client in clients:
            client.sendall(b"ping")
            assert recv_exactly(client, 4) == b"ping"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    lines = out.splitlines()
    assert sum(line.startswith("closed") for line in lines) == 3, out
    assert lines[-1] == "returned", out
    for client in clients:
        assert client.recv(10) == b"", "closed in order"
        client.close()

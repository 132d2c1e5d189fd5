"""Echo integrity: every byte comes back, in order, over many concurrent connections."""

from __future__ import annotations

import queue
import random
import signal
import socket

import pytest
from conftest import (
    WAIT,
    Echo,
    assert_echoed,
    connect,
    echo_roundtrip,
    expect_eof,
    ipv6_available,
    random_plan,
    recv_exactly,
    run_echo_clients,
    wait_until,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pygev


@pytest.mark.timeout(120)
def test_many_concurrent_connections_random_chunks(serve):
    st_ = serve(Echo(), num_loops=2)
    rng = random.Random(0x9E3779B9)
    plans = [random_plan(rng) for _ in range(220)]
    clients = run_echo_clients(st_.host, st_.port, plans, timeout=90)
    assert len(clients) == 220
    assert_echoed(clients)
    total = sum(len(p[0]) for p in plans)
    # Every connection the clients closed is closed by the server too.
    wait_until(lambda: st_.stats()["closed"] == 220, what="220 closed connections")
    stats = st_.stats()
    assert stats["accepted"] == 220
    assert stats["connections"] == 0
    assert stats["bytes_in"] == total
    assert stats["bytes_out"] == total
    # Both loops served connections (round robin over 2 loops).
    assert [loop["accepted"] for loop in stats["loops"]] == [110, 110]


@pytest.mark.timeout(120)
def test_many_connections_half_close_get_everything_then_eof(serve):
    """Clients shut down their write side after the last chunk; the server writes every
    reply to messages before the EOF, then closes."""
    st_ = serve(Echo(), num_loops=2)
    rng = random.Random(12345)
    plans = [random_plan(rng) for _ in range(200)]
    clients = run_echo_clients(st_.host, st_.port, plans, half_close=True, timeout=90)
    assert_echoed(clients)
    assert all(c.eof for c in clients)


def test_large_payload_single_connection(echo_server):
    rng = random.Random(7)
    payload = rng.randbytes(8 << 20)
    (client,) = run_echo_clients(
        echo_server.host, echo_server.port, [(payload, [payload], [0.0])], timeout=60
    )
    assert_echoed([client])


def test_ipv6(serve):
    if not ipv6_available():
        pytest.skip("no IPv6 loopback on this host")
    st_ = serve(Echo(), "[::1]:0", num_loops=2)
    assert st_.server.address[0] == "::1"
    assert st_.server.address[1] != 0
    rng = random.Random(6)
    plans = [random_plan(rng, max_total=16 * 1024) for _ in range(20)]
    clients = run_echo_clients("::1", st_.port, plans, timeout=60)
    assert_echoed(clients)
    with connect(st_.port, "::1") as sock:
        echo_roundtrip(sock, b"over ipv6")


def test_ipv6_peer_address(serve):
    """An IPv6 peer's address (kept apart from IPv4 ones, the many) reads back whole."""
    if not ipv6_available():
        pytest.skip("no IPv6 loopback on this host")
    seen = queue.Queue()

    class Peers(Echo):
        def on_connect(self, conn):
            seen.put((conn.peer_addr, conn.local_addr, repr(conn)))

    st_ = serve(Peers(), "[::1]:0")
    with connect(st_.port, "::1") as sock:
        echo_roundtrip(sock, b"who")
        peer, local, text = seen.get(timeout=10)
        assert peer == sock.getsockname()[:2]
        assert local == ("::1", st_.port)
        assert f"peer=[::1]:{peer[1]}" in text


def test_ipv4_peer_on_a_dual_stack_listener(serve):
    """On a listener bound to "::", an IPv4 client shows as the socket gives it: mapped into
    IPv6."""
    if not ipv6_available():
        pytest.skip("no IPv6 loopback on this host")
    seen = queue.Queue()

    class Peers(Echo):
        def on_connect(self, conn):
            seen.put((conn.peer_addr, repr(conn)))

    st_ = serve(Peers(), "[::]:0")
    with connect(st_.port, "127.0.0.1") as sock:
        echo_roundtrip(sock, b"who")
        peer, text = seen.get(timeout=10)
        port = sock.getsockname()[1]
        assert peer == ("::ffff:127.0.0.1", port)
        assert f"peer=[::ffff:127.0.0.1]:{port}" in text


def test_reuse_port(serve):
    st_ = serve(Echo(), num_loops=2, reuse_port=True)
    rng = random.Random(5)
    plans = [random_plan(rng, max_total=16 * 1024) for _ in range(50)]
    clients = run_echo_clients(st_.host, st_.port, plans, timeout=60)
    assert_echoed(clients)
    wait_until(lambda: st_.stats()["closed"] == 50, what="50 closed connections")
    assert sum(loop["accepted"] for loop in st_.stats()["loops"]) == 50


def test_reuse_port_second_server_on_same_port_needs_reuse_port(serve):
    st_ = serve(Echo(), num_loops=1, reuse_port=True)
    # Without SO_REUSEPORT a second bind on the port in use fails.
    with pytest.raises(OSError):
        pygev.Server(Echo(), f"127.0.0.1:{st_.port}", num_loops=1)


def _loop_of_next_connection(st_, sockets):
    """Connects once, echoes, and returns the index of the loop that took the connection."""
    before = [loop["accepted"] for loop in st_.stats()["loops"]]
    sock = st_.connect()
    sockets.append(sock)
    echo_roundtrip(sock, b"x")
    after = [loop["accepted"] for loop in st_.stats()["loops"]]
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    assert len(changed) == 1 and after[changed[0]] == before[changed[0]] + 1, (before, after)
    return changed[0]


def test_least_connections_picks_the_emptiest_loop(serve):
    st_ = serve(Echo(), num_loops=2, strategy="least_connections")
    sockets: list[socket.socket] = []
    try:
        owners = [_loop_of_next_connection(st_, sockets) for _ in range(6)]
        assert sorted(owners) == [0, 0, 0, 1, 1, 1], owners
        # Close every connection of loop 0: it is now the emptiest by 3.
        for sock, owner in zip(list(sockets), owners):
            if owner == 0:
                sock.close()
        wait_until(
            lambda: st_.stats()["loops"][0]["connections"] == 0, what="loop 0 connections closed"
        )
        new_owners = [_loop_of_next_connection(st_, sockets) for _ in range(3)]
        assert new_owners == [0, 0, 0], new_owners  # round robin would alternate
        # Everything still echoes.
        for sock in sockets:
            if sock.fileno() != -1:
                echo_roundtrip(sock, b"still here")
    finally:
        for sock in sockets:
            sock.close()


def test_round_robin_alternates(serve):
    st_ = serve(Echo(), num_loops=2, strategy="round_robin")
    sockets: list[socket.socket] = []
    try:
        owners = [_loop_of_next_connection(st_, sockets) for _ in range(6)]
        assert owners in ([0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 0]), owners
    finally:
        for sock in sockets:
            sock.close()


def test_send_accepts_bytes_like_replies(serve):
    handled = queue.Queue()

    class Replies(pygev.Handler):
        def on_message(self, conn, ctx, data):
            handled.put(data)
            kind = data[:1]
            if kind == b"a":
                return bytearray(data)
            if kind == b"m":
                return memoryview(data)[1:]
            return None

    st_ = serve(Replies(), num_loops=1)
    with st_.connect() as sock:
        echo_roundtrip(sock, b"abc")
        assert handled.get(timeout=WAIT) == b"abc"
        sock.sendall(b"mxyz")
        assert recv_exactly(sock, 3) == b"xyz"
        assert handled.get(timeout=WAIT) == b"mxyz"
        sock.sendall(b"n")  # None: no reply
        assert handled.get(timeout=WAIT) == b"n"
        sock.sendall(b"a1")
        assert recv_exactly(sock, 2) == b"a1"


# One module-level server for the property test (hypothesis calls the test many times).
@pytest.fixture(scope="module")
def shared_echo():
    from conftest import ServerThread

    st_ = ServerThread(Echo(), num_loops=2).start()
    try:
        yield st_
    finally:
        st_.stop()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=4096), min_size=1, max_size=20),
)
def test_echo_property_any_chunking(shared_echo, chunks):
    with connect(shared_echo.port) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
        expected = b"".join(chunks)
        assert recv_exactly(sock, len(expected)) == expected
        sock.shutdown(socket.SHUT_WR)
        expect_eof(sock)


@pytest.mark.timeout(60)
def test_example_echo_subprocess(example_echo):
    proc = example_echo("--host", "127.0.0.1", "--port", "0", "--loops", "2")
    assert proc.host == "127.0.0.1"
    assert proc.port != 0
    rng = random.Random(99)
    plans = [random_plan(rng, max_total=16 * 1024) for _ in range(30)]
    clients = run_echo_clients(proc.host, proc.port, plans, timeout=WAIT * 2)
    assert_echoed(clients)


@pytest.mark.timeout(60)
def test_example_echo_on_a_unix_socket(example_echo, tmp_path):
    path = tmp_path / "echo.sock"
    proc = example_echo("--unix", str(path), "--loops", "1")
    assert proc.unix_path == str(path)
    clients = []
    for _ in range(20):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(WAIT)
        client.connect(str(path))
        clients.append(client)
    for i, client in enumerate(clients):
        client.sendall(b"unix %d" % i)
    for i, client in enumerate(clients):
        want = b"unix %d" % i
        got = b""
        while len(got) < len(want):
            got += client.recv(len(want) - len(got))
        assert got == want
        client.close()
    proc.signal(signal.SIGINT)
    code, _ = proc.wait()
    assert code == 0
    assert not path.exists(), "the server removes its socket file when it stops"

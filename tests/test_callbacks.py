"""Callbacks: order per connection, Connection attributes, send/close/shutdown_write."""

from __future__ import annotations

import queue
import random
import socket
import threading

import pytest
from conftest import (
    WAIT,
    Recorder,
    assert_echoed,
    echo_roundtrip,
    expect_eof,
    join_sender,
    random_plan,
    recv_exactly,
    recv_until_eof,
    run_echo_clients,
    send_in_thread,
    wait_until,
)

import pygev


@pytest.mark.timeout(120)
def test_callback_order_over_many_connections(serve):
    rec = Recorder()
    st_ = serve(rec, num_loops=2)
    rng = random.Random(2024)
    n = 150
    plans = [random_plan(rng, max_total=16 * 1024) for _ in range(n)]
    clients = run_echo_clients(st_.host, st_.port, plans, half_close=True, timeout=90)
    assert_echoed(clients)
    rec.wait(lambda: rec.closes >= n, what=f"{n} on_close calls")

    with rec.cond:
        events = {cid: list(evs) for cid, evs in rec.events.items()}
        threads = set(rec.threads)
    assert len(events) == n
    by_port = {}
    for cid, evs in events.items():
        kinds = [k for k, _ in evs]
        assert kinds[0] == "connect", (cid, kinds[:3])
        assert kinds[-1] == "close", (cid, kinds[-3:])
        assert kinds.count("connect") == 1, cid
        assert kinds.count("close") == 1, cid
        assert set(kinds[1:-1]) <= {"message"}, (cid, kinds)
        by_port[evs[0][1][1]] = cid
    # Messages arrived in order: their concatenation is exactly what each client sent.
    for c in clients:
        cid = by_port[c.sockname[1]]
        assert rec.data_of(cid) == c.payload, f"connection {cid}: messages out of order"
    # Every callback ran on the dispatcher, i.e. the thread that called start().
    assert threads == {st_.ident}


def test_on_close_exactly_once_when_both_sides_close(serve):
    class CloseOnBye(Recorder):
        def on_message(self, conn, ctx, data):
            self._record(conn, "message", data)
            if data.endswith(b"bye"):
                conn.close()
                return None
            return data

    rec = CloseOnBye()
    st_ = serve(rec, num_loops=2)
    socks = [st_.connect() for _ in range(40)]
    for s in socks:
        s.sendall(b"bye")
        s.close()  # both sides close at about the same time
    rec.wait(lambda: rec.closes >= 40, what="40 on_close calls")
    # Another connection is handled after them, so anything queued before is done.
    with st_.connect() as s:
        echo_roundtrip(s, b"ping")
    with rec.cond:
        for cid, evs in rec.events.items():
            kinds = [k for k, _ in evs]
            if b"ping" in b"".join(v for k, v in evs if k == "message"):
                continue
            assert kinds.count("close") == 1, (cid, kinds)
            assert kinds[0] == "connect" and kinds[-1] == "close", (cid, kinds)


def test_connection_attributes(serve):
    seen = queue.Queue()

    class Attrs(pygev.Handler):
        def on_connect(self, conn):
            seen.put(
                (
                    "connect",
                    conn.id,
                    conn.peer_addr,
                    conn.local_addr,
                    conn.context,
                    conn.connected,
                )
            )
            conn.context = {"count": 0, "id": conn.id}

        def on_message(self, conn, ctx, data):
            assert ctx is None  # Raw protocol
            conn.context["count"] += 1
            seen.put(("message", conn.id, conn.context["id"], conn.context["count"]))
            if data == b"close":
                conn.close()
                seen.put(("after_close", conn.id, conn.connected))
                return None
            return data

        def on_close(self, conn):
            seen.put(("close", conn.id, conn.connected, conn.context))

    st_ = serve(Attrs(), num_loops=2)
    socks = [st_.connect() for _ in range(10)]
    infos = {}
    for s in socks:
        echo_roundtrip(s, b"hello")
    # Connections on different loops interleave: sort the records by kind.
    records = [seen.get(timeout=WAIT) for _ in range(2 * len(socks))]
    connects = [r for r in records if r[0] == "connect"]
    messages = [r for r in records if r[0] == "message"]
    assert len(connects) == len(messages) == len(socks)
    for _, cid, peer, local, context, connected in connects:
        assert context is None
        assert connected is True
        assert isinstance(cid, int)
        infos[peer] = (cid, local)
    # peer_addr is the client's own address; local_addr the server's.
    for s in socks:
        cid, local = infos[s.getsockname()]
        assert local == s.getpeername() == ("127.0.0.1", st_.port)
    assert len({cid for cid, _ in infos.values()}) == len(socks), "ids are not unique"
    for _, cid, ctx_id, count in messages:
        assert count == 1
        assert ctx_id == cid  # the context set in on_connect is the one seen here

    s = socks[0]
    cid, _ = infos[s.getsockname()]
    s.sendall(b"close")
    expect_eof(s)
    got = [seen.get(timeout=WAIT) for _ in range(3)]
    assert got[0] == ("message", cid, cid, 2)
    assert got[1] == ("after_close", cid, False)
    assert got[2][:3] == ("close", cid, False)
    assert got[2][3] == {"count": 2, "id": cid}
    for s in socks:
        s.close()


def test_ids_unique_over_sequential_connections(serve):
    rec = Recorder()
    st_ = serve(rec, num_loops=2)
    for _ in range(30):
        with st_.connect() as s:
            echo_roundtrip(s, b"x")
    rec.wait(lambda: rec.closes >= 30, what="30 closes")
    with rec.cond:
        assert len(rec.events) == 30  # 30 distinct ids even though slots are reused


def test_send_from_another_thread(serve):
    conns = queue.Queue()

    class Keep(pygev.Handler):
        def on_connect(self, conn):
            conns.put(conn)

    st_ = serve(Keep(), num_loops=2)
    with st_.connect() as sock:
        conn = conns.get(timeout=WAIT)
        done = []

        def worker():
            for i in range(100):
                conn.send(b"%04d" % i)
            conn.send(bytearray(b"[ba]"))
            conn.send(memoryview(b"..[mv]..")[2:6])
            done.append(threading.get_ident())

        t = threading.Thread(target=worker, daemon=True)
        t.start()
        t.join(WAIT)
        assert done and done[0] != st_.ident
        expected = b"".join(b"%04d" % i for i in range(100)) + b"[ba][mv]"
        assert recv_exactly(sock, len(expected)) == expected
        with pytest.raises(TypeError, match=r"^pygev:"):
            conn.send("not bytes")
        with pytest.raises(TypeError):
            conn.send(12345)


def test_send_on_closed_connection_raises(serve):
    conns = queue.Queue()
    inside = queue.Queue()

    class H(pygev.Handler):
        def on_connect(self, conn):
            conns.put(conn)

        def on_message(self, conn, ctx, data):
            if data == b"close":
                conn.close()
                try:
                    conn.send(b"after close")
                except pygev.ConnectionClosed as exc:
                    inside.put(("on_message", exc))
                else:
                    inside.put(("on_message", None))

        def on_close(self, conn):
            try:
                conn.send(b"in on_close")
            except pygev.ConnectionClosed as exc:
                inside.put(("on_close", exc))
            else:
                inside.put(("on_close", None))

    st_ = serve(H(), num_loops=1)
    assert issubclass(pygev.ConnectionClosed, ConnectionError)

    # Closed by the client.
    sock = st_.connect()
    conn = conns.get(timeout=WAIT)
    sock.close()
    kind, exc = inside.get(timeout=WAIT)
    assert kind == "on_close" and isinstance(exc, pygev.ConnectionClosed)
    assert conn.connected is False
    with pytest.raises(pygev.ConnectionClosed):
        conn.send(b"x")
    with pytest.raises(ConnectionError):
        conn.send(b"x")

    # Closed by the handler itself: the very next send raises.
    with st_.connect() as sock:
        conn = conns.get(timeout=WAIT)
        sock.sendall(b"close")
        kind, exc = inside.get(timeout=WAIT)
        assert kind == "on_message" and isinstance(exc, pygev.ConnectionClosed)
        expect_eof(sock)
        kind, exc = inside.get(timeout=WAIT)
        assert kind == "on_close" and isinstance(exc, pygev.ConnectionClosed)
    with pytest.raises(pygev.ConnectionClosed):
        conn.send(b"x")

    # After the server stopped.
    sock = st_.connect()
    conn = conns.get(timeout=WAIT)
    st_.stop()
    expect_eof(sock)
    sock.close()
    with pytest.raises(pygev.ConnectionClosed):
        conn.send(b"x")


def test_close_from_handler_flushes_what_was_sent_before(serve):
    big = random.Random(3).randbytes(4 << 20)

    class H(pygev.Handler):
        def on_message(self, conn, ctx, data):
            conn.send(big)
            conn.send(b"<end>")
            conn.close()
            return b"dropped: the connection is closed"

    st_ = serve(H(), num_loops=2)
    with st_.connect() as sock:
        sock.sendall(b"go")
        got = recv_until_eof(sock)
    assert len(got) == len(big) + 5
    assert got == big + b"<end>"


def test_shutdown_write_flushes_pending_output_before_fin(serve):
    big = random.Random(4).randbytes(8 << 20)
    rec_after = queue.Queue()

    class H(pygev.Handler):
        def on_message(self, conn, ctx, data):
            if data.startswith(b"go"):
                conn.send(big)
                conn.shutdown_write()
                conn.shutdown_write()  # idempotent
                with pytest.raises(pygev.ConnectionClosed):
                    conn.send(b"too late")
                return None
            rec_after.put((data, conn.connected))
            return b"ignored: write side is shut"

        def on_close(self, conn):
            rec_after.put(("closed", conn.connected))

    st_ = serve(H(), num_loops=2)
    with st_.connect() as sock:
        sock.sendall(b"go")
        got = recv_until_eof(sock, timeout=30)
        assert len(got) == len(big)
        assert got == big
        # Half-closed: the server still reads what the client sends.
        sock.sendall(b"more")
        data, connected = rec_after.get(timeout=WAIT)
        assert data == b"more" and connected is True
    assert rec_after.get(timeout=WAIT) == ("closed", False)


@pytest.mark.parametrize("high_water", [1 << 20, 64 << 10], ids=["default", "small-high-water"])
def test_client_half_close_still_gets_echo_then_eof(serve, high_water):
    rec = Recorder()
    st_ = serve(rec, num_loops=2, write_high_water=high_water)
    payload = random.Random(5).randbytes(3 << 20)
    with st_.connect() as sock:
        sender = send_in_thread(sock, payload)
        received = bytearray()
        # Read while the sender runs, then half-close once it is done.
        while len(received) < len(payload):
            chunk = sock.recv(1 << 20)
            assert chunk, f"EOF after {len(received)} of {len(payload)} bytes"
            received += chunk
            if not sender.is_alive():
                break
        join_sender(sender, timeout=30)
        sock.shutdown(socket.SHUT_WR)
        rest = recv_until_eof(sock, timeout=30)
        received += rest
        assert len(received) == len(payload)
        assert bytes(received) == payload
    rec.wait(lambda: rec.closes == 1, what="on_close")


def test_client_half_close_with_unread_reply_pending(serve):
    """The client sends everything, shuts down its write side and only then reads: the
    server must write every reply before closing."""
    rec = Recorder()
    # Below the write high-water mark: the server reads everything even though the client
    # does not read, so the client's sendall() cannot block.
    st_ = serve(rec, num_loops=1)
    payload = random.Random(6).randbytes(512 << 10)
    with st_.connect() as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = recv_until_eof(sock, timeout=30)
    assert got == payload
    rec.wait(lambda: rec.closes == 1, what="on_close")


def test_connected_true_while_open(serve):
    states = queue.Queue()

    class H(pygev.Handler):
        def on_connect(self, conn):
            states.put(conn.connected)

        def on_message(self, conn, ctx, data):
            states.put(conn.connected)
            return data

    st_ = serve(H(), num_loops=1)
    with st_.connect() as sock:
        echo_roundtrip(sock, b"abc")
    assert states.get(timeout=WAIT) is True
    assert states.get(timeout=WAIT) is True


def test_repr_and_types(serve):
    conns = queue.Queue()

    class H(pygev.Handler):
        def on_connect(self, conn):
            conns.put(conn)

    st_ = serve(H(), num_loops=1)
    with st_.connect():
        conn = conns.get(timeout=WAIT)
        assert isinstance(conn, pygev.Connection)
        assert "pygev.Connection" in repr(conn)
    assert "pygev.Server" in repr(st_.server)
    wait_until(lambda: not conn.connected, what="connection closed")


def test_close_from_another_thread_flushes_then_closes(serve):
    conns = queue.Queue()
    big = random.Random(8).randbytes(2 << 20)

    class H(Recorder):
        def on_connect(self, conn):
            super().on_connect(conn)
            conns.put(conn)

    rec = H()
    st_ = serve(rec, num_loops=2)
    with st_.connect() as sock:
        conn = conns.get(timeout=WAIT)
        t = threading.Thread(target=lambda: (conn.send(big), conn.close(), conn.close()))
        t.start()
        t.join(WAIT)
        assert recv_until_eof(sock, timeout=30) == big
    rec.wait(lambda: rec.closes == 1, what="on_close")
    assert conn.connected is False


def test_client_reset_calls_on_close_once(serve):
    import struct

    rec = Recorder()
    st_ = serve(rec, num_loops=2)
    socks = [st_.connect() for _ in range(10)]
    for s in socks:
        echo_roundtrip(s, b"abc")
        # SO_LINGER with timeout 0: close() sends RST instead of FIN.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    rec.wait(lambda: rec.closes == 10, what="10 on_close calls")
    with st_.connect() as s:
        echo_roundtrip(s, b"server is fine")
    with rec.cond:
        for evs in rec.events.values():
            assert [k for k, _ in evs].count("close") <= 1


def test_send_from_on_connect_arrives_first(serve):
    class Greeter(pygev.Handler):
        def on_connect(self, conn):
            conn.send(b"welcome\n")

        def on_message(self, conn, ctx, data):
            return data

    st_ = serve(Greeter(), num_loops=2)
    for _ in range(20):
        with st_.connect() as sock:
            sock.sendall(b"hi")  # sent before the greeting was read
            assert recv_exactly(sock, 10) == b"welcome\nhi"


def test_close_in_on_connect(serve):
    class Refuse(Recorder):
        def on_connect(self, conn):
            super().on_connect(conn)
            conn.send(b"go away")
            conn.close()

    rec = Refuse()
    st_ = serve(rec, num_loops=2)
    for _ in range(10):
        with st_.connect() as sock:
            try:
                sock.sendall(b"ignored")
            except OSError:
                pass
            try:
                got = recv_until_eof(sock)
            except ConnectionResetError:
                got = None  # our unread bytes made the server's close a reset
            assert got in (b"go away", None)
    rec.wait(lambda: rec.closes == 10, what="10 on_close calls")
    with rec.cond:
        for evs in rec.events.values():
            assert [k for k, _ in evs] == ["connect", "close"], evs


def test_connect_and_close_immediately(serve):
    """Clients that vanish right after connecting still get on_connect and exactly one
    on_close, and nothing leaks."""
    rec = Recorder()
    st_ = serve(rec, num_loops=2)
    n = 200
    for i in range(n):
        s = st_.connect()
        if i % 2:
            s.sendall(b"x")
        s.close()
    rec.wait(lambda: rec.closes == n, what=f"{n} on_close calls")
    with rec.cond:
        assert rec.connects == n
        for evs in rec.events.values():
            kinds = [k for k, _ in evs]
            assert kinds[0] == "connect" and kinds[-1] == "close", kinds
            assert kinds.count("close") == 1
    wait_until(lambda: st_.stats()["connections"] == 0, what="no open connections")


def test_mutating_a_sent_buffer_afterwards_does_not_change_what_is_sent(serve):
    class H(pygev.Handler):
        def on_message(self, conn, ctx, data):
            size = 64 << 10
            ba = bytearray(b"A" * size)
            conn.send(ba)
            ba[:] = b"X" * size  # after send(): must not affect the bytes on the wire
            backing = bytearray(b"B" * size)
            conn.send(memoryview(backing))
            backing[:] = b"Y" * size
            return None

    st_ = serve(H(), num_loops=1)
    with st_.connect() as sock:
        sock.sendall(b"go")
        got = recv_exactly(sock, 128 << 10)
    assert got == b"A" * (64 << 10) + b"B" * (64 << 10)


def test_sent_bytes_outlive_the_callers_reference(serve):
    """Large bytes created in a callback and dropped right after send() still go out
    intact, even when the client reads only much later."""
    import gc

    class H(pygev.Handler):
        def on_message(self, conn, ctx, data):
            seed = int(data)
            payload = random.Random(seed).randbytes(4 << 20)
            conn.send(payload)
            del payload
            gc.collect()
            return None

    st_ = serve(H(), num_loops=1)
    with st_.connect() as sock:
        sock.sendall(b"77")
        wait_until(lambda: st_.stats()["write_buffered"] > 0, what="output queued")
        got = recv_exactly(sock, 4 << 20, timeout=30)
    assert got == random.Random(77).randbytes(4 << 20)


def test_replies_and_sends_of_a_batch_keep_their_order(serve):
    """send() calls and returned replies of many pipelined messages, small and large,
    arrive in exactly the order they were made."""

    def sends(n):
        return [b"<%d:" % n + bytes([65 + n % 26]) * (n * 97 % 5000) + b">", b"s%d;" % n]

    def reply(n):
        return b"r%d" % n + b"." * (3000 if n % 3 == 0 else 1) + b";"

    groups = []  # the line numbers each on_message handled, in order

    class H(pygev.Handler):
        def on_connect(self, conn):
            conn.context = bytearray()

        def on_message(self, conn, ctx, data):
            buf = conn.context
            buf += data
            *lines, rest = bytes(buf).split(b"\n")
            buf[:] = rest
            numbers = [int(line) for line in lines]
            groups.append(numbers)
            for n in numbers:
                for part in sends(n):
                    conn.send(part)
            return b"".join(reply(n) for n in numbers)  # may be b""

    st_ = serve(H(), num_loops=2)
    with st_.connect() as sock:
        for i in range(0, 300, 10):
            sock.sendall(b"".join(b"%d\n" % n for n in range(i, i + 10)))
        total = sum(len(b"".join(sends(n))) + len(reply(n)) for n in range(300))
        got = recv_exactly(sock, total, timeout=30)
    want = b"".join(
        b"".join(b"".join(sends(n)) for n in g) + b"".join(reply(n) for n in g) for g in groups
    )
    assert [n for g in groups for n in g] == list(range(300))
    assert got == want

"""Running out of file descriptors (EMFILE) pauses accepting; it neither spins nor stops
the server, and the connections waiting in the backlog are served once descriptors free up."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import textwrap

from conftest import WAIT, connect, recv_exactly

SERVER = textwrap.dedent(
    """
    import logging, resource, sys
    import pygev

    class Echo(pygev.Handler):
        def on_message(self, conn, ctx, data):
            return data

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    server = pygev.Server(Echo(), "127.0.0.1:0", num_loops=1)
    # Few descriptors: the interpreter, the poll and waker fds and a handful of sockets.
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[1])))
    print(server.address[1], flush=True)
    server.start()
    """
)

CLIENTS = 40


def test_emfile_pauses_accepting_and_recovers() -> None:
    # Find how many descriptors the idle server uses, then allow only a few more.
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    socks: list[socket.socket] = []
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        socks = [connect(port) for _ in range(CLIENTS)]
        for i, sock in enumerate(socks):
            sock.sendall(b"%04d" % i)
        # Some connections are served; the others wait in the backlog while accept fails.
        served: list[int] = []
        while True:
            waiting = [s for i, s in enumerate(socks) if i not in served]
            readable, _, _ = select.select(waiting, [], [], 1.0)
            if not readable:
                break  # a second without progress: the rest are stuck behind EMFILE
            for sock in readable:
                i = socks.index(sock)
                assert recv_exactly(sock, 4) == b"%04d" % i
                served.append(i)
        assert 0 < len(served) < CLIENTS, f"expected EMFILE to stall some clients: {served}"
        # Free descriptors: the waiting connections must now be accepted and echoed.
        for i in served:
            socks[i].close()
        for i, sock in enumerate(socks):
            if i in served:
                continue
            sock.settimeout(WAIT)
            assert recv_exactly(sock, 4) == b"%04d" % i
    finally:
        for sock in socks:
            sock.close()
        proc.send_signal(2)
        try:
            _, err = proc.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "accept failed" in err and "Too many open files" in err, err

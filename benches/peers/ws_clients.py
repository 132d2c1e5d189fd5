#!/usr/bin/env python3
"""WebSocket echo clients for benches/ws_client.py: pygev, picows and websockets doing the
same thing, each in its own library's natural shape.

    python benches/peers/ws_clients.py CLIENT --url ws://127.0.0.1:PORT/ \\
        -c CONNS -s SIZE -i INFLIGHT -d DURATION -w WARMUP

CLIENT is one of:

  pygev       pygev.Server(handler, None, num_loops=1) (a reactor without a listener) dialing
              with server.connect(url, handler=H(), protocol=pygev.WebSocket(compression=False,
              ping_interval=None)); on_connect sends INFLIGHT messages, on_message returns the
              next one (a returned bytes is sent as a binary message)
  pygev-send  the same, with on_message calling conn.send(next) and returning None
  picows      picows.ws_connect on uvloop, a WSListener whose on_ws_frame sends the next
              message (the shape of picows's own examples/echo_client_benchmark.py)
  websockets  websockets.asyncio.client.connect on asyncio (compression=None), a coroutine per
              connection: send INFLIGHT messages, then `await recv()` / `await send()` in a loop

No compression, no keepalive pings. Every connection has its own random SIZE-byte binary
message, and sends the next one each time one comes back, so exactly INFLIGHT are always
outstanding per connection.

Checks, outside the hot path: during the warmup every echo is compared with what was sent
(type and bytes); after the measured window the clients stop sending and wait (up to 10 s)
for the INFLIGHT outstanding echoes of every connection, compared too: one missing is
counted in `lost`, one too many or a wrong one in `errors`, a connection closed by the server
in `closed`. In the window itself the clients only count.

stdout (like benches/loadgen): `START` (flushed) when the measured window begins, which is
WARMUP seconds after every connection is up; `STOP` when it ends, DURATION seconds later;
then one JSON line: {"client", "messages", "bytes" (payload), "seconds", "connections",
"size", "inflight", "min_conn_messages", "max_conn_messages", "errors", "lost", "closed",
"notes", "version"}. Exit status 0, or 1 when a check failed or the run could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import threading
import time

# A connection's phase. RUN is 0 so that the hot path tests one attribute for truth.
RUN, WARMUP, DRAIN, DONE = 0, 1, 2, 3
DRAIN_TIMEOUT = 10.0
CONNECT_TIMEOUT = 30.0


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def raise_nofile_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


class Run:
    """The run's bookkeeping, shared by every client: the connections' states (objects with
    `received`, `phase`, `drained`), the measured window and the checks."""

    def __init__(self, args, name):
        self.args = args
        self.name = name
        self.conns = []
        self.errors = 0
        self.lost = 0
        self.closed = 0
        self.notes = []
        self.closing = False  # set once we close: a close is no longer an error
        self.pending = 0  # connections still draining
        self.on_drained = None  # called (in the client's callback thread) once all drained
        self.t0 = self.t1 = None
        self.per0 = self.window = None

    def new_message(self):
        return os.urandom(self.args.size)

    def note(self, what):
        if len(self.notes) < 10:
            self.notes.append(what)
            log(f"{self.name}: {what}")

    def error(self, what):
        self.errors += 1
        self.note(what)

    def connection_closed(self):
        if not self.closing:
            self.closed += 1
            self.note("a connection was closed by the server (or failed) during the run")

    def check(self, st, data):
        """The slow path of every echo outside the measured window. Returns whether the
        client sends the next message."""
        if type(data) is not bytes or data != st.msg:
            self.error(
                f"wrong echo: {type(data).__name__} of {len(data)} bytes"
                + (" (content differs)" if len(data) == len(st.msg) else "")
            )
        if st.phase == WARMUP:
            return True
        if st.phase == DRAIN:
            st.drained += 1
            if st.drained == self.args.inflight:
                st.phase = DONE
                self.pending -= 1
                if self.pending == 0 and self.on_drained is not None:
                    self.on_drained()
        else:
            self.error("an echo more than was sent")
        return False

    def start(self):
        """The measured window begins (called in the client's callback thread)."""
        for st in self.conns:
            st.phase = RUN
        self.per0 = [st.received for st in self.conns]
        self.t0 = time.monotonic()
        print("START", flush=True)

    def stop(self):
        """The measured window ends: stop sending, wait for the outstanding echoes."""
        self.t1 = time.monotonic()
        per1 = [st.received for st in self.conns]
        print("STOP", flush=True)
        self.window = [b - a for a, b in zip(self.per0, per1)]
        self.pending = len(self.conns)
        for st in self.conns:
            st.phase = DRAIN

    def finish_drain(self):
        """After the drain (or its timeout): the echoes that never came are lost."""
        for st in self.conns:
            if st.phase == DRAIN:
                missing = self.args.inflight - st.drained
                self.lost += missing
                self.note(f"{missing} echo(es) of a connection never came back")
                st.phase = DONE

    def result(self, version, failed=None):
        window = self.window or [0]
        messages = sum(window)
        r = {
            "client": self.name,
            "messages": messages,
            "bytes": messages * self.args.size,
            "seconds": (self.t1 - self.t0) if self.t1 is not None else 0.0,
            "connections": self.args.connections,
            "size": self.args.size,
            "inflight": self.args.inflight,
            "min_conn_messages": min(window),
            "max_conn_messages": max(window),
            "errors": self.errors,
            "lost": self.lost,
            "closed": self.closed,
            "notes": self.notes,
            "version": version,
        }
        if failed:
            r["failed"] = failed
        return r


# ---- pygev ---------------------------------------------------------------------------------


def run_pygev(args, name):
    import pygev

    run = Run(args, name)
    inflight = args.inflight

    class Client(pygev.WebSocketHandler):
        def __init__(self, msg):
            self.msg = msg
            self.received = 0
            self.drained = 0
            self.phase = WARMUP

        def on_connect(self, conn):
            msg = self.msg
            for _ in range(inflight):
                conn.send(msg)

        def on_message(self, conn, data):
            self.received += 1
            if self.phase:
                return self.msg if run.check(self, data) else None
            return self.msg

        def on_close(self, conn):
            run.connection_closed()

    class SendingClient(Client):
        def on_message(self, conn, data):
            self.received += 1
            if self.phase and not run.check(self, data):
                return None
            conn.send(self.msg)
            return None

    cls = SendingClient if name == "pygev-send" else Client
    protocol = pygev.WebSocket(compression=False, ping_interval=None)
    server = pygev.Server(pygev.WebSocketHandler(), None, num_loops=1)
    drained = threading.Event()
    run.on_drained = drained.set
    failed = []

    def orchestrate():
        try:
            handlers = [cls(run.new_message()) for _ in range(args.connections)]
            futures = [server.connect(args.url, handler=h, protocol=protocol) for h in handlers]
            for f in futures:
                f.result(CONNECT_TIMEOUT)
            run.conns = handlers
            done = threading.Event()
            server.run_after(args.warmup, run.start)

            def stop():
                run.stop()
                done.set()

            server.run_after(args.warmup + args.duration, stop)
            if not done.wait(args.warmup + args.duration + 60):
                failed.append("the window's end timer never ran")
                return
            drained.wait(DRAIN_TIMEOUT)
            # the timer thread may still see echoes: settle the count there
            settled = threading.Event()
            server.run_after(0, lambda: (run.finish_drain(), settled.set()))
            settled.wait(DRAIN_TIMEOUT)
        except BaseException as exc:
            failed.append(f"{type(exc).__name__}: {exc}")
        finally:
            run.closing = True
            server.stop()

    threading.Thread(target=orchestrate, daemon=True).start()
    server.start()
    return run.result(getattr(pygev, "__version__", "?"), "; ".join(failed) or None)


# ---- picows --------------------------------------------------------------------------------


def run_picows(args, name):
    import picows
    from picows import WSCloseCode, WSListener, WSMsgType, ws_connect

    run = Run(args, name)
    inflight = args.inflight
    binary = WSMsgType.BINARY

    class Client(WSListener):
        def __init__(self, msg):
            super().__init__()
            self.msg = msg
            self.received = 0
            self.drained = 0
            self.phase = WARMUP
            self.transport = None

        def on_ws_connected(self, transport):
            self.transport = transport
            msg = self.msg
            for _ in range(inflight):
                transport.send(binary, msg)

        def on_ws_frame(self, transport, frame):
            self.received += 1
            if self.phase:
                if frame.msg_type != binary:
                    run.error(f"unexpected frame {frame.msg_type!r}")
                    return
                if not run.check(self, frame.get_payload_as_bytes()):
                    return
            transport.send(binary, self.msg)

        def on_ws_disconnected(self, transport):
            run.connection_closed()

    async def main():
        loop = asyncio.get_running_loop()
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    ws_connect(lambda: Client(run.new_message()), args.url)
                    for _ in range(args.connections)
                )
            ),
            CONNECT_TIMEOUT,
        )
        run.conns = [listener for _, listener in results]
        drained = asyncio.Event()
        run.on_drained = drained.set
        stopped = asyncio.Event()
        loop.call_later(args.warmup, run.start)
        loop.call_later(args.warmup + args.duration, lambda: (run.stop(), stopped.set()))
        await stopped.wait()
        try:
            await asyncio.wait_for(drained.wait(), DRAIN_TIMEOUT)
        except asyncio.TimeoutError:
            pass
        run.finish_drain()
        run.closing = True
        for transport, _ in results:
            transport.send_close(WSCloseCode.OK)  # its default, NO_INFO, sends code 0
            transport.disconnect()
        await asyncio.wait_for(
            asyncio.gather(*(t.wait_disconnected() for t, _ in results)), DRAIN_TIMEOUT
        )

    try:
        import uvloop
    except ImportError:
        uvloop = None
    failed = None
    try:
        (uvloop.run if uvloop else asyncio.run)(main())
    except Exception as exc:
        failed = f"{type(exc).__name__}: {exc}"
    version = getattr(picows, "__version__", "?")
    if uvloop:
        version += f" (uvloop {uvloop.__version__})"
    return run.result(version, failed)


# ---- websockets ----------------------------------------------------------------------------


def run_websockets(args, name):
    import websockets
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    run = Run(args, name)
    inflight = args.inflight

    class State:
        __slots__ = ("drained", "msg", "phase", "received")

        def __init__(self, msg):
            self.msg = msg
            self.received = 0
            self.drained = 0
            self.phase = WARMUP

    async def pump(ws, st):
        msg = st.msg
        recv, send = ws.recv, ws.send
        try:
            for _ in range(inflight):
                await send(msg)
            while True:
                data = await recv()
                st.received += 1
                if st.phase and not run.check(st, data):
                    if st.phase == DONE:
                        return
                    continue
                await send(msg)
        except ConnectionClosed:
            run.connection_closed()

    async def main():
        loop = asyncio.get_running_loop()
        wss = await asyncio.wait_for(
            asyncio.gather(
                *(
                    connect(
                        args.url,
                        compression=None,
                        max_size=None,
                        ping_interval=None,
                        proxy=None,
                        open_timeout=CONNECT_TIMEOUT,
                    )
                    for _ in range(args.connections)
                )
            ),
            CONNECT_TIMEOUT,
        )
        run.conns = [State(run.new_message()) for _ in wss]
        tasks = [asyncio.create_task(pump(ws, st)) for ws, st in zip(wss, run.conns)]
        stopped = asyncio.Event()
        loop.call_later(args.warmup, run.start)
        loop.call_later(args.warmup + args.duration, lambda: (run.stop(), stopped.set()))
        await stopped.wait()
        await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT)
        run.finish_drain()
        run.closing = True
        for t in tasks:
            t.cancel()
        await asyncio.wait_for(asyncio.gather(*(ws.close() for ws in wss)), DRAIN_TIMEOUT)

    failed = None
    try:
        asyncio.run(main())
    except Exception as exc:
        failed = f"{type(exc).__name__}: {exc}"
    return run.result(websockets.__version__, failed)


CLIENTS = {
    "pygev": run_pygev,
    "pygev-send": run_pygev,
    "picows": run_picows,
    "websockets": run_websockets,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("client", choices=sorted(CLIENTS))
    ap.add_argument("--url", required=True, help="ws://HOST:PORT/")
    ap.add_argument("-c", "--connections", type=int, default=1)
    ap.add_argument("-s", "--size", type=int, default=64, help="message bytes")
    ap.add_argument("-i", "--inflight", type=int, default=1, help="messages in flight per conn")
    ap.add_argument("-d", "--duration", type=float, default=5.0, help="measured seconds")
    ap.add_argument("-w", "--warmup", type=float, default=1.0, help="seconds before measuring")
    args = ap.parse_args()
    raise_nofile_limit()
    r = CLIENTS[args.client](args, args.client)
    print(json.dumps(r), flush=True)
    bad = r.get("failed") or r["errors"] or r["lost"] or r["closed"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

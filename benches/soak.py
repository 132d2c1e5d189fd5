#!/usr/bin/env python3
"""Soak test: a pygev length-prefix echo server under about 10,000 mixed connections.

The server runs in its own process (so its RSS is its own): ``pygev.Server`` with
``pygev.LengthPrefix``, ``idle_timeout`` and ``frame_timeout``, whose handler echoes every
payload. Client worker processes (selectors, non-blocking sockets) hold the connections for
``--duration`` seconds. Each connection gets a behaviour from a seeded RNG:

- echo (70 %): frames of 0 B to 64 KiB (mostly small) at a modest rate, each split at random
  points across writes; every byte echoed back is checked.
- flood (3 %): small frames as fast as the socket takes them, replies read slowly.
- slow (5 %): large frames, replies read only now and then (backpressure pauses the server's
  reads; the server may close them after ``idle_timeout``: allowed).
- reset (8 %): echo traffic for a while, then close with SO_LINGER 0 (RST), at times in the
  middle of a frame; then reconnect.
- halfclose (8 %): a few frames, shutdown(SHUT_WR), every reply read until EOF; reconnect.
- garbage (6 %): a few frames, then a length prefix over max_frame_size or random bytes; the
  server must close or reset the connection; reconnect.

Every connection's byte stream comes from its own seeded generator; the checking side runs a
second copy of it, so what came back is compared byte for byte with what was sent without
keeping it in memory. Connections that end by design are replaced.

Every ``--interval`` seconds one line: elapsed time, server RSS (VmRSS), open connections,
bytes checked, mismatches, reconnects. At the end a summary: RSS at the end of the warm-up
against the end, the highest RSS after the warm-up, the verdict ("RSS flat": the end within
10 % + 4 MiB of the warm-up RSS and the maximum within 20 % + 4 MiB), bytes checked.

Exit status 1 when an echo was wrong (mismatches), a deadline passed (stalls), the server
closed a well-behaved connection, a client worker failed, or the server died.
Writes benches/results/soak.json and, with matplotlib, benches/results/soak.png.
Server stderr goes to benches/results/logs/soak-server.log.

Usage: python benches/soak.py [--connections 10000] [--duration 600] [--interval 10]
                              [--workers 4] [--seed 1] [--loops 1]
Smoke run: python benches/soak.py --connections 1000 --duration 60 --workers 2
"""

from __future__ import annotations

import argparse
import collections
import datetime
import errno
import heapq
import json
import os
import queue
import random
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

MIB = 1024 * 1024
HOST = "127.0.0.1"

# Behaviours and their shares of the connections (echo takes what rounding leaves).
KINDS = ("echo", "flood", "slow", "reset", "halfclose", "garbage")
SHARES = {"flood": 0.03, "slow": 0.05, "reset": 0.08, "halfclose": 0.08, "garbage": 0.06}

MAX_FRAME = 1 * MIB  # the server's max_frame_size
PATTERN_SIZE = 1 * MIB  # payloads are slices of a random pattern at random offsets
FLOOD_CAP = 4 * MIB  # unanswered bytes past which a flood waits for its next read
SLOW_CAP = 8 * MIB  # the same for a slow reader: well past the server's write_high_water
ECHO_CAP = 1 * MIB  # an echo client skips a frame while this much is unanswered
# Floods and slow readers: a receive buffer small enough that backpressure reaches the
# server soon (the kernel would autotune it to megabytes), not smaller: on loopback (64 KiB
# MSS) a 32 KiB buffer cannot hold one segment's memory, the kernel drops in-window data
# (TcpExtTCPRcvQDrop) and both ends back off for tens of seconds: a TCP artefact, seen with
# SOAK_SS=1 (which prints both ends' `ss` state at each problem).
SMALL_RCVBUF = 256 * 1024

STALL_S = 30.0  # an expected reply (or EOF) later than this is a stall
CONNECT_TIMEOUT_S = 10.0
MAX_CONNECTING = 64  # connects in progress per worker (the listen backlog never overflows)
STATUS_S = 1.0  # workers report their counters this often
STOP_TIMEOUT_S = 20.0  # how long a process gets to exit once asked to


# ---- the byte streams ---------------------------------------------------------------------


class Stream:
    """The deterministic chunks one connection sends: the sender and the checker each run a
    copy made from the same seed, so echoes are checked without keeping what was sent."""

    __slots__ = ("frames_left", "garbage_left", "kind", "pattern", "rng")

    def __init__(self, seed: int, kind: str, pattern: bytes) -> None:
        self.rng = random.Random(seed)
        self.kind = kind
        self.pattern = pattern
        self.frames_left = -1  # unbounded
        self.garbage_left = 0
        if kind == "halfclose":
            self.frames_left = self.rng.randint(1, 10)
        elif kind == "garbage":
            self.frames_left = self.rng.randint(0, 6)
            self.garbage_left = 1

    def _size(self) -> int:
        rng = self.rng
        if self.kind == "flood":
            return rng.randint(0, 256)
        if self.kind == "slow":
            return rng.randint(4096, 65536)
        r = rng.random()
        if r < 0.5:
            return rng.randint(0, 64)
        if r < 0.8:
            return rng.randint(65, 1024)
        if r < 0.95:
            return rng.randint(1025, 16384)
        return rng.randint(16385, 65536)

    def frame(self) -> bytes:
        n = self._size()
        off = self.rng.randrange(PATTERN_SIZE)
        return n.to_bytes(4, "big") + self.pattern[off : off + n]

    def next_chunk(self) -> tuple[bytes, bool] | None:
        """(chunk, is_garbage), or None once a finite stream is over."""
        if self.frames_left == 0:
            if self.garbage_left:
                self.garbage_left = 0
                return self._garbage(), True
            return None
        if self.frames_left > 0:
            self.frames_left -= 1
        return self.frame(), False

    def bulk(self, size: int) -> bytes:
        """Frames joined until at least ``size`` bytes (floods)."""
        parts, total = [], 0
        while total < size:
            f = self.frame()
            parts.append(f)
            total += len(f)
        return b"".join(parts)

    def _garbage(self) -> bytes:
        rng = self.rng
        off = rng.randrange(PATTERN_SIZE)
        if rng.random() < 0.5:
            choice = rng.randrange(3)
            declared = (MAX_FRAME + 1, 0xFFFFFFFF, rng.randint(MAX_FRAME + 1, 0xFFFFFFFF))[choice]
            return declared.to_bytes(4, "big") + self.pattern[off : off + rng.randint(0, 1024)]
        return self.pattern[off : off + rng.randint(1, 4096)]  # random bytes


def framed_prefix(buf: bytes) -> tuple[int, str]:
    """How many leading bytes of ``buf`` are whole frames a correct server echoes, and what
    comes after them: "oversize" (a header over MAX_FRAME), "partial" or "boundary"."""
    pos = 0
    while len(buf) - pos >= 4:
        n = int.from_bytes(buf[pos : pos + 4], "big")
        if n > MAX_FRAME:
            return pos, "oversize"
        if len(buf) - pos - 4 < n:
            return pos, "partial"
        pos += 4 + n
    return pos, "partial" if pos < len(buf) else "boundary"


# ---- the client worker --------------------------------------------------------------------

CONNECTING, OPEN, DRAINING, GARBAGE_SENT, CLOSED = range(5)
PROBLEM_NAMES = {"mismatches": "mismatch", "stalls": "stall", "unexpected_closes": "cut off"}


class Conn:
    __slots__ = (
        "check_stream",
        "checked",
        "cur",
        "cur_pos",
        "deadline",
        "finishing",
        "generated",
        "kind",
        "mask",
        "out",
        "piece_busy",
        "pieces",
        "progress",
        "send_stream",
        "sent",
        "slot",
        "sock",
        "state",
        "t_start",
        "valid_limit",
        "want_read",
        "want_write",
    )

    def __init__(self, slot: int, kind: str, sock: socket.socket, now: float) -> None:
        self.slot = slot
        self.kind = kind
        self.sock = sock
        self.state = CONNECTING
        self.mask = 0
        self.want_read = False
        self.want_write = False
        self.out = bytearray()
        self.pieces: collections.deque[bytes] = collections.deque()
        self.piece_busy = False
        self.send_stream: Stream | None = None
        self.check_stream: Stream | None = None
        self.cur = b""
        self.cur_pos = 0
        self.sent = 0  # bytes the kernel took
        self.checked = 0  # bytes received and verified
        self.generated = 0  # bytes taken from send_stream (queued or sent)
        self.valid_limit = -1  # garbage: the most bytes a correct server echoes
        self.deadline: float | None = None  # garbage: when the server must have closed
        self.progress = now
        self.t_start = now
        self.finishing = False


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.addr = (HOST, args.port)
        self.rng = random.Random(f"{args.seed}/worker/{args.index}")
        self.pattern = random.Random(f"{args.seed}/pattern").randbytes(PATTERN_SIZE + 65536 + 8)
        self.sel = selectors.DefaultSelector()
        self.timers: list = []
        self.seq = 0
        self.now = time.monotonic()
        self.live: set[Conn] = set()
        self.connect_queue: collections.deque[int] = collections.deque()
        self.connecting = 0
        self.ever_connected: set[int] = set()
        self.stopping = False
        self.errors_logged = 0
        self.slots = self._assign_kinds(args.slots)
        self.counts = {
            "open": 0,
            "connecting": 0,
            "connects": 0,
            "reconnects": 0,
            "connect_errors": 0,
            "mismatches": 0,
            "stalls": 0,
            "unexpected_closes": 0,
        }
        self.kinds = {
            k: {
                "slots": self.slots.count(k),
                "connects": 0,
                "sent": 0,
                "checked": 0,
                "server_eof": 0,
                "server_reset": 0,
                "client_close": 0,
                "client_rst": 0,
            }
            for k in KINDS
        }
        self.kinds["halfclose"]["complete"] = 0
        self.kinds["garbage"]["refused"] = 0
        self.kinds["garbage"]["given_up"] = 0
        self.garbage_endings = {"oversize": 0, "partial": 0, "boundary": 0}

    def _assign_kinds(self, n: int) -> list[str]:
        kinds: list[str] = []
        for kind, share in SHARES.items():
            kinds += [kind] * round(n * share)
        kinds = kinds[:n]
        kinds += ["echo"] * (n - len(kinds))
        self.rng.shuffle(kinds)
        return kinds

    # -- plumbing --

    def later(self, delay: float, fn, arg, conn: Conn | None = None) -> None:
        self.seq += 1
        heapq.heappush(self.timers, (self.now + delay, self.seq, fn, arg, conn))

    def set_interest(self, c: Conn) -> None:
        if c.state == CLOSED:
            return
        mask = (selectors.EVENT_READ if c.want_read else 0) | (
            selectors.EVENT_WRITE if (c.out or c.want_write) else 0
        )
        if mask == c.mask:
            return
        if c.mask == 0:
            self.sel.register(c.sock, mask, c)
        elif mask == 0:
            self.sel.unregister(c.sock)
        else:
            self.sel.modify(c.sock, mask, c)
        c.mask = mask

    def problem(self, what: str, c: Conn, detail: str) -> None:
        self.counts[what] += 1
        if self.errors_logged < 10:
            self.errors_logged += 1
            print(
                f"soak worker {self.args.index}: {PROBLEM_NAMES[what]}: {c.kind} connection (slot "
                f"{c.slot}, {c.sent} bytes sent, {c.checked} checked): {detail}",
                file=sys.stderr,
                flush=True,
            )
            if os.environ.get("SOAK_SS"):
                # Diagnosis: both ends' TCP state (queues, timers) as the kernel sees them.
                port = c.sock.getsockname()[1]
                out = subprocess.run(
                    ["ss", "-tnoim", f"( sport = :{port} or dport = :{port} )"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                print(out, file=sys.stderr, flush=True)

    def close(self, c: Conn, how: str) -> None:
        """Ends a connection: "close" (FIN), "rst" (SO_LINGER 0) or "gone" (the server ended
        it already); its slot reconnects after a short pause unless stopping."""
        if c.state == CLOSED:
            return
        if c.state == CONNECTING:
            self.connecting -= 1
        else:
            self.counts["open"] -= 1
        if c.mask:
            self.sel.unregister(c.sock)
            c.mask = 0
        if how == "rst":
            try:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        c.sock.close()
        c.state = CLOSED
        self.live.discard(c)
        if not self.stopping:
            self.later(self.rng.uniform(0.0, 0.5), self.queue_slot, c.slot)

    def queue_slot(self, slot: int) -> None:
        self.connect_queue.append(slot)

    # -- connecting --

    def start_connect(self, slot: int) -> None:
        kind = self.slots[slot]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if kind in ("flood", "slow"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)
        err = sock.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.counts["connect_errors"] += 1
            self.later(0.5, self.queue_slot, slot)
            return
        c = Conn(slot, kind, sock, self.now)
        self.connecting += 1
        self.live.add(c)
        c.want_write = True
        self.set_interest(c)

    def on_connected(self, c: Conn) -> None:
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.counts["connect_errors"] += 1
            self.close(c, "gone")
            return
        self.connecting -= 1
        self.counts["open"] += 1
        self.counts["connects"] += 1
        if c.slot in self.ever_connected:
            self.counts["reconnects"] += 1
        self.ever_connected.add(c.slot)
        self.kinds[c.kind]["connects"] += 1
        c.state = OPEN
        c.want_write = False
        c.progress = self.now
        seed = self.rng.getrandbits(64)
        c.send_stream = Stream(seed, c.kind, self.pattern)
        c.check_stream = Stream(seed, c.kind, self.pattern)
        rng = self.rng
        if c.kind in ("flood", "slow"):
            c.want_write = True  # sending as fast as the socket takes it
            self.later(self.read_pause(c), self.timed_read, c, c)
            self.later(rng.uniform(30.0, 120.0), self.end_by_design, c, c)
        else:
            c.want_read = True
            self.later(0.0, self.tick, c, c)
            if c.kind == "reset":
                life = rng.uniform(0.0, 0.2) if rng.random() < 0.3 else rng.uniform(1.0, 15.0)
                self.later(life, self.do_reset, c, c)
        self.set_interest(c)

    # -- sending --

    def flush(self, c: Conn) -> bool:
        """Writes what is queued; False when the connection is gone."""
        while c.out:
            try:
                n = c.sock.send(c.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.server_closed(c, "reset", f"send failed: {exc}")
                return False
            if c.sent == c.checked:
                c.progress = self.now  # a reply is due from now on
            del c.out[:n]
            c.sent += n
            self.kinds[c.kind]["sent"] += n
        return True

    def pace(self, c: Conn) -> float:
        rng = self.rng
        if c.kind == "echo":
            return rng.uniform(0.2, 4.0)
        if c.kind == "halfclose":
            return rng.uniform(0.05, 1.0)
        return rng.uniform(0.1, 1.5)

    def tick(self, c: Conn) -> None:
        """Echo-paced kinds: queue the next frame in pieces (split at random points)."""
        if c.state != OPEN or c.finishing:
            return
        if c.kind in ("echo", "reset") and c.generated - c.checked > ECHO_CAP:
            self.later(self.pace(c), self.tick, c, c)
            return
        nxt = c.send_stream.next_chunk()
        if nxt is None:  # a half-close's frames are all queued
            c.finishing = True
            self.maybe_finish(c)
            return
        chunk, is_garbage = nxt
        if is_garbage:
            prefix, ending = framed_prefix(chunk)
            c.valid_limit = c.generated + prefix
            self.garbage_endings[ending] += 1
            wait = None
            if ending == "oversize":
                wait = 15.0
            elif ending == "partial":
                timeouts = [t for t in (self.args.frame_timeout, self.args.idle_timeout) if t]
                wait = min(timeouts) + 15.0 if timeouts else None
            elif self.args.idle_timeout:
                wait = self.args.idle_timeout + 15.0
            c.pieces.append(chunk)
            c.finishing = True
            c.state = GARBAGE_SENT
            c.deadline = self.now + wait if wait is not None else None
            c.progress = self.now
        else:
            cuts = self.rng.choice((0, 0, 1, 1, 2, 3, 4))  # frames are 4 bytes or more
            points = sorted(self.rng.randint(1, len(chunk) - 1) for _ in range(cuts))
            bounds = [0, *points, len(chunk)]
            c.pieces.extend(chunk[a:b] for a, b in zip(bounds, bounds[1:]) if b > a)
        c.generated += len(chunk)
        if not c.piece_busy:
            self.next_piece(c)
        if c.state != CLOSED and not c.finishing:
            self.later(self.pace(c), self.tick, c, c)

    def next_piece(self, c: Conn) -> None:
        if c.state == CLOSED:
            return
        if not c.pieces:
            c.piece_busy = False
            self.maybe_finish(c)
            return
        c.out += c.pieces.popleft()
        if not self.flush(c):
            return
        self.set_interest(c)
        c.piece_busy = bool(c.pieces)
        if c.piece_busy:
            self.later(self.rng.uniform(0.0, 0.02), self.next_piece, c, c)
        else:
            self.maybe_finish(c)

    def maybe_finish(self, c: Conn) -> None:
        """A half-close shuts its write side once everything went out."""
        if c.kind != "halfclose" or c.state != OPEN or not c.finishing:
            return
        if c.pieces or c.out:
            return
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.server_closed(c, "reset", f"shutdown failed: {exc}")
            return
        c.state = DRAINING
        c.progress = self.now

    def pump_bulk(self, c: Conn) -> None:
        """Floods and slow readers: write while the socket takes it, up to their cap."""
        cap = FLOOD_CAP if c.kind == "flood" else SLOW_CAP
        for _ in range(8):
            if c.out:
                if not self.flush(c):
                    return
                if c.out:
                    break
            if c.generated - c.checked >= cap:
                c.want_write = False
                break
            if c.kind == "flood":
                chunk = c.send_stream.bulk(16 * 1024)
            else:
                chunk = c.send_stream.frame()
            c.generated += len(chunk)
            c.out += chunk
        self.set_interest(c)

    def read_pause(self, c: Conn) -> float:
        if c.kind == "flood":
            return self.rng.uniform(0.2, 1.0)
        return self.rng.uniform(2.0, 25.0)

    def timed_read(self, c: Conn) -> None:
        budget = 16 * 1024 if c.kind == "flood" else 256 * 1024
        if not self.read(c, budget):
            return
        cap = FLOOD_CAP if c.kind == "flood" else SLOW_CAP
        if not c.want_write and c.generated - c.checked < cap // 2:
            c.want_write = True
            self.set_interest(c)
        self.later(self.read_pause(c), self.timed_read, c, c)

    def end_by_design(self, c: Conn) -> None:
        # Unread replies are still queued, so the kernel sends a reset; that is by design.
        self.kinds[c.kind]["client_close"] += 1
        self.close(c, "close")

    def do_reset(self, c: Conn) -> None:
        if c.state != OPEN:
            return
        if self.rng.random() < 0.5:  # cut off in the middle of a frame
            frame = c.send_stream.frame()
            if len(frame) > 4:
                try:
                    c.sock.send(frame[: self.rng.randint(1, len(frame) - 1)])
                except OSError:
                    pass
        self.kinds["reset"]["client_rst"] += 1
        self.close(c, "rst")

    # -- receiving --

    def read(self, c: Conn, budget: int) -> bool:
        """Reads and checks up to ``budget`` bytes; False when the connection is gone."""
        while budget > 0:
            try:
                data = c.sock.recv(min(budget, 256 * 1024))
            except (BlockingIOError, InterruptedError):
                return True
            except ConnectionResetError:
                self.server_closed(c, "reset", "reset by the server")
                return False
            except OSError as exc:
                self.server_closed(c, "reset", f"recv failed: {exc}")
                return False
            if not data:
                self.server_closed(c, "eof", "EOF from the server")
                return False
            budget -= len(data)
            if not self.check(c, data):
                return False
        return True

    def check(self, c: Conn, data: bytes) -> bool:
        n = len(data)
        if c.checked + n > c.sent:
            self.mismatch(c, f"{c.checked + n - c.sent} more bytes came back than were sent")
            return False
        if c.valid_limit >= 0 and c.checked + n > c.valid_limit:
            self.mismatch(
                c,
                f"{c.checked + n - c.valid_limit} bytes echoed past the last whole frame "
                "before the garbage",
            )
            return False
        i = 0
        stream = c.check_stream
        while i < n:
            cur = c.cur
            if c.cur_pos == len(cur):
                nxt = stream.next_chunk()
                if nxt is None:
                    self.mismatch(c, "more bytes came back than the stream holds")
                    return False
                cur = c.cur = nxt[0]
                c.cur_pos = 0
            pos = c.cur_pos
            k = min(len(cur) - pos, n - i)
            got = data if (i == 0 and k == n) else data[i : i + k]
            want = cur if (pos == 0 and k == len(cur)) else cur[pos : pos + k]
            if got != want:
                j = next(x for x in range(k) if got[x] != want[x])
                self.mismatch(
                    c,
                    f"byte {c.checked + i + j} differs: expected {want[j : j + 16].hex()}, "
                    f"got {got[j : j + 16].hex()}",
                )
                return False
            i += k
            c.cur_pos = pos + k
        c.checked += n
        c.progress = self.now
        self.kinds[c.kind]["checked"] += n
        return True

    def mismatch(self, c: Conn, detail: str) -> None:
        self.problem("mismatches", c, detail)
        self.close(c, "rst")

    def server_closed(self, c: Conn, how: str, detail: str) -> None:
        """The server ended a connection (EOF or reset): by design or not, per kind."""
        if c.state == CLOSED:
            return
        self.kinds[c.kind][f"server_{how}"] += 1
        if c.kind == "halfclose" and c.state == DRAINING and how == "eof":
            if c.checked != c.sent:
                self.mismatch(c, f"EOF after {c.checked} of the {c.sent} bytes sent were echoed")
                return
            self.kinds["halfclose"]["complete"] += 1
        elif c.kind == "garbage" and c.state == GARBAGE_SENT:
            self.kinds["garbage"]["refused"] += 1
        elif c.kind in ("echo", "reset", "halfclose", "garbage"):
            # A well-behaved stream (or the well-behaved part of one) was cut off.
            self.problem("unexpected_closes", c, detail)
        # floods and slow readers: allowed (idle_timeout closes a peer that stopped reading)
        self.close(c, "gone")

    # -- periodic --

    def sweep(self, _: object) -> None:
        now = self.now
        for c in list(self.live):
            if c.state == CONNECTING:
                if now - c.t_start > CONNECT_TIMEOUT_S:
                    self.counts["connect_errors"] += 1
                    self.close(c, "rst")
                continue
            if c.state == GARBAGE_SENT:
                if c.deadline is not None and now > c.deadline:
                    self.problem("stalls", c, "the server kept a connection that sent garbage")
                    self.close(c, "rst")
                elif c.deadline is None and now - c.progress > STALL_S:
                    self.kinds["garbage"]["given_up"] += 1  # nothing obliges the server
                    self.close(c, "rst")
                continue
            if c.kind == "slow":
                continue
            waiting = c.sent > c.checked or c.state == DRAINING
            if waiting and now - c.progress > STALL_S:
                what = "no EOF after the half-close" if c.sent == c.checked else "no echo"
                self.problem("stalls", c, f"{what} for {now - c.progress:.0f} s")
                self.close(c, "rst")
        self.later(1.0, self.sweep, None)

    def status(self, _: object = None, final: bool = False) -> None:
        self.counts["connecting"] = self.connecting
        line = {
            "worker": self.args.index,
            "final": final,
            **self.counts,
            "kinds": self.kinds,
            "garbage_endings": self.garbage_endings,
        }
        try:
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            self.stopping = True
        if not final:
            self.later(STATUS_S, self.status, None)

    # -- the loop --

    def run(self) -> int:
        common.raise_nofile_limit()
        self.sel.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
        self.connect_queue.extend(range(len(self.slots)))
        hard_deadline = self.now + self.args.duration + 120.0
        self.later(1.0, self.sweep, None)
        self.status()
        while not self.stopping:
            self.now = time.monotonic()
            if self.now >= hard_deadline:
                break
            while self.timers and self.timers[0][0] <= self.now:
                _, _, fn, arg, conn = heapq.heappop(self.timers)
                if conn is None or conn.state != CLOSED:
                    fn(arg)
            while self.connect_queue and self.connecting < MAX_CONNECTING:
                self.start_connect(self.connect_queue.popleft())
            timeout = 0.5
            if self.timers:
                timeout = min(timeout, max(0.0, self.timers[0][0] - time.monotonic()))
            for key, mask in self.sel.select(timeout):
                c = key.data
                if c is None:  # stdin: readable means EOF (the parent never writes)
                    if not os.read(key.fd, 4096):
                        self.stopping = True
                    continue
                if c.state == CLOSED:
                    continue
                self.now = time.monotonic()
                if c.state == CONNECTING:
                    self.on_connected(c)
                    continue
                if mask & selectors.EVENT_WRITE:
                    if c.kind in ("flood", "slow") and c.state == OPEN:
                        self.pump_bulk(c)
                    elif self.flush(c):
                        self.set_interest(c)
                        self.maybe_finish(c)
                if mask & selectors.EVENT_READ and c.state != CLOSED:
                    self.read(c, 1024 * 1024)
        self.stopping = True
        for c in list(self.live):
            self.close(c, "close")
        self.status(final=True)
        return 0


# ---- the server process -------------------------------------------------------------------


def run_server(args: argparse.Namespace) -> int:
    import logging

    import pygev

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    common.raise_nofile_limit()

    class Echo(pygev.Handler):
        def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
            return data

    server = pygev.Server(
        Echo(),
        f"{HOST}:0",
        protocol=pygev.LengthPrefix(max_frame_size=MAX_FRAME),
        idle_timeout=args.idle_timeout or None,
        frame_timeout=args.frame_timeout or None,
        num_loops=args.loops,
    )
    print(server.address[1], flush=True)

    def report() -> None:
        stats = server.stats()
        stats.pop("loops", None)
        print(json.dumps(stats), flush=True)

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            server.stop()  # the parent closed our stdin (or is gone)

    threading.Thread(target=watch_stdin, daemon=True).start()
    server.run_every(1.0, report)
    server.run_after(args.duration + 300.0, server.stop)  # bounded even if stdin stays open
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: server.stop())
    server.start()
    return 0


# ---- the harness --------------------------------------------------------------------------


class Child:
    """A child process of this script whose stdout lines are read by a thread."""

    def __init__(self, name: str, argv: list[str], stderr) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,  # Ctrl+C reaches the harness only; it stops the children
        )
        self.lines: queue.Queue = queue.Queue()
        self.latest: dict | None = None
        self.final: dict | None = None
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("{"):
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                self.latest = doc
                if doc.get("final"):
                    self.final = doc
            else:
                self.lines.put(line)

    def first_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}") from None
        raise RuntimeError(f"{self.name} printed nothing within {timeout:.0f} s")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask_to_stop(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGTERM, then SIGKILL; every wait bounded."""
        self.ask_to_stop()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                return
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                return
            if self.wait(5.0) is not None:
                return


def add_up(docs: list[dict]) -> dict:
    """Sums the numbers of several workers' status documents, recursively."""
    out: dict = {}
    for doc in docs:
        for key, value in doc.items():
            if isinstance(value, bool) or key == "worker":
                continue
            if isinstance(value, dict):
                out[key] = add_up([out.get(key, {}), value])
            elif isinstance(value, (int, float)):
                out[key] = out.get(key, 0) + value
    return out


def failures(totals: dict) -> int:
    return sum(totals.get(k, 0) for k in ("mismatches", "stalls", "unexpected_closes"))


def stderr_digest(path: str) -> tuple[int, list[tuple[str, int, str]]]:
    """The server log's line count and its line patterns (numbers folded) with counts and
    a sample line, most frequent first."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.rstrip("\n") for ln in f if ln.strip()]
    except OSError:
        return 0, []
    patterns: dict[str, list] = {}
    for line in lines:
        body = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", line)
        key = re.sub(r"\d+", "N", body)
        entry = patterns.setdefault(key, [0, body])
        entry[0] += 1
    digest = sorted(((k, v[0], v[1]) for k, v in patterns.items()), key=lambda x: -x[1])
    return len(lines), digest


def plot(samples: list[dict], warmup: float, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    t = [s["t"] for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(t, [s["rss"] / MIB for s in samples], color="tab:blue", label="server RSS")
    ax.plot(
        t,
        [s["server_pending"] / MIB for s in samples],
        color="tab:blue",
        linestyle=":",
        label="of which pending output",
    )
    ax.axvline(warmup, color="gray", linestyle="--", linewidth=1, label="end of warm-up")
    ax.set_xlabel("elapsed (s)")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(t, [s["open"] for s in samples], color="tab:orange", alpha=0.6, label="connections")
    ax2.set_ylabel("open connections")
    ax2.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right")
    ax.set_title("pygev soak: length-prefix echo server under mixed connections")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run_soak(args: argparse.Namespace) -> int:
    per_worker = [args.connections // args.workers] * args.workers
    for i in range(args.connections % args.workers):
        per_worker[i] += 1
    hard = common.raise_nofile_limit()
    if max(per_worker) + 64 > hard:
        raise SystemExit(
            f"{max(per_worker)} connections per worker need more descriptors than "
            f"RLIMIT_NOFILE={hard}: use more --workers"
        )
    if args.connections + 64 > hard:
        raise SystemExit(
            f"the server cannot hold {args.connections} connections: RLIMIT_NOFILE={hard}"
        )
    warmup = (
        args.warmup
        if args.warmup is not None
        else max(0.1 * args.duration, min(60.0, 0.25 * args.duration))
    )
    os.makedirs(common.LOG_DIR, exist_ok=True)
    log_path = os.path.join(common.LOG_DIR, "soak-server.log")
    started = datetime.datetime.now(datetime.timezone.utc)

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    server_log = open(log_path, "wb")
    children: list[Child] = []
    samples: list[dict] = []
    problems: list[str] = []
    interrupted = False
    server_rc = None
    after_close = None
    worker_totals: dict = {}
    try:
        server = Child(
            "server",
            [
                "--role", "server",
                "--loops", str(args.loops),
                "--idle-timeout", str(args.idle_timeout),
                "--frame-timeout", str(args.frame_timeout),
                "--duration", str(args.duration),
            ],
            server_log,
        )  # fmt: skip
        children.append(server)
        port = int(server.first_line(30.0))
        rss_idle = common.proc_rss_bytes(server.proc.pid)  # before any client
        common.log(
            f"pygev server pid {server.proc.pid} on {HOST}:{port} (num_loops={args.loops}, "
            f"idle_timeout={args.idle_timeout}, frame_timeout={args.frame_timeout}, "
            f"max_frame_size={MAX_FRAME}); stderr to {os.path.relpath(log_path)}"
        )
        workers = []
        for i, n in enumerate(per_worker):
            w = Child(
                f"worker {i}",
                [
                    "--role", "client",
                    "--port", str(port),
                    "--index", str(i),
                    "--slots", str(n),
                    "--seed", str(args.seed),
                    "--duration", str(args.duration),
                    "--idle-timeout", str(args.idle_timeout),
                    "--frame-timeout", str(args.frame_timeout),
                ],
                None,  # worker stderr (mismatch details) goes to ours
            )  # fmt: skip
            children.append(w)
            workers.append(w)
        common.log(
            f"{args.connections} connections from {args.workers} client processes for "
            f"{args.duration:.0f} s; warm-up ends at {warmup:.0f} s"
        )
        header = (
            f"{'elapsed s':>9} {'RSS MiB':>8} {'pending MiB':>11} {'open':>6} {'server':>6} "
            f"{'checked MiB':>11} {'mismatches':>10} {'reconnects':>10} {'failures':>8}"
        )
        print(header, flush=True)
        t0 = time.monotonic()
        next_at = t0 + min(args.interval, args.duration)
        try:
            while True:
                now = time.monotonic()
                if not server.alive():
                    problems.append(f"the server died (exit code {server.proc.returncode})")
                    break
                dead = [w.name for w in workers if not w.alive()]
                if dead:
                    problems.append(f"{', '.join(dead)} exited early")
                    break
                if now < next_at:
                    time.sleep(min(0.2, next_at - now))
                    continue
                elapsed = now - t0
                totals = add_up([w.latest or {} for w in workers])
                stats = server.latest or {}
                try:
                    rss = common.proc_rss_bytes(server.proc.pid)
                    cpu = common.proc_cpu_seconds(server.proc.pid)
                except (OSError, RuntimeError):
                    time.sleep(0.1)
                    continue  # it just died: the next turn reports it
                checked = sum(k.get("checked", 0) for k in totals.get("kinds", {}).values())
                sample = {
                    "t": round(elapsed, 2),
                    "rss": rss,
                    "server_cpu_s": cpu,
                    "open": totals.get("open", 0),
                    "server_connections": stats.get("connections"),
                    "checked": checked,
                    "checked_echo": totals.get("kinds", {}).get("echo", {}).get("checked", 0),
                    "mismatches": totals.get("mismatches", 0),
                    "reconnects": totals.get("reconnects", 0),
                    "failures": failures(totals),
                    "server_read_pauses": stats.get("read_pauses"),
                    # output the server holds for peers that do not read (about
                    # write_high_water each): legitimate memory, and most of the RSS's swings
                    "server_pending": stats.get("write_buffered", 0),
                }
                samples.append(sample)
                print(
                    f"{elapsed:9.0f} {rss / MIB:8.1f} {sample['server_pending'] / MIB:11.1f} "
                    f"{sample['open']:6d} "
                    f"{stats.get('connections', -1):6d} {checked / MIB:11.1f} "
                    f"{sample['mismatches']:10d} {sample['reconnects']:10d} "
                    f"{sample['failures']:8d}",
                    flush=True,
                )
                if elapsed >= args.duration - 0.01:
                    break
                next_at = min(next_at + args.interval, t0 + args.duration)
        except KeyboardInterrupt:
            interrupted = True
            common.log("interrupted: stopping the clients and the server")
        # Stop the clients, collect their final counters.
        for w in workers:
            w.ask_to_stop()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for w in workers:
            if w.wait(max(0.1, deadline - time.monotonic())) is None:
                problems.append(f"{w.name} did not stop within {STOP_TIMEOUT_S:.0f} s")
                w.kill()
            elif w.proc.returncode != 0 and not interrupted:
                problems.append(f"{w.name} exited with code {w.proc.returncode}")
        time.sleep(0.2)  # the reader threads take the last lines
        worker_totals = add_up([w.final or w.latest or {} for w in workers])
        # What the server holds once every client left (informative).
        if server.alive():
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and (server.latest or {}).get("connections"):
                time.sleep(0.2)
            time.sleep(1.0)
            try:
                after_close = {
                    "rss": common.proc_rss_bytes(server.proc.pid),
                    "server_connections": (server.latest or {}).get("connections"),
                }
            except (OSError, RuntimeError):
                pass
        if not server.alive() and not any("server died" in p for p in problems):
            problems.append(f"the server died (exit code {server.proc.returncode})")
        server.ask_to_stop()
        server_rc = server.wait(STOP_TIMEOUT_S)
        if server_rc is None:
            problems.append(f"the server did not stop within {STOP_TIMEOUT_S:.0f} s of stop()")
            server.kill()
            server_rc = server.proc.returncode
        elif server_rc != 0 and not any("server died" in p for p in problems):
            problems.append(f"the server exited with code {server_rc}")
        final_stats = server.latest or {}
    finally:
        for child in children:
            child.kill()
        server_log.close()

    run = {
        "rss_idle": rss_idle,
        "started": started,
        "samples": samples,
        "totals": worker_totals,
        "server_stats": final_stats,
        "after_close": after_close,
        "server_rc": server_rc,
        "problems": problems,
        "interrupted": interrupted,
        "log_path": log_path,
    }
    return report(args, warmup, run)


def flatness(warm: int, end: int, peak: int) -> str:
    """ "RSS flat" when the end is within 10 % (+ 4 MiB) of the warm-up value and the peak
    after it within 20 % (+ 4 MiB)."""
    slack = 4 * MIB
    if abs(end - warm) <= 0.10 * warm + slack and peak - warm <= 0.20 * warm + slack:
        return "RSS flat"
    if end > warm + 0.10 * warm + slack:
        return "RSS grew"
    if end < warm - 0.10 * warm - slack:
        return "RSS fell"
    return "RSS not flat (a peak after the warm-up)"


def report(args: argparse.Namespace, warmup: float, run: dict) -> int:
    """Prints the summary, writes soak.json (and soak.png); returns the exit status."""
    samples, totals, problems = run["samples"], run["totals"], run["problems"]
    server_stats, after_close, server_rc = run["server_stats"], run["after_close"], run["server_rc"]
    interrupted, log_path, started = run["interrupted"], run["log_path"], run["started"]
    kinds = totals.get("kinds", {})
    warm = next((s for s in samples if s["t"] >= warmup - 0.01), None)
    end = samples[-1] if samples else None
    peak = None
    verdict = "no samples"
    rows: list[tuple[str, str]] = []

    def mib(x):
        return f"{x / MIB:.1f} MiB"

    n_lines, digest = stderr_digest(log_path)
    fails = failures(totals)
    rows.append(("RSS before any client", mib(run["rss_idle"])))
    if warm and end:
        after = [s for s in samples if s["t"] >= warm["t"]]
        peak = max(after, key=lambda s: s["rss"])
        verdict = flatness(warm["rss"], end["rss"], peak["rss"])
        if end is warm:
            verdict += " (the run ended at the warm-up: nothing to compare)"

        def pct(x):
            return f"({(x - warm['rss']) / warm['rss']:+.1%})"

        rows += [
            (f"RSS at warm-up end (t={warm['t']:.0f} s)", mib(warm["rss"])),
            (f"RSS at the end (t={end['t']:.0f} s)", f"{mib(end['rss'])} {pct(end['rss'])}"),
            (
                f"max RSS after warm-up (t={peak['t']:.0f} s)",
                f"{mib(peak['rss'])} {pct(peak['rss'])}",
            ),
            ("verdict", verdict),
        ]

        # The same without the output waiting for peers that do not read (write_buffered):
        # what is left is what a leak would grow.
        def net(x):
            return x["rss"] - x["server_pending"]

        net_peak = max(net(x) for x in after)
        rows.append(
            (
                "RSS less pending output",
                f"{mib(net(warm))} at warm-up end, {mib(net(end))} at the end, max "
                f"{mib(net_peak)} (input buffers and freed memory malloc kept still count)",
            )
        )
    if after_close:
        rows.append(("RSS once the clients left", mib(after_close["rss"])))
    if end:
        rows.append(("server CPU time", f"{end['server_cpu_s']:.1f} s"))
    rows += [
        ("bytes checked, well-behaved (echo)", mib(kinds.get("echo", {}).get("checked", 0))),
        ("bytes checked, all connections", mib(sum(k.get("checked", 0) for k in kinds.values()))),
        ("mismatches", str(totals.get("mismatches", 0))),
        ("stalls (a deadline passed)", str(totals.get("stalls", 0))),
        ("well-behaved streams cut by the server", str(totals.get("unexpected_closes", 0))),
        ("connects / reconnects", f"{totals.get('connects', 0)} / {totals.get('reconnects', 0)}"),
        ("connect errors", str(totals.get("connect_errors", 0))),
        (
            "server",
            f"exit code {server_rc}; accepted {server_stats.get('accepted', '?')}, "
            f"read pauses {server_stats.get('read_pauses', '?')}, "
            f"messages {server_stats.get('messages_in', '?')}",
        ),
        ("server stderr lines", str(n_lines)),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    print(
        f"soak summary: {args.connections} connections, {args.duration:.0f} s, "
        f"{args.workers} client processes, num_loops={args.loops}, seed {args.seed}"
        + (" (interrupted)" if interrupted else "")
    )
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")

    cols = ["slots", "connects", "checked", "server_eof", "server_reset", "client_close",
            "client_rst"]  # fmt: skip
    print()
    print(f"  {'kind':10}" + "".join(f"{c:>14}" for c in cols) + "  notes")
    for kind in KINDS:
        k = kinds.get(kind, {})
        cells = [mib(k.get(c, 0)) if c == "checked" else str(k.get(c, 0)) for c in cols]
        notes = ""
        if kind == "halfclose":
            notes = f"complete {k.get('complete', 0)}"
        elif kind == "flood" and k.get("server_reset"):
            notes = "resets: by the server while they read (see its stderr)"
        elif kind == "slow" and k.get("server_reset"):
            notes = "resets: idle_timeout (allowed)"
        elif kind == "garbage":
            ends = totals.get("garbage_endings", {})
            notes = (
                f"refused {k.get('refused', 0)}, given up {k.get('given_up', 0)}; garbage "
                + ", ".join(f"{e} {n}" for e, n in ends.items())
            )
        print((f"  {kind:10}" + "".join(f"{c:>14}" for c in cells) + f"  {notes}").rstrip())
    if digest:
        print()
        print(f"  server stderr ({os.path.relpath(log_path)}), by pattern:")
        for _, count, sample in digest[:12]:
            print(f"  {count:8d}  {sample[:220]}")
    for p in problems:
        print(f"PROBLEM: {p}")
    if fails:
        print(f"FAILED: {fails} correctness failure(s); details on stderr above")

    os.makedirs(common.RESULTS_DIR, exist_ok=True)
    path = os.path.join(common.RESULTS_DIR, "soak.json")
    with open(path, "w") as f:
        json.dump(
            {
                "benchmark": "soak",
                "started": started.isoformat(timespec="seconds"),
                "args": vars(args),
                "warmup_s": warmup,
                "machine": common.machine_info(),
                "samples": samples,
                "summary": {
                    "rss_warmup": warm["rss"] if warm else None,
                    "rss_end": end["rss"] if end else None,
                    "rss_max_after_warmup": peak["rss"] if peak else None,
                    "rss_after_clients_left": after_close["rss"] if after_close else None,
                    "verdict": verdict,
                    "checked_echo": kinds.get("echo", {}).get("checked", 0),
                    "mismatches": totals.get("mismatches", 0),
                    "stalls": totals.get("stalls", 0),
                    "unexpected_closes": totals.get("unexpected_closes", 0),
                    "server_exit_code": server_rc,
                    "problems": problems,
                    "interrupted": interrupted,
                },
                "clients": totals,
                "server_stats": server_stats,
                "server_stderr": {"lines": n_lines, "patterns": [[c, s] for _, c, s in digest]},
            },
            f,
            indent=2,
        )
    print(f"wrote {os.path.relpath(path)}")
    png = os.path.join(common.RESULTS_DIR, "soak.png")
    if samples and plot(samples, warm["t"] if warm else warmup, png):
        print(f"wrote {os.path.relpath(png)}")
    if fails or problems or not samples:
        return 1
    return 130 if interrupted else 0


def main() -> int:
    ap = argparse.ArgumentParser(description="Soak test of a pygev length-prefix echo server.")
    ap.add_argument("--connections", type=int, default=10000, help="connections held")
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--workers", type=int, default=4, help="client processes")
    ap.add_argument("--seed", type=int, default=1, help="seeds behaviours and byte streams")
    ap.add_argument("--loops", type=int, default=1, help="the server's num_loops")
    ap.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of warm-up (default: 10%% of the duration, at least min(60, 25%%))",
    )
    ap.add_argument("--idle-timeout", type=float, default=20.0, help="server's, 0 = none")
    ap.add_argument("--frame-timeout", type=float, default=10.0, help="server's, 0 = none")
    # Internal: this script also runs the server and the client workers.
    ap.add_argument("--role", choices=["soak", "server", "client"], default="soak",
                    help=argparse.SUPPRESS)  # fmt: skip
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--slots", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "server":
        return run_server(args)
    if args.role == "client":
        return Worker(args).run()
    if args.connections < 1 or args.workers < 1 or args.duration <= 0 or args.interval <= 0:
        ap.error("--connections, --workers, --duration and --interval must be positive")
    args.workers = min(args.workers, args.connections)
    del args.role, args.port, args.index, args.slots
    return run_soak(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before the run started; the children are already stopped
        sys.exit(130)

#!/usr/bin/env python3
"""One million connections: one deployment of pygev worker processes holds them.

    python benches/million.py                        # 1,000,000 TCP connections
    python benches/million.py --ws                   # the same with WebSocket connections
    python benches/million.py -n 20000 --workers 2   # a small trial
    python benches/million.py --workers 1 -n 1000000 # one process, where no fd cap applies
    python benches/million.py --server floor         # the same shape, a minimal C server

The deployment is benches/peers/million_server.py under pygev.run: W workers (default
ceil(N / 19,000), as a process may hold 20,000 descriptors here) share one port with
SO_REUSEPORT, one loop each, no idle timeout, a handler that keeps its connections in a set
(--hold-order hash, the default: the broadcast visits them in hash order) or in a dict
(--hold-order accept: the broadcast visits them in accept order).
Each worker dials a control connection out to this script (not counted among the held).

--server floor runs benches/peers/million_floor.c (built with gcc -O2 into benches/build/)
in place of million_server.py: the same shape (W processes, one SO_REUSEPORT listener each,
a supervisor when W > 1, the same control lines) with a minimal C epoll server that keeps
the descriptors in accept order and broadcasts with one plain write() of 64 bytes each. It
is the floor, not pygev: what the broadcast (and the rest) costs when the server does
nothing more. Raw TCP only; its results are labelled "floor" everywhere.

Client processes (benches/million_client.c, C and epoll, at most --clients-per-process
connections each) open the connections at --rate per second in all, each from its own
loopback source addresses (127.1.x.y, bound with IP_BIND_ADDRESS_NO_PORT), and hold them.

Measured, in order:
  start     each worker's VmRSS and PSS once it serves, before any connection
  ramp      connections held (the workers' sets) every 0.5 s: accepts per second
  held      VmRSS and PSS again, kernel slab memory (/proc/meminfo, /proc/slabinfo)
  idle      CPU of the supervisor and every worker (all their threads) over --idle-window s
  broadcast every worker sends one 64-byte message (raw bytes, or a binary WebSocket
            message) to each of its connections; the time runs from this script's request
            (CLOCK_MONOTONIC) to the last client's receipt of all 64 bytes (the clients
            stamp each arrival with CLOCK_MONOTONIC: one clock on one machine)

Around the ramp and around the broadcast, the machine-wide TCP counters of /proc/net/snmp
and /proc/net/netstat (retransmissions, memory pressure, pruning, timeouts: TCP_COUNTERS)
are read before and after; /proc/net/sockstat's TCP memory (pages, charged per socket; the
kernel batches it per CPU, so it is off by up to net.core.mem_pcpu_rsv pages per CPU) is
sampled every 0.5 s in the ramp and every 50 ms in the broadcast, against the kernel-wide
limits of /proc/sys/net/ipv4/tcp_mem (min, pressure, max pages), which are recorded, and
which --tcp-mem MIN,PRESSURE,MAX sets for the run (root; restored however the run ends,
short of SIGKILL).

The targets are judged on VmRSS: per connection, (VmRSS held - VmRSS start) / connections
of each worker; in total, the sum of the workers' VmRSS (which counts the pages they share
once per worker; PSS shares them out and is reported beside it).

The run stops early, reporting how far it got, when MemAvailable falls under
--min-available GiB, when --timeout seconds have passed, or on Ctrl+C; every process it
started is stopped on the way out (the supervisor by SIGTERM, then its process group by
SIGKILL; the clients by SIGKILL).

Writes benches/results/million[-ws|-floor][-N][-accept].json and .png (--out for another
folder).
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
from common import CLK_TCK, MIB, PAGE_SIZE, log

GIB = 1024 * MIB
SERVER = os.path.join(common.BENCH_DIR, "peers", "million_server.py")
FLOOR = "benches/peers/million_floor.c"  # --server floor (relative to the repo, for build_c)
TARGETS = {"bytes_per_conn": 400, "total_rss_gib": 1.5, "idle_cpu_pct": 5.0,
           "broadcast_s": 5.0}
TCP_MEM = "/proc/sys/net/ipv4/tcp_mem"
LISTEN_COUNTERS = ("ListenOverflows", "ListenDrops", "SyncookiesSent", "TCPReqQFullDrop",
                   "TCPReqQFullDoCookies")
# Read before and after the ramp and the broadcast (machine-wide, 0 where the kernel lacks
# one); the table always shows TCP_SHOWN, and the others when they moved.
TCP_COUNTERS = {
    "Tcp": ("OutSegs", "RetransSegs"),
    "TcpExt": ("TCPMemoryPressures", "TCPMemoryPressuresChrono", "PruneCalled", "RcvPruned",
               "OfoPruned", "TCPRcvCollapsed", "TCPRcvQDrop", "TCPOFODrop", "TCPAbortOnMemory",
               "DelayedACKs", "TCPTimeouts", "TCPLossProbes", "TCPSpuriousRTOs",
               "TCPBacklogDrop", "TCPZeroWindowDrop", "TCPToZeroWindowAdv"),
}
TCP_SHOWN = ("RetransSegs", "TCPMemoryPressures", "TCPMemoryPressuresChrono", "PruneCalled",
             "RcvPruned", "TCPAbortOnMemory", "DelayedACKs", "TCPTimeouts")


class Abort(Exception):
    """The run cannot go on (memory, time, a process died); the report says how far it got."""


# ---------------------------------------------------------------- /proc readings


def read_status(pid):
    """VmRSS and its parts (RssAnon, RssFile, RssShmem) in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def read_pss(pid):
    """Pss, Pss_Anon, Pss_File and Private_Dirty from smaps_rollup, in bytes."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Pss", "Pss_Anon", "Pss_File", "Private_Dirty", "Shared_Clean"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def memory_of(pid):
    return {**read_status(pid), **read_pss(pid)}


def cpu_seconds(pid):
    """CPU time of every live thread of `pid` (schedstat: nanosecond resolution, where
    utime + stime come in 10 ms ticks, too coarse for idle processes)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total / 1e9


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemFree", "MemAvailable", "Slab", "SReclaimable",
                       "SUnreclaim", "KernelStack", "PageTables"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def slabinfo():
    """Bytes held per slab cache (num_objs x objsize), or {} when unreadable."""
    out = {}
    try:
        with open("/proc/slabinfo") as f:
            for line in f.readlines()[2:]:
                parts = line.split()
                out[parts[0]] = int(parts[2]) * int(parts[3])
    except OSError:
        pass
    return out


def sockstat():
    """The TCP line of /proc/net/sockstat: inuse, orphan, tw, alloc, mem (pages)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()[1:]
                return {parts[i]: int(parts[i + 1]) for i in range(0, len(parts), 2)}
    return {}


def net_counters(wanted):
    """Counters of /proc/net/snmp and /proc/net/netstat (a line of names, then a line of
    values, per group): {name: value} for the names of `wanted` ({group: names}), 0 for a
    name this kernel does not count. The names picked must differ across groups."""
    out = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        with open(path) as f:
            lines = f.read().splitlines()
        for names, values in zip(lines[::2], lines[1::2]):
            group = names.partition(":")[0]
            if group in wanted:
                d = dict(zip(names.split()[1:], (int(v) for v in values.split()[1:])))
                out.update({k: d.get(k, 0) for k in wanted[group]})
    return out


def listen_drops():
    """TcpExt ListenOverflows and ListenDrops (accept queues that were full)."""
    return net_counters({"TcpExt": LISTEN_COUNTERS})


def tcp_counters():
    """TCP_COUNTERS now (machine-wide)."""
    return net_counters(TCP_COUNTERS)


def counter_deltas(before, after):
    return {k: after[k] - before.get(k, 0) for k in after}


def read_tcp_mem():
    """The kernel-wide tcp_mem: [min, pressure, max] in pages."""
    with open(TCP_MEM) as f:
        return [int(x) for x in f.read().split()]


def tcp_mem_arg(text):
    """--tcp-mem MIN,PRESSURE,MAX (pages)."""
    try:
        pages = [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        pages = []
    if len(pages) != 3 or not 0 < pages[0] <= pages[1] <= pages[2]:
        raise argparse.ArgumentTypeError(
            f"{text!r}: three page counts MIN,PRESSURE,MAX with 0 < MIN <= PRESSURE <= MAX")
    return pages


def set_tcp_mem(pages):
    """Writes the kernel-wide tcp_mem (every TCP socket of the machine obeys it) and arranges
    that the previous value comes back however this script ends, short of SIGKILL: returns
    that value and the function that restores it (once; atexit calls it too)."""
    previous = read_tcp_mem()
    if not os.access(TCP_MEM, os.W_OK):
        raise SystemExit(f"--tcp-mem: {TCP_MEM} is not writable here (it needs root, and a "
                         "writable /proc/sys in the initial network namespace); nothing "
                         "was changed")
    was = " ".join(map(str, previous))
    done = []

    def restore():
        if done:
            return
        done.append(True)
        try:
            with open(TCP_MEM, "w") as f:
                f.write(was + "\n")
            log(f"--tcp-mem: restored the kernel-wide {TCP_MEM} to {read_tcp_mem()} pages")
        except OSError as exc:
            log(f"--tcp-mem: COULD NOT RESTORE {TCP_MEM} to '{was}': {exc}")

    atexit.register(restore)  # before the write: whatever happens next, it comes back
    try:
        with open(TCP_MEM, "w") as f:
            f.write(" ".join(map(str, pages)) + "\n")
    except OSError as exc:
        if read_tcp_mem() == previous:
            done.append(True)  # unchanged: nothing to restore
        raise SystemExit(f"--tcp-mem: could not write {TCP_MEM}: {exc}") from None
    now = read_tcp_mem()
    new = " ".join(map(str, now))
    log(f"--tcp-mem: changed the KERNEL-WIDE {TCP_MEM} (every TCP socket on this machine) "
        f"from '{was}' to '{new}' pages (pressure at {now[1] * PAGE_SIZE / GIB:.2f} GiB, "
        f"max {now[2] * PAGE_SIZE / GIB:.2f} GiB) for this run; it is restored at the end. "
        f"Should this script be SIGKILLed: echo '{was}' > {TCP_MEM}")
    if now != pages:
        restore()
        raise SystemExit(f"--tcp-mem: the kernel kept {now} for {pages}: restored, stopped")
    return previous, restore


def tcp_mem_record(previous=None):
    """What the run records of the TCP memory limits in effect."""
    out = {"pages": read_tcp_mem(), "page_size": PAGE_SIZE, "set_by_run": previous is not None,
           "previous": previous}
    for name in ("tcp_rmem", "tcp_wmem"):
        try:
            with open(f"/proc/sys/net/ipv4/{name}") as f:
                out[name] = [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


class SockMemSampler:
    """/proc/net/sockstat's TCP mem (pages) every `every` s on a thread of its own, from
    start() to stop(): its course (seconds from stop's t0_ns) and its peak (one small read
    per sample)."""

    def __init__(self, every=0.05):
        self.every = every
        self.samples = []  # (monotonic ns, pages)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        while True:
            try:
                mem = sockstat().get("mem")
            except OSError:
                mem = None
            if mem is not None:
                self.samples.append((time.monotonic_ns(), mem))
            if self._stop.wait(self.every):
                return

    def stop(self, t0_ns):
        self._stop.set()
        self._thread.join()
        samples = [[round((t - t0_ns) / 1e9, 3), m] for t, m in self.samples]
        peak = max(samples, key=lambda p: p[1], default=(None, None))
        return {"every_s": self.every, "peak_pages": peak[1], "peak_t_s": peak[0],
                "samples": samples}


def all_processes():
    """{pid: (name, user seconds, system seconds)} of every process on the machine."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.index(b"(") + 1 : data.rindex(b")")].decode(errors="replace")
        fields = data[data.rindex(b")") + 2 :].split()
        out[int(name)] = (comm, int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)
    return out


def cpu_split(before, after, ours):
    """User and system seconds of the processes `ours` between two all_processes(), and
    the five other processes that took the most."""
    user = sum(after[p][1] - before[p][1] for p in ours if p in before and p in after)
    system = sum(after[p][2] - before[p][2] for p in ours if p in before and p in after)
    others = []
    for pid, (comm, u, st) in after.items():
        if pid in ours or pid == os.getpid():
            continue
        u0, s0 = before.get(pid, (comm, 0.0, 0.0))[1:]
        others.append((u + st - u0 - s0, comm, pid))
    others.sort(reverse=True)
    return {"user_s": user, "system_s": system,
            "others": [{"comm": c, "pid": p, "cpu_s": t} for t, c, p in others[:5] if t > 0],
            "others_s": sum(t for t, _c, _p in others)}


def machine_busy():
    """CPU seconds all CPUs spent busy (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, _steal = parts
    return (user + nice + system + irq + softirq) / CLK_TCK


def steal_seconds():
    with open("/proc/stat") as f:
        parts = f.readline().split()
    return int(parts[8]) / CLK_TCK


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


# ---------------------------------------------------------------- the deployment


class Worker:
    """One worker's control connection (it dialed us): one request line, one answer line."""

    def __init__(self, sock, pid):
        self.sock = sock
        self.pid = pid
        self.reader = sock.makefile("rb")

    def send(self, cmd):
        self.sock.sendall(cmd.encode() + b"\n")

    def answer(self):
        line = self.reader.readline()
        if not line:
            raise Abort(f"worker {self.pid} closed its control connection (died?)")
        return line.decode().strip()


class Deployment:
    """million_server.py under pygev.run (or, with --server floor, million_floor.c), and
    the control listener its workers dial."""

    def __init__(self, args, port):
        self.args = args
        self.port = port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        self.workers = []
        self.proc = None
        self.log_path = os.path.join(common.LOG_DIR, f"million-server{args.suffix}.log")

    def start(self, timeout=120.0):
        os.makedirs(common.LOG_DIR, exist_ok=True)
        common_args = ["--port", str(self.port),
                       "--control", f"127.0.0.1:{self.listener.getsockname()[1]}",
                       "--workers", str(self.args.workers)]
        if self.args.server == "floor":  # accept order only, raw TCP only
            cmd = [common.build_c(FLOOR), *common_args]
        else:
            cmd = [sys.executable, SERVER, *common_args]
            if self.args.ws:
                cmd.append("--ws")
            cmd += ["--order", self.args.hold_order]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=common.REPO, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                     start_new_session=True)
        self.listener.settimeout(1.0)
        deadline = time.monotonic() + timeout
        while len(self.workers) < self.args.workers:
            if time.monotonic() > deadline:
                raise Abort(f"only {len(self.workers)} of {self.args.workers} workers "
                            f"reported within {timeout:.0f} s; see {self.log_path}")
            if self.proc.poll() is not None:
                raise Abort(f"the deployment exited with {self.proc.returncode}; "
                            f"see {self.log_path}")
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            sock.settimeout(60.0)
            w = Worker(sock, 0)
            hello = w.answer()
            if not hello.startswith("HELLO "):
                raise Abort(f"unexpected greeting {hello!r}")
            w.pid = int(hello.split()[1])
            self.workers.append(w)
        self.workers.sort(key=lambda w: w.pid)

    def ask_all(self, cmd):
        """Sends cmd to every worker, then reads every answer (they work meanwhile)."""
        for w in self.workers:
            w.send(cmd)
        return [w.answer() for w in self.workers]

    def counts(self):
        return [int(a.split()[1]) for a in self.ask_all("COUNT")]

    def pids(self):
        """The supervisor first, then the workers (one process when --workers 1)."""
        pids = [self.proc.pid]
        pids += [w.pid for w in self.workers if w.pid != self.proc.pid]
        return pids

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGTERM)  # every worker drains and exits
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            log("the deployment did not stop within 90 s: SIGKILL to its process group")
        except ProcessLookupError:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for w in self.workers:
            w.sock.close()
        self.listener.close()
        self._log.close()


# ---------------------------------------------------------------- the clients


def source_addresses(first, count):
    """`count` loopback addresses 127.1.a.b from index `first` (b in 1..250)."""
    return [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(first, first + count)]


class Client:
    """One million_client process; its stdout lines are gathered by a thread."""

    def __init__(self, index, exe, args, port, n, rate):
        self.index = index
        self.n = n
        self.ramped = None
        self.received = None
        self.reports = queue.Queue()
        self.log_path = os.path.join(common.LOG_DIR, f"million-client{args.suffix}-{index}.log")
        self._log = open(self.log_path, "wb")
        sources = source_addresses(index * args.sources_per_client, args.sources_per_client)
        cmd = [exe, "-H", "127.0.0.1", "-p", str(port), "-n", str(n), "-S", ",".join(sources),
               "-r", f"{rate:.1f}", "-P", str(args.pending), "-t", str(args.connect_timeout),
               "-R", str(args.retries), "-M", "64"]
        if args.ws:
            cmd.append("-W")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, start_new_session=True)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for raw in self.proc.stdout:
            tag, _, body = raw.decode().partition(" ")
            if tag == "RAMPED":
                self.ramped = json.loads(body)
            elif tag == "RECEIVED":
                self.received = json.loads(body)
            elif tag == "REPORT":
                self.reports.put(json.loads(body))

    def command(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def report(self, t0_ns, timeout=30.0):
        self.command(f"REPORT {t0_ns}")
        try:
            return self.reports.get(timeout=timeout)
        except queue.Empty:
            raise Abort(f"client {self.index} did not report within {timeout:.0f} s") from None

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        self.proc.wait()
        self._log.close()


# ---------------------------------------------------------------- the run


class Run:
    def __init__(self, args):
        self.args = args
        self.deployment = None
        self.clients = []
        self.result = {"phases": {}, "timeline": [], "aborted": None}
        self.started = time.monotonic()
        self.deadline = self.started + args.timeout
        self.min_available = args.min_available * GIB

    def check(self, what):
        """Aborts when memory runs short, time is up, or a process died."""
        avail = meminfo()["MemAvailable"]
        if avail < self.min_available:
            raise Abort(f"MemAvailable {avail / GIB:.2f} GiB < {self.args.min_available} GiB "
                        f"during {what}")
        if time.monotonic() > self.deadline:
            raise Abort(f"--timeout {self.args.timeout:.0f} s reached during {what}")
        if self.deployment and self.deployment.proc.poll() is not None:
            raise Abort(f"the deployment exited ({self.deployment.proc.returncode}) during "
                        f"{what}; see {self.deployment.log_path}")
        for c in self.clients:
            if not c.alive():
                raise Abort(f"client {c.index} exited ({c.proc.returncode}) during {what}; "
                            f"see {c.log_path}")

    def snapshot(self, name, counts=None):
        d = self.deployment
        pids = d.pids()
        mem = {pid: memory_of(pid) for pid in pids}
        snap = {
            "t": time.monotonic() - self.started,
            "meminfo": meminfo(),
            "slab": slabinfo(),
            "sockstat": sockstat(),
            "listen": listen_drops(),
            "supervisor": mem[d.proc.pid],
            "workers": [{"pid": w.pid, **mem[w.pid]} for w in d.workers],
        }
        if counts is not None:
            for w, n in zip(snap["workers"], counts):
                w["held"] = n
        self.result["phases"][name] = snap
        return snap

    def run(self):
        a = self.args
        port = a.port or free_port()
        exe = common.build_c("benches/million_client.c")
        self.deployment = Deployment(a, port)
        log(f"starting {a.workers} worker(s) on 127.0.0.1:{port}"
            f"{' (WebSocket)' if a.ws else ''}"
            f"{' (the C FLOOR, not pygev)' if a.server == 'floor' else ''}")
        t = time.monotonic()
        self.deployment.start()
        log(f"  {a.workers} worker(s) serving after {time.monotonic() - t:.1f} s")
        time.sleep(a.settle)
        start = self.snapshot("start", self.deployment.counts())
        log(f"  start: workers' VmRSS {sum(w['VmRSS'] for w in start['workers']) / MIB:.0f} MiB "
            f"in all, {start['workers'][0]['VmRSS'] / MIB:.1f} MiB the first; "
            f"Slab {start['meminfo']['Slab'] / MIB:.0f} MiB")

        self.ramp(exe, port)
        time.sleep(a.settle)
        counts = self.deployment.counts()
        held = self.snapshot("held", counts)
        held["fds"] = [open_fds(w.pid) for w in self.deployment.workers]
        held["worker_stats"] = [json.loads(s.split(" ", 1)[1])
                                for s in self.deployment.ask_all("STAT")]
        log(f"  held: {sum(counts):,} connections; workers' VmRSS "
            f"{sum(w['VmRSS'] for w in held['workers']) / MIB:.0f} MiB; Slab "
            f"{held['meminfo']['Slab'] / MIB:.0f} MiB")

        self.idle()
        self.broadcast()
        self.snapshot("after_broadcast", self.deployment.counts())

    def ramp(self, exe, port):
        a = self.args
        per = a.clients_per_process
        sizes = [per] * (a.connections // per)
        if a.connections % per:
            sizes.append(a.connections % per)
        rate = a.rate / len(sizes)
        log(f"ramp: {len(sizes)} client processes, {a.connections:,} connections at "
            f"{a.rate:,.0f}/s in all")
        tcp0 = tcp_counters()
        t0 = time.monotonic()
        for i, n in enumerate(sizes):
            self.clients.append(Client(i, exe, a, port, n, rate))
        timeline = self.result["timeline"]
        last_log = last_change = t0
        last_held = -1
        while True:
            time.sleep(0.5)
            self.check("the ramp")
            counts = self.deployment.counts()
            held = sum(counts)
            now = time.monotonic()
            m = meminfo()
            timeline.append({"t": now - t0, "held": held, "max_worker": max(counts),
                             "mem_available": m["MemAvailable"], "slab": m["Slab"],
                             "tcp_mem_pages": sockstat().get("mem")})
            if held != last_held:
                last_held, last_change = held, now
            ramped = [c.ramped for c in self.clients]
            if now - last_log >= 5:
                last_log = now
                done = sum(1 for r in ramped if r)
                log(f"  {now - t0:6.1f} s: {held:,} held (busiest worker {max(counts):,}), "
                    f"{done}/{len(self.clients)} clients done, MemAvailable "
                    f"{m['MemAvailable'] / GIB:.1f} GiB, Slab {m['Slab'] / GIB:.2f} GiB")
            if all(ramped):
                established = sum(r["established"] for r in ramped)
                if held >= established or now - last_change > 30:
                    break
        self.result["ramp"] = {
            "clients": [c.ramped for c in self.clients],
            "seconds": time.monotonic() - t0,
            "processes": len(self.clients),
            "tcp": counter_deltas(tcp0, tcp_counters()),  # machine-wide, over the ramp
        }

    def idle(self):
        a = self.args
        pids = self.deployment.pids()
        clients = [c.proc.pid for c in self.clients]
        log(f"idle: CPU over {a.idle_window:.0f} s")
        time.sleep(a.settle)
        t0, s0, m0 = time.monotonic(), steal_seconds(), machine_busy()
        c0 = {p: cpu_seconds(p) for p in pids + clients}
        procs0 = all_processes()
        time.sleep(a.idle_window)
        t1, s1, m1 = time.monotonic(), steal_seconds(), machine_busy()
        c1 = {p: cpu_seconds(p) for p in pids + clients}
        procs1 = all_processes()
        self.check("the idle window")
        dt = t1 - t0
        per = {p: 100.0 * (c1[p] - c0[p]) / dt for p in pids}
        self.result["idle"] = {
            "window_s": dt,
            "deployment_pct": sum(per.values()),
            "supervisor_pct": per[self.deployment.proc.pid],
            "worker_pct": [per[w.pid] for w in self.deployment.workers],
            "clients_pct": sum(100.0 * (c1[p] - c0[p]) / dt for p in clients),
            "steal_pct": 100.0 * (s1 - s0) / dt,
            "machine_pct": 100.0 * (m1 - m0) / dt,
            "split": cpu_split(procs0, procs1, set(pids) | set(clients)),
        }

    def broadcast(self):
        a = self.args
        log("broadcast: 64 bytes to every connection")
        d = self.deployment
        pids, clients = d.pids(), [c.proc.pid for c in self.clients]
        cpu0 = ({p: cpu_seconds(p) for p in pids}, {p: cpu_seconds(p) for p in clients},
                machine_busy())
        procs0 = all_processes()
        tcp_mem = read_tcp_mem()
        tcp0 = tcp_counters()
        sampler = SockMemSampler().start()  # its first sample: just before the request
        t0 = time.monotonic_ns()
        try:
            for w in d.workers:
                w.send("BCAST")
            sent = []
            for w in d.workers:
                reply = w.answer().split()
                sent.append({"pid": w.pid, "sent": int(reply[1]),
                             "queued_s": (int(reply[2]) - t0) / 1e9})
            deadline = time.monotonic() + a.broadcast_timeout
            while time.monotonic() < deadline and not all(c.received for c in self.clients):
                self.check("the broadcast")
                time.sleep(0.05)
            wall = time.monotonic_ns() - t0
        finally:
            sock_mem = sampler.stop(t0)
        tcp1 = tcp_counters()
        cpu1 = ({p: cpu_seconds(p) for p in pids}, {p: cpu_seconds(p) for p in clients},
                machine_busy())
        procs1 = all_processes()
        reports = [c.report(t0) for c in self.clients]
        hist = {}
        for r in reports:
            for ms, n in r["ms"]:
                hist[ms] = hist.get(ms, 0) + n
        received = sum(r["received"] for r in reports)
        established = sum(r["established"] for r in reports)
        last = max((r["last_received_ns"] for r in reports if r["received"]), default=0)
        first = min((r["first_received_ns"] for r in reports if r["received"]), default=0)
        self.result["broadcast"] = {
            "sent": sent,
            "sent_total": sum(s["sent"] for s in sent),
            "queued_s_max": max(s["queued_s"] for s in sent),
            "received": received,
            "established": established,
            "bad": sum(r["bad"] for r in reports),
            "closed_by_server": sum(r["closed_by_server"] for r in reports),
            "first_s": (first - t0) / 1e9 if first else None,
            "last_s": (last - t0) / 1e9 if last else None,
            "percentiles_s": percentiles(hist, received),
            "hist_ms": sorted(hist.items()),
            "all_received": received == established and received > 0,
            # from the request until every client said it had all (or the timeout)
            "cpu_window_s": wall / 1e9,
            "cpu_deployment_s": sum(cpu1[0][p] - cpu0[0][p] for p in pids),
            "cpu_clients_s": sum(cpu1[1][p] - cpu0[1][p] for p in clients),
            "cpu_machine_s": cpu1[2] - cpu0[2],
            "workers_split": cpu_split(procs0, procs1, set(pids)),
            "clients_split": cpu_split(procs0, procs1, set(clients)),
            "others": cpu_split(procs0, procs1, set(pids) | set(clients)),
            # machine-wide, from the request until every client had it (or the timeout)
            "tcp": counter_deltas(tcp0, tcp1),
            "tcp_mem_pages": tcp_mem,
            "sock_mem": sock_mem,
        }

    def partial(self):
        """After an abort: the memory figures as far as the run got, if it had not taken
        them yet and the workers still answer."""
        d = self.deployment
        if "held" in self.result["phases"] or "start" not in self.result["phases"]:
            return
        if d is None or d.proc.poll() is not None:
            return
        for w in d.workers:
            w.sock.settimeout(10.0)
        self.snapshot("held", d.counts())

    def stop(self):
        for c in self.clients:
            c.stop()
        if self.deployment is not None:
            self.deployment.stop()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(hist, total):
    out = {}
    if not total:
        return out
    want = [50, 90, 99, 99.9, 100]
    acc = 0
    for ms, n in sorted(hist.items()):
        acc += n
        while want and acc >= total * want[0] / 100:
            out[f"p{want.pop(0):g}"] = (ms + 1) / 1000  # the bucket's upper edge
    return out


# ---------------------------------------------------------------- the report


def summarize(result, args):
    """The figures the targets are judged on, from the snapshots taken so far."""
    ph = result["phases"]
    s = {"connections_asked": args.connections, "workers": args.workers,
         "server": getattr(args, "server", "pygev"),  # runs before the option: pygev
         "mode": "websocket" if args.ws else "tcp",
         "hold_order": getattr(args, "hold_order", "hash")}  # runs before the option: hash
    tm = result.get("tcp_mem")
    if tm:
        s["tcp_mem_limits"] = tm["pages"]
        s["tcp_mem_set_by_run"] = tm["set_by_run"]
        s["tcp_mem_previous"] = tm["previous"]
    start, held = ph.get("start"), ph.get("held")
    if start and held:
        per_worker = []
        for w0, w1 in zip(start["workers"], held["workers"]):
            n = w1.get("held", 0)
            per_worker.append({
                "pid": w1["pid"], "held": n,
                "rss_start": w0["VmRSS"], "rss_held": w1["VmRSS"],
                "pss_start": w0.get("Pss"), "pss_held": w1.get("Pss"),
                "rss_anon_start": w0.get("RssAnon"), "rss_anon_held": w1.get("RssAnon"),
                "bytes_per_conn": (w1["VmRSS"] - w0["VmRSS"]) / n if n else None,
            })
        held_total = sum(w["held"] for w in per_worker)
        incr = [w["bytes_per_conn"] for w in per_worker if w["bytes_per_conn"] is not None]
        s.update({
            "held": held_total,
            "per_worker": per_worker,
            "bytes_per_conn_max": max(incr) if incr else None,
            "bytes_per_conn_mean": (sum(w["rss_held"] - w["rss_start"] for w in per_worker)
                                    / held_total) if held_total else None,
            "pss_bytes_per_conn": (sum(w["pss_held"] - w["pss_start"] for w in per_worker)
                                   / held_total) if held_total and per_worker[0]["pss_held"]
            else None,
            "rss_start_total": sum(w["rss_start"] for w in per_worker),
            "rss_total": sum(w["rss_held"] for w in per_worker),
            "pss_total": sum(w["pss_held"] or 0 for w in per_worker),
            "supervisor_rss": held["supervisor"]["VmRSS"],
            "slab_start": start["meminfo"]["Slab"],
            "slab_held": held["meminfo"]["Slab"],
            "slab_per_conn": (held["meminfo"]["Slab"] - start["meminfo"]["Slab"]) / held_total
            if held_total else None,
            "sunreclaim_per_conn": (held["meminfo"]["SUnreclaim"]
                                    - start["meminfo"]["SUnreclaim"]) / held_total
            if held_total else None,
            "mem_available_drop": start["meminfo"]["MemAvailable"]
            - held["meminfo"]["MemAvailable"],
            "slab_top": sorted(((k, held["slab"].get(k, 0) - start["slab"].get(k, 0))
                                for k in held["slab"]), key=lambda kv: -kv[1])[:8],
            "max_fds": max((f for f in held.get("fds", []) if f), default=None),
            "listen_overflows": held["listen"]["ListenOverflows"]
            - start["listen"]["ListenOverflows"],
            # /proc/net/sockstat's TCP mem: pages charged to TCP sockets, both ends
            "tcp_pages_start": start["sockstat"].get("mem"),
            "tcp_pages_held": held["sockstat"].get("mem"),
        })
    tl = result.get("timeline") or []
    ramp = result.get("ramp")
    if tl:
        # Over windows of 5 s at least: a sample is late when a busy worker answers late,
        # and a short window after a late one would count a burst that was not one.
        rates = []
        for i, a in enumerate(tl):
            b = next((b for b in tl[i + 1:] if b["t"] - a["t"] >= 5.0), None)
            if b is not None:
                rates.append((b["held"] - a["held"]) / (b["t"] - a["t"]))
        s["accepts_per_s_peak"] = max(rates, default=None)
        first = next((p for p in tl if p["held"] > 0), None)
        top = max(p["held"] for p in tl)
        last = next(p for p in tl if p["held"] >= top)
        if first and last["t"] > first["t"]:
            s["accepts_per_s_mean"] = top / (last["t"] - first["t"] + 0.5)
            s["ramp_s"] = last["t"]
    if any(p.get("tcp_mem_pages") is not None for p in tl):
        s["tcp_pages_ramp_peak"] = max(p.get("tcp_mem_pages") or 0 for p in tl)
    if ramp and "tcp" in ramp:
        s["tcp_counters_ramp"] = ramp["tcp"]
    if ramp:
        cl = [c for c in ramp["clients"] if c]
        s["client_established"] = sum(c["established"] for c in cl)
        s["client_given_up"] = sum(c["given_up"] for c in cl)
        s["client_failed_attempts"] = sum(c["failed_attempts"] for c in cl)
        errs = {}
        for c in cl:
            for k, v in c["errors"].items():
                errs[k] = errs.get(k, 0) + v
        s["client_errors"] = errs
    if "idle" in result:
        s["idle_cpu_pct"] = result["idle"]["deployment_pct"]
        s["idle_clients_pct"] = result["idle"]["clients_pct"]
        s["idle_steal_pct"] = result["idle"]["steal_pct"]
        wp = result["idle"]["worker_pct"]
        s["idle_worker_pct_mean"] = sum(wp) / len(wp)
        s["idle_worker_pct_max"] = max(wp)
        s["idle_supervisor_pct"] = result["idle"]["supervisor_pct"]
    if "broadcast" in result:
        b = result["broadcast"]
        s["broadcast_last_s"] = b["last_s"]
        s["broadcast_received"] = b["received"]
        s["broadcast_percentiles_s"] = b["percentiles_s"]
        s["broadcast_queued_s"] = b["queued_s_max"]
        if "tcp" in b:
            s["tcp_counters_broadcast"] = b["tcp"]
            s["tcp_pages_broadcast_peak"] = b["sock_mem"]["peak_pages"]
            s["tcp_pages_broadcast_peak_t_s"] = b["sock_mem"]["peak_t_s"]
    after = ph.get("after_broadcast")
    if after and held:
        s["rss_total_after_broadcast"] = sum(w["VmRSS"] for w in after["workers"])
    return s


def verdicts(s):
    out = {}
    if s.get("bytes_per_conn_max") is not None:
        out["held >= asked"] = s["held"] >= s["connections_asked"]
        out[f"<= {TARGETS['bytes_per_conn']} B/conn (every worker)"] = (
            s["bytes_per_conn_max"] <= TARGETS["bytes_per_conn"])
        out[f"<= {TARGETS['total_rss_gib']} GiB VmRSS in all"] = (
            s["rss_total"] <= TARGETS["total_rss_gib"] * GIB)
    if "idle_cpu_pct" in s:
        out[f"idle CPU < {TARGETS['idle_cpu_pct']:g}%"] = s["idle_cpu_pct"] < TARGETS[
            "idle_cpu_pct"]
    if s.get("broadcast_last_s") is not None:
        out[f"broadcast to all <= {TARGETS['broadcast_s']:g} s"] = (
            s["broadcast_last_s"] <= TARGETS["broadcast_s"]
            and s["broadcast_received"] >= s.get("held", 0))
    return out


def other_processes(split):
    """What the machine's other processes took (this is a shared machine)."""
    top = ", ".join(f"{o['comm']} {o['cpu_s']:.2f} s" for o in split["others"])
    return f"{split['others_s']:.2f} s in all ({top})"


def counters_text(d, moved_only=False):
    """TCP_SHOWN (always), or the other counters that moved."""
    keys = ([k for k in d if k not in TCP_SHOWN and d[k]] if moved_only
            else [k for k in TCP_SHOWN if k in d])
    return ", ".join(f"{k} {d[k]:,}{' ms' if k.endswith('Chrono') else ''}" for k in keys)


def pages_text(pages):
    return f"{pages:,} pages ({pages * PAGE_SIZE / MIB:,.1f} MiB)"


def table(s, result):
    rows = []

    def row(name, value):
        rows.append((name, value))

    floor = s.get("server") == "floor"
    if floor:
        row("server", "the C FLOOR (benches/peers/million_floor.c), NOT pygev: epoll, one "
            "plain write() of 64 B per connection in the broadcast")
    row("mode", f"{s['mode']}, {s['workers']} workers x 1 loop; the broadcast visits the "
        f"connections in {s['hold_order']} order")
    if s.get("tcp_mem_limits"):
        lim = s["tcp_mem_limits"]
        row("kernel tcp_mem (pages)",
            f"{' '.join(map(str, lim))}: pressure above {lim[1] * PAGE_SIZE / GIB:.2f} GiB, "
            f"max {lim[2] * PAGE_SIZE / GIB:.2f} GiB; "
            + (f"SET BY --tcp-mem for this run (was {' '.join(map(str, s['tcp_mem_previous']))})"
               if s["tcp_mem_set_by_run"] else "the machine's own"))
    if "held" in s:
        clients = (f" (clients: {s['client_established']:,} established, "
                   f"{s['client_given_up']:,} given up, "
                   f"{s['client_failed_attempts']:,} failed attempts "
                   f"{s['client_errors'] or ''})" if "client_established" in s else "")
        row("connections held", f"{s['held']:,} of {s['connections_asked']:,}{clients}")
        held = [w["held"] for w in s["per_worker"]]
        row("per worker", f"{min(held):,} to {max(held):,} connections; at most "
            f"{s['max_fds']} descriptors open" if s.get("max_fds") else
            f"{min(held):,} to {max(held):,} connections")
    if "accepts_per_s_mean" in s:
        row("accepts/s", f"{s['accepts_per_s_mean']:,.0f} mean over the ramp "
            f"({s['ramp_s']:.0f} s), {s['accepts_per_s_peak'] or 0:,.0f} at most over 5 s")
    if "rss_total" in s:
        pw = s["per_worker"]
        row("worker VmRSS at start", f"{min(w['rss_start'] for w in pw) / MIB:.1f} to "
            f"{max(w['rss_start'] for w in pw) / MIB:.1f} MiB "
            f"({s['rss_start_total'] / MIB:,.0f} MiB in all)")
        row("worker VmRSS held", f"{min(w['rss_held'] for w in pw) / MIB:.1f} to "
            f"{max(w['rss_held'] for w in pw) / MIB:.1f} MiB")
        row("VmRSS per connection", f"{s['bytes_per_conn_mean']:.0f} B mean, "
            f"{s['bytes_per_conn_max']:.0f} B the worst worker")
        if s.get("pss_bytes_per_conn") is not None:
            row("PSS per connection", f"{s['pss_bytes_per_conn']:.0f} B")
        row("total VmRSS (workers)", f"{s['rss_total'] / GIB:.3f} GiB "
            f"(PSS {s['pss_total'] / GIB:.3f} GiB; supervisor VmRSS "
            f"{s['supervisor_rss'] / MIB:.1f} MiB)")
        if "rss_total_after_broadcast" in s:
            row("total VmRSS after the broadcast",
                f"{s['rss_total_after_broadcast'] / GIB:.3f} GiB")
        row("kernel slab", f"{s['slab_start'] / GIB:.2f} -> {s['slab_held'] / GIB:.2f} GiB "
            f"({s['slab_per_conn']:,.0f} B per connection, both ends, of which "
            f"{s['sunreclaim_per_conn']:,.0f} B unreclaimable); MemAvailable fell "
            f"{s['mem_available_drop'] / GIB:.2f} GiB")
        row("slab caches grown", ", ".join(f"{k} {v / MIB:,.0f} MiB"
                                           for k, v in s["slab_top"] if v > 0))
        row("accept queue overflows", f"{s['listen_overflows']:,}")
        if s.get("tcp_pages_held") is not None:
            per = ((s["tcp_pages_held"] - s["tcp_pages_start"]) * PAGE_SIZE / s["held"]
                   if s["held"] else 0)
            peak = (f"; at most {s['tcp_pages_ramp_peak']:,} in the ramp"
                    if s.get("tcp_pages_ramp_peak") is not None else "")
            row("TCP socket memory (sockstat)", f"{pages_text(s['tcp_pages_held'])} held, "
                f"{per:,.0f} B per connection{peak}")
    if s.get("tcp_counters_ramp"):
        row("TCP counters over the ramp", counters_text(s["tcp_counters_ramp"]))
        if counters_text(s["tcp_counters_ramp"], moved_only=True):
            row("  and", counters_text(s["tcp_counters_ramp"], moved_only=True))
    if "idle_cpu_pct" in s:
        row("idle CPU (supervisor + workers)",
            f"{s['idle_cpu_pct']:.2f}% of a core over {result['idle']['window_s']:.0f} s "
            f"(clients {s['idle_clients_pct']:.2f}%, steal {s['idle_steal_pct']:.1f}%)")
        row("  per worker", f"{s['idle_worker_pct_mean']:.3f}% mean, "
            f"{s['idle_worker_pct_max']:.3f}% the busiest; supervisor "
            f"{s['idle_supervisor_pct']:.3f}%")
        row("  other processes", other_processes(result["idle"]["split"]))
    if s.get("broadcast_last_s") is not None:
        p = s["broadcast_percentiles_s"]
        row("broadcast, 64 B to every connection",
            f"last of {s['broadcast_received']:,} received after {s['broadcast_last_s']:.3f} s "
            f"(p50 {p.get('p50', 0):.3f} s, p99 {p.get('p99', 0):.3f} s; the workers had "
            f"{'written' if floor else 'queued'} every send after "
            f"{s['broadcast_queued_s']:.3f} s)")
        b = result["broadcast"]
        row("CPU during the broadcast",
            f"workers {b['cpu_deployment_s']:.2f} s, clients {b['cpu_clients_s']:.2f} s, "
            f"whole machine {b['cpu_machine_s']:.2f} s in {b['cpu_window_s']:.2f} s")
        ws, cs = b["workers_split"], b["clients_split"]
        row("  user / system", f"workers {ws['user_s']:.2f} / {ws['system_s']:.2f} s, clients "
            f"{cs['user_s']:.2f} / {cs['system_s']:.2f} s")
        row("  other processes", other_processes(b["others"]))
        if s.get("tcp_pages_broadcast_peak") is not None:
            lim, held = s.get("tcp_mem_limits"), s.get("tcp_pages_held")
            extra = []
            if held is not None and s.get("held"):
                extra.append(f"{(s['tcp_pages_broadcast_peak'] - held) / s['held']:.2f} "
                             f"pages per connection above the held state")
            if lim:
                extra.append(f"{100.0 * s['tcp_pages_broadcast_peak'] / lim[1]:.0f}% of the "
                             f"pressure mark")
            row("  TCP socket memory at most",
                f"{pages_text(s['tcp_pages_broadcast_peak'])} after "
                f"{max(0.0, s['tcp_pages_broadcast_peak_t_s']):.2f} s ({'; '.join(extra)}; sampled "
                f"every {b['sock_mem']['every_s'] * 1000:.0f} ms)")
        if s.get("tcp_counters_broadcast"):
            row("  TCP counters (machine-wide)", counters_text(s["tcp_counters_broadcast"]))
            if counters_text(s["tcp_counters_broadcast"], moved_only=True):
                row("  and", counters_text(s["tcp_counters_broadcast"], moved_only=True))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    label = "floor vs target" if floor else "target"  # the targets are pygev's
    for name, ok in verdicts(s).items():
        lines.append(f"{label.ljust(width)}  {'met' if ok else 'MISSED'}: {name}")
    return "\n".join(lines)


def plot(s, result, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        log("matplotlib not installed: no plot (pip install -r benches/requirements.txt)")
        return False
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    mode = "WebSocket" if s["mode"] == "websocket" else "TCP"
    server = ("C FLOOR (million_floor.c, not pygev)" if s.get("server") == "floor"
              else "pygev")
    fig.suptitle(f"{server}: {s.get('held', 0):,} {mode} connections, {s['workers']} workers")

    ax = axes[0][0]
    tl = result.get("timeline") or []
    if tl:
        ax.plot([p["t"] for p in tl], [p["held"] / 1e3 for p in tl], color="C0")
        ax.set_xlabel("seconds since the clients started")
        ax.set_ylabel("connections held (thousands)", color="C0")
        rates = [(b["t"], (b["held"] - a["held"]) / (b["t"] - a["t"]))
                 for a, b in zip(tl, tl[1:])]
        ax2 = ax.twinx()
        ax2.plot([r[0] for r in rates], [r[1] / 1e3 for r in rates], color="C1", lw=0.8)
        ax2.set_ylabel("accepts/s (thousands)", color="C1")
        ax.set_title("ramp")

    ax = axes[0][1]
    if "per_worker" in s:
        pw = s["per_worker"]
        xs = range(len(pw))
        ax.bar(xs, [w["bytes_per_conn"] or 0 for w in pw], color="C0", label="VmRSS")
        if pw[0]["pss_held"] is not None:
            ax.plot(xs, [(w["pss_held"] - w["pss_start"]) / w["held"] if w["held"] else 0
                         for w in pw], "k.", label="PSS")
        ax.axhline(TARGETS["bytes_per_conn"], color="red", ls="--", label="target")
        ax.set_xlabel("worker")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("bytes per connection above the worker's start")
        ax.set_title(f"memory per connection (total VmRSS {s['rss_total'] / GIB:.2f} GiB)")
        ax.legend(loc="lower right")

    ax = axes[1][0]
    b = result.get("broadcast")
    if b and b["received"]:
        acc, xs, ys = 0, [], []
        for ms, n in b["hist_ms"]:
            acc += n
            xs.append((ms + 1) / 1000)
            ys.append(100.0 * acc / b["established"])
        ax.step(xs, ys, where="post")
        ax.axvline(TARGETS["broadcast_s"], color="red", ls="--", label="target")
        ax.set_xlabel("seconds after the broadcast was asked for")
        ax.set_ylabel("% of connections that received it")
        ax.set_title(f"one 64-byte broadcast: last after {b['last_s']:.2f} s")
        ax.legend(loc="lower right")
        sm = b.get("sock_mem")
        if sm and sm["samples"]:
            ax2 = ax.twinx()
            ax2.plot([p[0] for p in sm["samples"]],
                     [p[1] * PAGE_SIZE / MIB for p in sm["samples"]], color="C1", lw=0.8)
            ax2.set_ylabel("TCP socket memory, MiB (sockstat)", color="C1")
            lim = b.get("tcp_mem_pages")
            if lim and lim[1] * PAGE_SIZE / MIB < 1.5 * ax2.get_ylim()[1]:
                ax2.axhline(lim[1] * PAGE_SIZE / MIB, color="C1", ls=":", lw=0.8)
                ax2.text(ax2.get_xlim()[1], lim[1] * PAGE_SIZE / MIB, "tcp_mem pressure ",
                         color="C1", ha="right", va="bottom", fontsize=7)
        if b.get("tcp"):
            t = b["tcp"]
            ax.text(0.02, 0.98, f"machine-wide: {t['RetransSegs']:,} retransmitted, "
                    f"{t['TCPTimeouts']:,} timeouts,\n{t['TCPMemoryPressures']:,} memory "
                    f"pressures ({t['TCPMemoryPressuresChrono']:,} ms), "
                    f"{t['PruneCalled']:,} prunes", transform=ax.transAxes, va="top",
                    fontsize=7)

    ax = axes[1][1]
    bars = []  # (label, value as a share of its target, what it says)
    if "bytes_per_conn_max" in s:
        bars.append(("VmRSS per connection\n(worst worker)",
                     s["bytes_per_conn_max"] / TARGETS["bytes_per_conn"],
                     f"{s['bytes_per_conn_max']:.0f} B / {TARGETS['bytes_per_conn']} B"))
        bars.append(("VmRSS of all workers", s["rss_total"] / (TARGETS["total_rss_gib"] * GIB),
                     f"{s['rss_total'] / GIB:.2f} GiB / {TARGETS['total_rss_gib']} GiB"))
    if "idle_cpu_pct" in s:
        bars.append(("idle CPU", s["idle_cpu_pct"] / TARGETS["idle_cpu_pct"],
                     f"{s['idle_cpu_pct']:.2f}% / {TARGETS['idle_cpu_pct']:g}% of a core"))
    if s.get("broadcast_last_s") is not None:
        bars.append(("broadcast to all", s["broadcast_last_s"] / TARGETS["broadcast_s"],
                     f"{s['broadcast_last_s']:.2f} s / {TARGETS['broadcast_s']:g} s"))
    ys = range(len(bars))
    ax.barh(ys, [b[1] for b in bars],
            color=["C2" if b[1] <= 1 else "C3" for b in bars])
    for y, b in zip(ys, bars):
        ax.text(b[1], y, " " + b[2], va="center", fontsize=8)
    ax.set_yticks(list(ys), [b[0] for b in bars])
    ax.invert_yaxis()
    ax.axvline(1.0, color="red", ls="--")
    ax.set_xlim(0, max([1.6, *(b[1] * 1.6 for b in bars)]))
    ax.set_xlabel("share of the target (1 = the target)")
    slab = s.get("slab_per_conn")
    ax.set_title("against the targets" + (f" (kernel slab {slab:,.0f} B per connection)"
                                          if slab else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def replot(path):
    """The table and the plot of a saved run, from its JSON (the figures it holds)."""
    with open(path) as f:
        saved = json.load(f)
    args = argparse.Namespace(**saved["args"])
    s = summarize(saved, args)
    text = table(s, saved)
    saved.update(summary=s, verdicts=verdicts(s), table=text)
    with open(path, "w") as f:
        json.dump(saved, f, indent=1)
    print(text)
    if saved.get("aborted"):
        print(f"aborted: {saved['aborted']}")
    png = os.path.splitext(path)[0] + ".png"
    if "held" in s and plot(s, saved, png):
        print(f"wrote {png}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--connections", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=None,
                    help="worker processes (default ceil(N / 19,000))")
    ap.add_argument("--ws", action="store_true", help="WebSocket connections")
    ap.add_argument("--clients-per-process", type=int, default=19_000)
    ap.add_argument("--sources-per-client", type=int, default=4,
                    help="loopback source addresses per client process")
    ap.add_argument("--rate", type=float, default=20_000,
                    help="connections opened per second, all clients together")
    ap.add_argument("--pending", type=int, default=64,
                    help="connects in progress at once per client")
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--retries", type=int, default=5)
    ap.add_argument("--port", type=int, default=0, help="the deployment's port (0: a free one)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds before each reading")
    ap.add_argument("--idle-window", type=float, default=20.0)
    ap.add_argument("--broadcast-timeout", type=float, default=60.0)
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds for the whole run")
    ap.add_argument("--min-available", type=float, default=2.0,
                    help="GiB of MemAvailable under which the run stops")
    ap.add_argument("--hold-order", choices=("hash", "accept"), default=None,
                    help="the order each worker's broadcast visits its connections in: a "
                         "set's (hash, the default) or a dict's (accept); the floor's is "
                         "accept")
    ap.add_argument("--server", choices=("pygev", "floor"), default="pygev",
                    help="the deployment: pygev (million_server.py, the default) or floor "
                         "(million_floor.c: a minimal C server, the broadcast's floor)")
    ap.add_argument("--tcp-mem", type=tcp_mem_arg, metavar="MIN,PRESSURE,MAX",
                    help="pages: write the KERNEL-WIDE /proc/sys/net/ipv4/tcp_mem for the run "
                         "and restore it at the end (root); by default it is left alone")
    ap.add_argument("--out", default=common.RESULTS_DIR)
    ap.add_argument("--replot", metavar="JSON",
                    help="print the table and draw the plot of a saved run again; run nothing")
    args = ap.parse_args()
    if args.replot:
        return replot(args.replot)
    if args.workers is None:
        args.workers = math.ceil(args.connections / 19_000)
    if args.server == "floor":
        if args.ws:
            raise SystemExit("--server floor is raw TCP only: no --ws")
        if args.hold_order == "hash":
            raise SystemExit("--server floor keeps its connections in accept order only")
        args.hold_order = "accept"
        args.suffix = "-floor"
    else:
        args.hold_order = args.hold_order or "hash"
        args.suffix = "-ws" if args.ws else ""
    hard = common.raise_nofile_limit()
    if args.clients_per_process + 32 > hard:
        raise SystemExit(f"--clients-per-process {args.clients_per_process} needs more "
                         f"descriptors than RLIMIT_NOFILE={hard}")
    per_worker = math.ceil(args.connections / args.workers)
    if per_worker + 64 > hard:
        raise SystemExit(f"{per_worker:,} connections per worker need more descriptors than "
                         f"RLIMIT_NOFILE={hard} allows: give more --workers")
    n_clients = math.ceil(args.connections / args.clients_per_process)
    if n_clients * args.sources_per_client > 250 * 256:
        raise SystemExit("too many source addresses")

    run = Run(args)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # not under nohup
        signal.signal(signal.SIGHUP, on_term)
    # Started in the background (`cmd &`), a script inherits SIGINT ignored: Ctrl+C (or
    # kill -INT) must still stop the run and everything it started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = datetime.datetime.now(datetime.timezone.utc)
    status = 0
    previous_tcp_mem = restore_tcp_mem = None
    if args.tcp_mem:
        previous_tcp_mem, restore_tcp_mem = set_tcp_mem(args.tcp_mem)
    run.result["tcp_mem"] = tcp_mem_record(previous_tcp_mem)
    try:
        run.run()
    except Abort as exc:
        run.result["aborted"] = str(exc)
        log(f"ABORTED: {exc}")
        status = 1
        try:
            run.partial()
        except (OSError, Abort, ValueError) as exc2:
            log(f"  no figures at the abort: {exc2}")
    except KeyboardInterrupt:
        run.result["aborted"] = "interrupted"
        log("interrupted")
        status = 130
        try:
            run.partial()
        except (OSError, Abort, ValueError, KeyboardInterrupt) as exc2:
            log(f"  no figures at the interruption: {exc2!r}")
    finally:
        # The snapshots hold every figure: every process started goes now, even on errors.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log("stopping the clients and the deployment")
        t = time.monotonic()
        run.stop()
        log(f"  stopped in {time.monotonic() - t:.1f} s")
        if restore_tcp_mem is not None:
            restore_tcp_mem()  # atexit too, should this be cut short
        signal.signal(signal.SIGINT, signal.default_int_handler)

    s = summarize(run.result, args)
    text = table(s, run.result) if "held" in s or "idle_cpu_pct" in s else "(no figures)"
    print()
    print(text)
    if run.result["aborted"]:
        print(f"aborted: {run.result['aborted']}")
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"million{args.suffix}")
    if args.connections < 1_000_000:
        stem += f"-{args.connections}"
    if args.server == "pygev" and args.hold_order != "hash":  # beside the default's results
        stem += f"-{args.hold_order}"
    result = {
        "benchmark": "million",
        "server": args.server,  # floor: million_floor.c, not pygev
        "started": started.isoformat(timespec="seconds"),
        "args": vars(args),
        "machine": common.machine_info(),
        "summary": s,
        "verdicts": verdicts(s),
        "table": text,
        **run.result,
    }
    for snap in result["phases"].values():  # keep the slab caches that moved only
        snap["slab"] = {k: v for k, v in snap["slab"].items() if v >= MIB}
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {stem}.json")
    if "held" in s and plot(s, run.result, stem + ".png"):
        print(f"wrote {stem}.png")
    return status


if __name__ == "__main__":
    sys.exit(main())

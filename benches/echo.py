#!/usr/bin/env python3
"""Echo benchmark: pygev against asyncio and uvloop, in one run.

A minimal C epoll echo server ("c", benches/peers/c_echo.c) runs too, as the
ceiling: what the load generator and the kernel allow on this machine.

Each server runs pinned to CPU 0 (`taskset -c 0`), the C load generator
(benches/loadgen.c) pinned to CPU 1. Rounds are interleaved: every round runs
every server once (in a rotated order), and the median over rounds is reported.

Tests:
  raw       "raw echo MiB/s":  50 connections, 4096-byte messages, 8 in flight each
  pingpong  "ping-pong msg/s": 100 connections, 64-byte messages, 1 in flight each
  framed    "length-prefix msg/s": 100 connections, 16 frames of 64 bytes in flight each
            (4-byte length + 60 bytes); every frame is one handler call. The servers run
            with --framing length (pygev.LengthPrefix parses in Rust; asyncio and uvloop
            parse in Python and write each data_received's replies at once).
  unix-raw  "unix raw echo MiB/s": the raw test over a Unix-domain socket (loadgen -U) instead
            of loopback TCP. pygev runs examples/echo.py --unix PATH, the others their
            own script with --unix PATH; servers without a Unix mode show n/a. The socket
            files live in a temporary directory, removed at exit.

For every run the server's CPU time (utime+stime from /proc/PID/stat, all
threads) is sampled exactly when the load generator's measured window starts
(its "START" line, printed after warmup) and ends (its result line), giving
server CPU % (of one core) and work per server CPU-second.

Writes benches/results/echo.json and benches/results/echo.png.
Usage: python benches/echo.py [--duration 5] [--warmup 1] [--rounds 3]
                              [--servers pygev,asyncio,uvloop,c] [--quick]
                              [--tests raw,pingpong,framed,unix-raw]
"""
from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
from common import ServerError, log, median

MIB = 1024 * 1024

TESTS = {
    "raw": {
        "title": "raw echo",
        "connections": 50, "size": 4096, "inflight": 8,
        "unit": "MiB/s", "per_cpu_unit": "MiB/CPU-s",
    },
    "pingpong": {
        "title": "ping-pong",
        "connections": 100, "size": 64, "inflight": 1,
        "unit": "msg/s", "per_cpu_unit": "msg/CPU-s",
    },
    # 64-byte frames (4-byte big-endian length + 60 bytes), each one on_message call: pygev
    # parses them in Rust (LengthPrefix), asyncio and uvloop in Python (--framing length).
    "framed": {
        "title": "length-prefix",
        "connections": 100, "size": 64, "inflight": 16,
        "unit": "msg/s", "per_cpu_unit": "msg/CPU-s",
        "framing": "length", "loadgen_args": ["-f", "4"],
    },
    # the raw test over a Unix-domain socket: no TCP/IP stack, only the servers' own costs
    # and the socket copies (servers without a Unix-socket mode are left out of it)
    "unix-raw": {
        "title": "unix raw echo",
        "connections": 50, "size": 4096, "inflight": 8,
        "unit": "MiB/s", "per_cpu_unit": "MiB/CPU-s",
        "transport": "unix",
    },
}

#: What this harness compares. benches/websocket.py runs the same harness with its own
#: suite (tests, servers, peers).
SUITE = {
    "name": "echo",
    "title": "echo benchmark",
    "servers": "pygev,asyncio,uvloop,c",
    "tests": "raw,pingpong,framed,unix-raw",
    "peers": ("uvloop", "asyncio", "pygev-plugin", "pygev-old"),
    "specs": lambda: common.server_specs(include_c=True),
}

SERVER_CPU = 0
LOADGEN_CPU = 1
CPUS = (SERVER_CPU, LOADGEN_CPU)


def run_loadgen(loadgen, server, test, duration, warmup, busy_poll=True):
    """One measured run against a running server; returns a result dict."""
    t = TESTS[test]
    where = (["-U", server.unix_path] if server.unix_path else
             ["-H", server.host, "-p", str(server.port)])
    cmd = common.pinned([
        loadgen, *where,
        "-c", str(t["connections"]), "-s", str(t["size"]), "-i", str(t["inflight"]),
        "-d", str(duration), "-w", str(warmup), *(["-b"] if busy_poll else []),
        *t.get("loadgen_args", []),
    ], LOADGEN_CPU)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cpu0 = cpu1 = lg0 = lg1 = None
    t0 = t1 = None
    result = None
    try:
        for line in proc.stdout:
            line = line.strip()
            if line == "START":
                t0 = time.monotonic()
                cpu0 = server.cpu_seconds()
                lg0 = common.proc_cpu_seconds(proc.pid)
                st0 = common.cpu_times(CPUS)
            elif line.startswith("{"):
                cpu1 = server.cpu_seconds() if server.alive() else None
                lg1 = common.proc_cpu_seconds(proc.pid)
                st1 = common.cpu_times(CPUS)
                t1 = time.monotonic()
                result = json.loads(line)
        proc.wait(timeout=duration + warmup + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().strip()
    proc.stderr.close()
    if result is None or cpu0 is None:
        why = f"loadgen exited with code {proc.returncode} without a result"
        if stderr:
            why += f": {stderr[-2000:]}"
        if not server.alive():
            why += f" (the server had exited with code {server.proc.returncode})"
        return {"failed": why}
    if cpu1 is None:
        return {"failed": f"server exited with code {server.proc.returncode} during the run"
                          + server.log_tail()}
    wall = t1 - t0
    secs = result["seconds"]
    cpu = cpu1 - cpu0
    lg = lg1 - lg0
    busy = sum(st1[c][0] - st0[c][0] for c in CPUS if c in st0 and c in st1)
    steal = sum(st1[c][1] - st0[c][1] for c in CPUS if c in st0 and c in st1)
    r = dict(result)
    r.update({
        "wall_seconds": wall,
        "server_cpu_seconds": cpu,
        "server_cpu_pct": 100.0 * cpu / wall if wall > 0 else float("nan"),
        "loadgen_cpu_pct": 100.0 * lg / wall if wall > 0 else float("nan"),
        # share of the window the load generator had work to do (100 = bottleneck)
        "loadgen_busy_pct": 100.0 * (1.0 - result["idle_seconds"] / secs) if secs > 0
        else float("nan"),
        # CPU time on the two benchmark CPUs used by anything else (other processes
        # on this shared machine), and time stolen by the hypervisor: noise.
        "other_cpu_pct": max(0.0, 100.0 * (busy - cpu - lg) / wall) if wall > 0 else 0.0,
        "steal_pct": 100.0 * steal / wall if wall > 0 else 0.0,
        "msg_per_s": result["messages"] / secs,
        "mib_per_s": result["bytes"] / MIB / secs,
        # work done in the window per CPU-second the server spent in that window
        "msg_per_cpu_s": result["messages"] / cpu if cpu > 0 else float("nan"),
        "mib_per_cpu_s": result["bytes"] / MIB / cpu if cpu > 0 else float("nan"),
    })
    if stderr:
        r["loadgen_stderr"] = stderr[-2000:]
    return r


def wait_quiet(max_wait, threshold):
    """Wait (up to max_wait s) until the benchmark CPUs are idle: less than
    threshold % of one CPU busy over one second. The server is idle meanwhile."""
    deadline = time.monotonic() + max_wait
    waited = False
    while True:
        a = common.cpu_times(CPUS)
        time.sleep(1.0)
        b = common.cpu_times(CPUS)
        busy = 100.0 * sum(b[c][0] - a[c][0] + b[c][1] - a[c][1] for c in CPUS if c in a)
        if busy <= threshold:
            if waited:
                log(f"  machine quiet again ({busy:.0f}% busy)")
            return True
        if time.monotonic() >= deadline:
            log(f"  machine still busy ({busy:.0f}% of a CPU) after {max_wait:g} s; "
                f"measuring anyway")
            return False
        if not waited:
            log(f"  machine busy ({busy:.0f}% of a CPU on CPUs {CPUS}); waiting up to "
                f"{max_wait:g} s for it to calm down")
            waited = True
        time.sleep(2.0)


def noise(r):
    """CPU % (of one CPU) taken on the benchmark CPUs by other processes or the hypervisor."""
    return r.get("other_cpu_pct", 0.0) + r.get("steal_pct", 0.0)


def throughput(test, r):
    return r["mib_per_s"] if TESTS[test]["unit"] == "MiB/s" else r["msg_per_s"]


def per_cpu(test, r):
    return r["mib_per_cpu_s"] if TESTS[test]["unit"] == "MiB/s" else r["msg_per_cpu_s"]


def mode(test):
    """What a test needs the server to run as: (framing, transport). One server process
    serves all the tests of one mode in a round."""
    t = TESTS[test]
    return t.get("framing", "raw"), t.get("transport", "tcp")


def counted(r):
    """Whether a run counts in the summary: it succeeded, it is the attempt kept, and the
    hypervisor did not steal more than --max-steal of a CPU during it."""
    return "failed" not in r and not r.get("discarded") and not r.get("stolen")


def ratio_pairs(servers):
    """The (numerator, denominator) servers whose paired ratios are computed and shown:
    SUITE["pairs"] when the suite names them, else pygev against each of SUITE["peers"]."""
    pairs = SUITE.get("pairs") or [("pygev", peer) for peer in SUITE["peers"]]
    return [(a, b) for a, b in pairs if a in servers and b in servers]


def summarize(runs, servers, tests):
    """Median (and min/max) per server and test over the successful rounds."""
    summary = {}
    for test in tests:
        for name in servers:
            rs = [r for r in runs if r["server"] == name and r["test"] == test and counted(r)]
            if not rs:
                continue
            errors = sum(r["errors"] for r in rs)
            tp = [throughput(test, r) for r in rs]
            pc = [per_cpu(test, r) for r in rs]
            summary.setdefault(test, {})[name] = {
                "rounds": len(rs),
                "throughput": median(tp), "throughput_min": min(tp), "throughput_max": max(tp),
                "unit": TESTS[test]["unit"],
                "server_cpu_pct": median([r["server_cpu_pct"] for r in rs]),
                "loadgen_cpu_pct": median([r["loadgen_cpu_pct"] for r in rs]),
                "loadgen_busy_pct": median([r["loadgen_busy_pct"] for r in rs]),
                "noise_pct": median([noise(r) for r in rs]),
                "steal_pct": median([r.get("steal_pct", 0.0) for r in rs]),
                "per_cpu_s": median(pc), "per_cpu_s_min": min(pc), "per_cpu_s_max": max(pc),
                "per_cpu_unit": TESTS[test]["per_cpu_unit"],
                "errors": errors,
            }
        # Ratios paired round by round: both servers ran minutes apart at most, so slow
        # drift of the machine's speed cancels out (the median of these is the headline).
        s = summary.get(test, {})
        for num, den in ratio_pairs(servers):
            if num not in s or den not in s:
                continue
            for key, fn in (("throughput", throughput), ("per_cpu_s", per_cpu)):
                ratios = []
                for rnd in sorted({r["round"] for r in runs}):
                    pair = {}
                    for r in runs:
                        if (r["test"] == test and r["round"] == rnd and counted(r)
                                and r["server"] in (num, den)):
                            pair[r["server"]] = fn(test, r)
                    if len(pair) == 2 and pair[den]:
                        ratios.append(pair[num] / pair[den])
                if ratios:
                    s[num].setdefault("paired", {}).setdefault(den, {})[key] = {
                        "median": median(ratios), "min": min(ratios), "max": max(ratios),
                        "rounds": len(ratios),
                    }
    return summary


def fmt(v):
    if v is None or v != v:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(summary, servers, tests, args):
    """Plain-text table: servers side by side, then the paired ratios (ratio_pairs)."""
    ratio_cols = ratio_pairs(servers)
    headers = ["test", "metric", *servers, *[f"{a}/{b}" for a, b in ratio_cols]]
    rows = []
    for test in tests:
        t = TESTS[test]
        label = (f"{t['title']} ({t['connections']}c x {t['size']}B x {t['inflight']})")
        s = summary.get(test, {})
        metrics = [
            (t["unit"], "throughput"),
            ("server CPU %", "server_cpu_pct"),
            (t["per_cpu_unit"], "per_cpu_s"),
            ("loadgen busy %", "loadgen_busy_pct"),
            ("noise CPU %", "noise_pct"),
            ("  of which steal %", "steal_pct"),
            ("errors", "errors"),
        ]
        for i, (mname, key) in enumerate(metrics):
            row = [label if i == 0 else "", mname]
            for name in servers:
                if name not in s:
                    row.append("n/a")
                elif key == "errors":
                    row.append(str(s[name]["errors"]) if s[name]["errors"] else "0")
                else:
                    row.append(fmt(s[name][key]))
            for a, b in ratio_cols:
                paired = s.get(a, {}).get("paired", {}).get(b, {}).get(key)
                if key in ("throughput", "per_cpu_s") and paired:
                    row.append(f"{paired['median']:.2f}x ({paired['min']:.2f}-{paired['max']:.2f})")
                else:
                    row.append("")
            rows.append(row)
        rows.append(None)
    widths = [max(len(h), *(len(r[i]) for r in rows if r)) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [
        f"{SUITE['title']}: median of {args.rounds} round(s), {args.duration:g} s measured "
        f"after {args.warmup:g} s warmup; server on CPU {SERVER_CPU}, loadgen on CPU {LOADGEN_CPU}",
        "ratios: median (min-max) of the per-round ratios, each round running every server "
        "back to back",
        line(headers), line(["-" * w for w in widths]),
    ]
    for r in rows[:-1]:
        out.append(line(r) if r else "")
    return "\n".join(out)


def plot(summary, servers, tests, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (pip install -r benches/requirements.txt)")
        return False
    colors = {"pygev": "#d62728", "asyncio": "#1f77b4", "uvloop": "#2ca02c", "gevent": "#9467bd",
              "c": "#7f7f7f"}
    fig, axes = plt.subplots(len(tests), 2, figsize=(10, 3.6 * len(tests)), squeeze=False)
    for row, test in enumerate(tests):
        t = TESTS[test]
        s = summary.get(test, {})
        names = [n for n in servers if n in s]
        for col, (key, unit, what) in enumerate([
            ("throughput", t["unit"], "throughput"),
            ("per_cpu_s", t["per_cpu_unit"], "per server CPU-second"),
        ]):
            ax = axes[row][col]
            vals = [s[n][key] for n in names]
            lo = [s[n][key] - s[n][key + "_min"] for n in names]
            hi = [s[n][key + "_max"] - s[n][key] for n in names]
            # variants (pygev-serve, uvloop-streams) take their family's color
            bars = ax.bar(names, vals, yerr=[lo, hi], capsize=4,
                          color=[colors.get(n, colors.get(n.split("-")[0], "gray"))
                                 for n in names])
            for n, b in zip(names, bars):
                label = fmt(s[n][key])
                if col == 0:
                    label += f"\nCPU {s[n]['server_cpu_pct']:.0f}%"
                ax.annotate(label, (b.get_x() + b.get_width() / 2, b.get_height()),
                            xytext=(0, 3), textcoords="offset points", ha="center",
                            va="bottom", fontsize=8)
            ax.set_title(f"{t['title']} ({t['connections']} conns, {t['size']} B, "
                         f"{t['inflight']} in flight): {what}", fontsize=9)
            ax.set_ylabel(unit)
            ax.margins(y=0.25)
    fig.suptitle(f"pygev {SUITE['title']} (median of rounds, bars show min-max; server pinned "
                 "to one core)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main():
    peers = ", ".join(SUITE["peers"]) or ", ".join(sorted({b for _, b in SUITE["pairs"]}))
    ap = argparse.ArgumentParser(description=f"{SUITE['title']}: pygev vs {peers}.")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="warmup seconds before measuring")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument("--servers", default=SUITE["servers"],
                    help=f"comma-separated subset of: {SUITE['servers']} (c is a minimal C "
                         "epoll echo server: the ceiling this machine and load generator allow)")
    ap.add_argument("--tests", default=SUITE["tests"],
                    help=f"comma-separated: {SUITE['tests']}")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 1 round, 1 s measured, 0.5 s warmup")
    ap.add_argument("--max-noise", type=float, default=10.0,
                    help="rerun a measurement when other processes (or the hypervisor) took "
                         "more than this CPU %% on the two benchmark CPUs")
    ap.add_argument("--retries", type=int, default=2, help="reruns of a noisy measurement")
    ap.add_argument("--max-steal", type=float, default=20.0,
                    help="leave out of the summary a kept run during which the hypervisor "
                         "stole more than this CPU %% (of one CPU) on the benchmark CPUs "
                         "(20 = 0.2 CPU-s/s); its round's ratios go with it")
    ap.add_argument("--wait-quiet", type=float, default=120.0,
                    help="before each measurement, wait up to this many seconds for the "
                         "benchmark CPUs to be idle (0 = do not wait)")
    ap.add_argument("--no-busy-poll", action="store_true",
                    help="let the load generator sleep in epoll_wait instead of busy-polling")
    ap.add_argument("--pause", type=float, default=0.5, help="seconds of rest between runs")
    ap.add_argument("--out", default=common.RESULTS_DIR, help="results directory")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 1.0, 0.5
        args.wait_quiet = min(args.wait_quiet, 10.0)
    tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    for t in tests:
        if t not in TESTS:
            raise SystemExit(f"unknown test {t!r}; known: {', '.join(TESTS)}")
    specs = common.select_specs(SUITE["specs"](), args.servers)
    if (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 CPUs; server and load generator will share a core")
    if not common.have_taskset():
        log("note: taskset not found; pinning with sched_setaffinity instead")

    loadgen = common.build_loadgen()
    os.makedirs(args.out, exist_ok=True)
    runs, skipped, server_info = [], {}, {}
    started = datetime.datetime.now(datetime.timezone.utc)
    # TCP before Unix socket, raw before framed
    modes = sorted({mode(t) for t in tests}, key=lambda m: (m[1] != "tcp", m[0] != "raw"))
    sockdir = None
    if any(transport == "unix" for _, transport in modes):
        sockdir = tempfile.mkdtemp(prefix=f"pygev-{SUITE['name']}-")
        atexit.register(shutil.rmtree, sockdir, ignore_errors=True)
    no_unix = set()  # servers without a Unix-socket mode (said once)
    for rnd in range(args.rounds):
        k = rnd % len(specs)
        order = specs[k:] + specs[:k]  # rotate so no server always goes first
        for spec, (framing, transport) in [(sp, m) for sp in order for m in modes]:
            if spec.name in skipped:
                continue
            group = [t for t in tests if mode(t) == (framing, transport)]
            run_spec = spec.framed(framing)
            log_name = f"{SUITE['name']}-{spec.name}-{framing}"
            if transport == "unix":
                run_spec = run_spec.on_unix(os.path.join(sockdir, f"{spec.name}.sock"))
                log_name += "-unix"
                if run_spec is None:
                    if spec.name not in no_unix:
                        no_unix.add(spec.name)
                        log(f"note: {spec.name} has no Unix-socket mode: not in "
                            f"{', '.join(group)}")
                    continue
            try:
                server = common.Server(run_spec, cpu=SERVER_CPU, log_name=log_name)
            except ServerError as exc:
                skipped[spec.name] = str(exc)
                log(f"SKIP {spec.name}: {exc}")
                continue
            info = server_info.setdefault(spec.name, {})
            info["command" if transport == "tcp" else "unix_command"] = " ".join(
                spec.command() if transport == "tcp" else run_spec.command())
            info["module"] = server.module_path
            try:
                for test in group:
                    attempts = []
                    for attempt in range(1 + args.retries):
                        time.sleep(args.pause + 3.0 * attempt)  # let a burst of load pass
                        if args.wait_quiet > 0:
                            wait_quiet(args.wait_quiet, args.max_noise)
                        r = run_loadgen(loadgen, server, test, args.duration, args.warmup,
                                        busy_poll=not args.no_busy_poll)
                        r.update({"server": spec.name, "test": test, "round": rnd + 1,
                                  "attempt": attempt + 1})
                        attempts.append(r)
                        if "failed" in r or noise(r) <= args.max_noise:
                            break
                        log(f"round {rnd + 1} {spec.name:8s} {test:8s} noisy: other load "
                            f"{r['other_cpu_pct']:.0f}% + steal {r['steal_pct']:.0f}% of a CPU"
                            + (", retrying" if attempt < args.retries else
                               ", keeping the least noisy attempt"))
                    if "failed" not in r:
                        r = min(attempts, key=noise)
                        if r["steal_pct"] > args.max_steal:
                            r["stolen"] = True
                            log(f"round {rnd + 1} {spec.name:8s} {test:8s} dropped: steal "
                                f"{r['steal_pct']:.0f}% of a CPU (over --max-steal "
                                f"{args.max_steal:g}%)")
                    for a in attempts:
                        if a is not r:
                            a["discarded"] = True
                    runs.extend(attempts)
                    if "failed" in r:
                        log(f"round {rnd + 1} {spec.name:8s} {test:8s} FAILED: {r['failed']}")
                        if not server.alive():
                            break
                        continue
                    log(f"round {rnd + 1} {spec.name:8s} {test:8s} "
                        f"{fmt(throughput(test, r)):>9s} {TESTS[test]['unit']:6s} "
                        f"server CPU {r['server_cpu_pct']:5.1f}%  "
                        f"{fmt(per_cpu(test, r)):>9s} {TESTS[test]['per_cpu_unit']}  "
                        f"loadgen busy {r['loadgen_busy_pct']:5.1f}%  noise {noise(r):4.1f}% "
                        f"(steal {r['steal_pct']:4.1f}%)  "
                        f"errors {r['errors']}")
                    if r["errors"]:
                        log(f"  ERROR: echo verification failed for {spec.name}:\n"
                            f"  {r.get('loadgen_stderr', '')}")
            finally:
                rc = server.stop()
                if rc not in (0, -2, 130, None):
                    log(f"  note: {spec.name} exited with code {rc}")

    names = [s.name for s in specs if s.name not in skipped]
    summary = summarize(runs, names, tests)
    text = table(summary, names, tests, args)
    print()
    print(text)
    for name, why in skipped.items():
        print(f"skipped {name}: {why.splitlines()[0]}")
    total_errors = sum(r.get("errors", 0) for r in runs)
    failed = [r for r in runs if "failed" in r]
    noisy = [r for r in runs if "failed" not in r and not r.get("discarded")
             and noise(r) > args.max_noise]
    if noisy:
        print(f"warning: {len(noisy)} kept run(s) had more than {args.max_noise:g}% CPU of "
              f"other load on the benchmark CPUs: the machine was busy; compare with care")
    stolen = [r for r in runs if r.get("stolen")]
    if stolen:
        which = ", ".join(f"round {r['round']} {r['server']} {r['test']}" for r in stolen)
        print(f"note: {len(stolen)} run(s) left out of the summary, the hypervisor having "
              f"stolen more than {args.max_steal:g}% of a CPU during them: {which}")
    if total_errors:
        print(f"ERROR: {total_errors} echo verification error(s); results are not valid")
    if failed:
        print(f"ERROR: {len(failed)} run(s) failed")

    data = {
        "benchmark": SUITE["name"],
        "started": started.isoformat(timespec="seconds"),
        "args": {"duration": args.duration, "warmup": args.warmup, "rounds": args.rounds,
                 "busy_poll": not args.no_busy_poll,
                 "max_noise": args.max_noise, "retries": args.retries,
                 "max_steal": args.max_steal,
                 "wait_quiet": args.wait_quiet,
                 "servers": [s.name for s in specs], "tests": tests},
        "tests": {k: v for k, v in TESTS.items() if k in tests},
        "pinning": {"server_cpu": SERVER_CPU, "loadgen_cpu": LOADGEN_CPU},
        "machine": common.machine_info(),
        "servers": server_info,
        "skipped": skipped,
        "runs": runs,
        "summary": summary,
        "table": text,
    }
    stem = SUITE["name"] + ("-quick" if args.quick else "")
    json_path = os.path.join(args.out, f"{stem}.json")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=2)
    png_path = os.path.join(args.out, f"{stem}.png")
    if summary and plot(summary, names, tests, png_path):
        print(f"wrote {json_path} and {png_path}")
    else:
        print(f"wrote {json_path}")
    return 1 if (total_errors or failed or not summary) else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Server CPU while connections idle: what keeping N quiet connections costs.

For each server: start it pinned to CPU 0, open N connections (default 19,000: a process
holds at most 20,000 descriptors here), each exchanging one message and then idling, wait
for the server to settle, then read its CPU time (utime + stime of all threads, from
/proc/PID/stat) over a quiet window. Reports server CPU in % of one core and in CPU
milliseconds per second per 10,000 connections. Rounds alternate the servers.

Servers (each with the same settings, so that old and new pygev compare like for like):
  pygev-raw        raw echo, idle_timeout=300 (the idle sweep's case; none fires in the window)
  pygev-ws         WebSocket echo, keepalive on (ping_interval=120: no ping in the window;
                   the old build walked every connection for its keepalive ticks anyway)
  pygev-old-raw / pygev-old-ws   the same from the baseline build (PYGEV_BASELINE, see
                   benches/build_baseline.sh)
  uvloop-raw       uvloop's echo, for reference (asyncio keeps no per-connection timer)

Writes benches/results/idle_cpu.json and benches/results/idle_cpu.png (with matplotlib).
Usage: python benches/idle_cpu.py [-n 19000] [--window 20] [--rounds 2] [--servers ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
from common import ServerSpec, log, median
from memory import open_idle_connections

SERVER = "benches/peers/pygev_idle_server.py"


def specs():
    here = [
        ServerSpec(
            "pygev-raw",
            SERVER,
            ["--mode", "raw"],
            "pygev",
            fallback_pythonpath=os.path.join(common.REPO, "python"),
        ),
        ServerSpec(
            "pygev-ws",
            SERVER,
            ["--mode", "ws"],
            "pygev",
            fallback_pythonpath=os.path.join(common.REPO, "python"),
        ),
        ServerSpec("uvloop-raw", "benches/peers/uvloop_echo.py", ["--port", "0"], "uvloop"),
    ]
    base = os.environ.get("PYGEV_BASELINE")
    if base:
        site = os.path.join(os.path.abspath(base), "site")
        # The server script is this revision's (it uses only what both builds have).
        here += [
            ServerSpec("pygev-old-raw", SERVER, ["--mode", "raw"], "pygev", pythonpath=site),
            ServerSpec("pygev-old-ws", SERVER, ["--mode", "ws"], "pygev", pythonpath=site),
        ]
    return here


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def measure(spec, n, window, settle):
    server = common.Server(spec, cpu=0)
    socks = []
    try:
        ws = spec.args[-1] == "ws"
        started = time.monotonic()
        socks = open_idle_connections(server.host, server.port, n, 500, websocket=ws)
        opened = time.monotonic() - started
        time.sleep(settle)
        t0, c0 = time.monotonic(), cpu_seconds(server.proc.pid)
        time.sleep(window)
        t1, c1 = time.monotonic(), cpu_seconds(server.proc.pid)
        pct = 100.0 * (c1 - c0) / (t1 - t0)
        return {
            "server": spec.name,
            "connections": len(socks),
            "open_s": opened,
            "cpu_pct": pct,
            "cpu_ms_per_s_per_10k": 10.0 * pct / (len(socks) / 10_000),
        }
    finally:
        for s in socks:
            s.close()
        server.stop()


def plot(summary, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot")
        return
    names = list(summary)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, [summary[n]["cpu_pct"] for n in names])
    ax.set_ylabel("server CPU, % of one core")
    ax.set_title("idle connections: server CPU")
    fig.tight_layout()
    fig.savefig(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=19_000, help="idle connections")
    ap.add_argument("--window", type=float, default=20.0, help="measured seconds")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds before measuring")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--servers", default=None, help="comma-separated subset")
    ap.add_argument("--out", default=common.RESULTS_DIR)
    args = ap.parse_args()
    chosen = specs()
    if args.servers:
        wanted = [s.strip() for s in args.servers.split(",")]
        chosen = [s for s in chosen if s.name in wanted]
    runs = []
    unavailable = set()
    for rnd in range(args.rounds):
        k = rnd % len(chosen)
        for spec in chosen[k:] + chosen[:k]:
            if spec.name in unavailable:
                continue
            try:
                r = measure(spec, args.n, args.window, args.settle)
            except common.ServerError as exc:
                log(f"{spec.name}: skipped ({exc})")
                unavailable.add(spec.name)
                continue
            r["round"] = rnd
            log(
                f"round {rnd} {spec.name}: {r['connections']} connections, "
                f"server CPU {r['cpu_pct']:.3f}% of a core"
            )
            runs.append(r)
    summary = {}
    for spec in chosen:
        rs = [r for r in runs if r["server"] == spec.name]
        if not rs:
            continue
        summary[spec.name] = {
            "cpu_pct": median([r["cpu_pct"] for r in rs]),
            "cpu_pct_min": min(r["cpu_pct"] for r in rs),
            "cpu_pct_max": max(r["cpu_pct"] for r in rs),
            "connections": rs[0]["connections"],
        }
    print(
        f"\nserver CPU with {args.n} idle connections, {args.window:.0f} s windows, "
        f"median of {args.rounds} rounds (min-max)"
    )
    print(f"{'server':<16} {'CPU % of a core':>22}")
    for name, s in summary.items():
        print(f"{name:<16} {s['cpu_pct']:>8.3f} ({s['cpu_pct_min']:.3f}-{s['cpu_pct_max']:.3f})")
    os.makedirs(args.out, exist_ok=True)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "args": vars(args),
        "runs": runs,
        "summary": summary,
    }
    with open(os.path.join(args.out, "idle_cpu.json"), "w") as f:
        json.dump(result, f, indent=2)
    plot(summary, os.path.join(args.out, "idle_cpu.png"))


if __name__ == "__main__":
    main()

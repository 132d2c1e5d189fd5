#!/usr/bin/env python3
"""Worker processes: length-prefix echo with 1 and 2 workers (pygev.run), in one run.

    python benches/workers.py [--rounds 5] [--duration 5] [--warmup 1]

Each round starts examples/echo.py --framing length --loops 1 --workers W on a fixed port
for W = 1 and 2 (in an order alternating from round to round) and drives it with the C load
generator (100 connections x 16 frames of 64 B in flight, 4-byte length prefix), nothing
pinned: the point is how messages/s scale with processes on this 2-core machine, where the
load generator takes a core's share too. Reports messages/s, the CPU of the whole
deployment (supervisor and workers, from /proc) and the machine's steal; the ratio is the
median of the per-round ratios 2 workers / 1 worker, with its range.

Writes benches/results/workers.json and benches/results/workers.png.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

ECHO = os.path.join(common.REPO, "examples", "echo.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_cpu(pid):
    """CPU seconds of `pid` and its children (the workers)."""
    total = 0.0
    for task in [pid, *children(pid)]:
        try:
            with open(f"/proc/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / common.CLK_TCK
        except OSError:
            pass
    return total


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def steal():
    with open("/proc/stat") as f:
        return int(f.readline().split()[8]) / common.CLK_TCK


def one(loadgen, workers, duration, warmup):
    port = free_port()
    command = [sys.executable, ECHO, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--framing", "length", "--loops", "1", "--workers", str(workers)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while (workers > 1 and len(children(server.pid)) < workers) or not _listening(port):
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not start")
            time.sleep(0.05)
        time.sleep(0.3)  # every worker bound
        args = [loadgen, "-H", "127.0.0.1", "-p", str(port), "-c", "100", "-s", "64"]
        args += ["-i", "16", "-f", "4", "-d", str(duration), "-w", str(warmup)]
        gen = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert gen.stdout is not None
        assert gen.stdout.readline().strip() == "START"
        cpu0, steal0, t0 = tree_cpu(server.pid), steal(), time.monotonic()
        result = json.loads(gen.stdout.read().strip().splitlines()[-1])
        cpu1, steal1, t1 = tree_cpu(server.pid), steal(), time.monotonic()
        gen.wait()
    finally:
        server.terminate()
        server.wait(30)
    seconds = result["seconds"]
    return {
        "workers": workers,
        "msg_s": result["messages"] / seconds,
        "server_cpu": (cpu1 - cpu0) / (t1 - t0),
        "steal": (steal1 - steal0) / (t1 - t0),
        "errors": result["errors"] + result["mismatches"],
    }


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--warmup", type=float, default=1)
    args = ap.parse_args()
    loadgen = common.build_loadgen() if hasattr(common, "build_loadgen") else None
    loadgen = loadgen or os.path.join(common.BUILD_DIR, "loadgen")
    if not os.path.exists(loadgen):
        os.makedirs(common.BUILD_DIR, exist_ok=True)
        src = os.path.join(common.BENCH_DIR, "loadgen.c")
        subprocess.check_call(["gcc", "-O2", "-o", loadgen, src, "-lssl", "-lcrypto"])
    runs = []
    for r in range(args.rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)
        got = {w: one(loadgen, w, args.duration, args.warmup) for w in order}
        for w in (1, 2):
            x = got[w]
            print(
                f"round {r + 1} workers={w}  {x['msg_s']:>12,.0f} msg/s  deployment CPU "
                f"{x['server_cpu']:.2f}  steal {x['steal']:.2f}  errors {x['errors']}",
                flush=True,
            )
        runs.append(got)
    ratios = [g[2]["msg_s"] / g[1]["msg_s"] for g in runs]
    med = {w: statistics.median(g[w]["msg_s"] for g in runs) for w in (1, 2)}
    cpu = {w: statistics.median(g[w]["server_cpu"] for g in runs) for w in (1, 2)}
    print()
    print("length-prefix echo, 100 conns x 16 x 64 B, nothing pinned (2 cores, loadgen included)")
    for w in (1, 2):
        print(f"  {w} worker(s): {med[w]:>12,.0f} msg/s, deployment CPU {cpu[w]:.2f} cores")
    print(
        f"  2 workers / 1 worker: {statistics.median(ratios):.2f}x "
        f"({min(ratios):.2f}-{max(ratios):.2f})"
    )
    os.makedirs(common.RESULTS_DIR, exist_ok=True)
    with open(os.path.join(common.RESULTS_DIR, "workers.json"), "w") as f:
        json.dump({"runs": runs, "ratios": ratios}, f, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(["1 worker", "2 workers"], [med[1], med[2]], color=["#888", "#2a7"])
    ax.set_ylabel("messages/s (median)")
    ax.set_title("pygev.run: length-prefix echo, 100 x 16 x 64 B")
    fig.tight_layout()
    fig.savefig(os.path.join(common.RESULTS_DIR, "workers.png"))


if __name__ == "__main__":
    main()

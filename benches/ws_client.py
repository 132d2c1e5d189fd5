#!/usr/bin/env python3
"""WebSocket client benchmark: pygev's client against picows's and websockets', in one run.

One server for every client: pygev's WebSocket echo server (examples/websocket_echo.py, one
loop, --no-compression) pinned to CPU 0. Each client is its own process
(benches/peers/ws_clients.py) pinned to CPU 1, so the client's CPU time is that process's
utime+stime (all threads; pygev's loop thread and its Python callback thread both count),
read from /proc/PID/stat when the client prints START (after its warmup) and STOP (the end
of its measured window). The figure of merit is messages (or MiB) per client CPU-second.

Rounds are interleaved: each round starts one server, then runs every test with every
client back to back (in an order rotated from round to round); the table shows medians over
rounds, and the ratios are medians of the per-round ratios (paired), with their min-max.

Tests:
  ping1    1 connection, 64 B binary messages, 1 in flight: ping-pong (the shape of picows's
           own benchmark, examples/echo_client_benchmark.py)
  c100x16  100 connections x 16 in flight, 64 B binary messages
  16k      10 connections x 4 in flight, 16 KiB binary messages: MiB/s (payload)

Clients (all without compression or keepalive pings; see benches/peers/ws_clients.py):
  pygev       pygev.Server(handler, None, num_loops=1) + server.connect("ws://..."), on_message
              returning the next message
  pygev-send  the same with on_message calling conn.send() (not run unless named)
  picows      picows.ws_connect on uvloop, on_ws_frame sending the next message
  websockets  websockets.asyncio.client.connect on asyncio, await recv() / await send()

Every echo is checked outside the measured window (during the warmup, and the outstanding
ones after it, which the client waits for): wrong, missing ("lost") and extra echoes, and
connections the server closed, are errors.

Writes benches/results/ws_client.json and benches/results/ws_client.png.
Usage: python benches/ws_client.py [--duration 5] [--warmup 1] [--rounds 5] [--quick]
                                   [--clients pygev,picows,websockets]
                                   [--tests ping1,c100x16,16k] [--max-steal 20]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import echo
from common import MIB, ServerError, ServerSpec, log, median

SERVER_CPU = 0
CLIENT_CPU = 1
CPUS = (SERVER_CPU, CLIENT_CPU)
CLIENT_SCRIPT = "benches/peers/ws_clients.py"
PYTHON_DIR = os.path.join(common.REPO, "python")

TESTS = {
    "ping1": {
        "title": "ping-pong",
        "connections": 1,
        "size": 64,
        "inflight": 1,
        "unit": "msg/s",
        "per_cpu_unit": "msg/client CPU-s",
    },
    "c100x16": {
        "title": "64 B, many in flight",
        "connections": 100,
        "size": 64,
        "inflight": 16,
        "unit": "msg/s",
        "per_cpu_unit": "msg/client CPU-s",
    },
    "16k": {
        "title": "16 KiB messages",
        "connections": 10,
        "size": 16384,
        "inflight": 4,
        "unit": "MiB/s",
        "per_cpu_unit": "MiB/client CPU-s",
    },
}

#: client name -> the module its process must import
CLIENTS = {
    "pygev": "pygev",
    "pygev-send": "pygev",
    "picows": "picows",
    "websockets": "websockets",
}
DEFAULT_CLIENTS = "pygev,picows,websockets"
BASELINES = ("picows", "websockets")

#: issue point 5: (test, metric, baseline, at least this ratio)
TARGETS = [
    ("ping1", "per_cpu", "picows", 1.5),
    ("ping1", "per_cpu", "websockets", 4.0),
    ("c100x16", "per_cpu", "picows", 1.5),
    ("c100x16", "per_cpu", "websockets", 4.0),
    ("16k", "throughput", "picows", 1.0),
]

SERVER = ServerSpec(
    "pygev-server",
    "examples/websocket_echo.py",
    ["--port", "0", "--loops", "1", "--no-compression"],
    "pygev",
    fallback_pythonpath=PYTHON_DIR,
)


def client_env(name):
    """The environment a client's process runs in (PYTHONPATH reaching its module), or a
    ServerError saying why it cannot run."""
    spec = ServerSpec(
        name,
        CLIENT_SCRIPT,
        requires=CLIENTS[name],
        fallback_pythonpath=PYTHON_DIR if CLIENTS[name] == "pygev" else None,
    )
    env, where = common.resolve_import(spec, dict(os.environ, PYTHONUNBUFFERED="1"))
    return env, where


def run_client(server, name, env, test, args):
    """One measured run of client `name` against the running server; returns a result dict."""
    t = TESTS[test]
    cmd = [
        sys.executable,
        os.path.join(common.REPO, CLIENT_SCRIPT),
        name,
        "--url",
        f"ws://{server.host}:{server.port}/",
        "-c",
        str(t["connections"]),
        "-s",
        str(t["size"]),
        "-i",
        str(t["inflight"]),
        "-d",
        str(args.duration),
        "-w",
        str(args.warmup),
    ]
    pin = not common.have_taskset()

    def preexec():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if pin:
            os.sched_setaffinity(0, {CLIENT_CPU})

    os.makedirs(common.LOG_DIR, exist_ok=True)
    log_path = os.path.join(common.LOG_DIR, f"ws_client-{name}-{test}.log")
    with open(log_path, "wb") as err:
        proc = subprocess.Popen(
            common.pinned(cmd, CLIENT_CPU),
            cwd=common.REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            preexec_fn=preexec,
            start_new_session=True,
        )
    lines: queue.Queue = queue.Queue()

    def drain():
        for line in proc.stdout:
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    # the client's own limits: 30 s to connect, 10 s to drain, 10 s to close
    launched = time.monotonic()
    deadline = launched + args.warmup + args.duration + 90
    marks, result, why = {}, None, None
    try:
        while result is None:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                stage = "its result" if "STOP" in marks else "STOP" if "START" in marks else "START"
                why = f"hung: no {stage} line {time.monotonic() - launched:.0f} s after its start"
                break
            if line is None:
                why = f"exited with code {proc.wait()} without a result"
                break
            if line in ("START", "STOP"):
                marks[line] = (
                    time.monotonic(),
                    common.proc_cpu_seconds(proc.pid),
                    server.cpu_seconds() if server.alive() else None,
                    common.cpu_times(CPUS),
                )
            elif line.startswith("{"):
                result = json.loads(line)
        if result is not None:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                result.setdefault("notes", []).append("did not exit within 30 s of its result")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if why is None and result.get("failed"):
        why = result["failed"]
    if why is None and ("START" not in marks or "STOP" not in marks):
        why = "no START or STOP line"
    if why is None and (marks["START"][2] is None or marks["STOP"][2] is None):
        why = f"the server exited with code {server.proc.returncode} during the run"
    if why is not None:
        tail = log_tail(log_path)
        if not server.alive():
            why += f" (the server had exited with code {server.proc.returncode})"
        return {"failed": why + tail, **({"client_result": result} if result else {})}
    (t0, c0, s0, st0), (t1, c1, s1, st1) = marks["START"], marks["STOP"]
    wall = t1 - t0
    secs = result["seconds"]
    cpu = c1 - c0
    scpu = s1 - s0
    busy = sum(st1[c][0] - st0[c][0] for c in CPUS if c in st0 and c in st1)
    steal = sum(st1[c][1] - st0[c][1] for c in CPUS if c in st0 and c in st1)
    mib = result["bytes"] / MIB
    r = dict(result)
    r.pop("notes", None)
    r.update(
        {
            "notes": result.get("notes", []),
            "wall_seconds": wall,
            "client_cpu_seconds": cpu,
            "client_cpu": cpu / wall if wall > 0 else float("nan"),  # in cores
            "server_cpu_seconds": scpu,
            "server_cpu": scpu / wall if wall > 0 else float("nan"),
            # CPU time on the two benchmark CPUs used by anything else, and steal: noise
            "other_cpu_pct": max(0.0, 100.0 * (busy - cpu - scpu) / wall) if wall > 0 else 0.0,
            "steal_pct": 100.0 * steal / wall if wall > 0 else 0.0,
            "msg_per_s": result["messages"] / secs if secs > 0 else float("nan"),
            "mib_per_s": mib / secs if secs > 0 else float("nan"),
            "msg_per_client_cpu_s": result["messages"] / cpu if cpu > 0 else float("nan"),
            "mib_per_client_cpu_s": mib / cpu if cpu > 0 else float("nan"),
            "all_errors": result["errors"] + result["lost"] + result["closed"],
        }
    )
    return r


def log_tail(path, n=10):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()[-n:]
    except OSError:
        return ""
    return ("\n    " + "\n    ".join(lines)) if lines else ""


def value(test, r, key):
    mib = TESTS[test]["unit"] == "MiB/s"
    if key == "throughput":
        return r["mib_per_s"] if mib else r["msg_per_s"]
    if key == "per_cpu":
        return r["mib_per_client_cpu_s"] if mib else r["msg_per_client_cpu_s"]
    return r[key]


def counted(r):
    return "failed" not in r and not r.get("discarded") and not r.get("stolen")


def pairs(clients):
    return [(a, b) for a in clients if a.startswith("pygev") for b in BASELINES if b in clients]


def summarize(runs, clients, tests):
    summary = {}
    for test in tests:
        s = summary.setdefault(test, {})
        for name in clients:
            rs = [r for r in runs if r["client"] == name and r["test"] == test and counted(r)]
            if not rs:
                continue
            entry = {"rounds": len(rs)}
            for key in ("throughput", "per_cpu"):
                vals = [value(test, r, key) for r in rs]
                entry.update({key: median(vals), key + "_min": min(vals), key + "_max": max(vals)})
            for key in ("client_cpu", "server_cpu"):
                entry[key] = median([r[key] for r in rs])
            entry["noise_pct"] = median([echo.noise(r) for r in rs])
            entry["steal_pct"] = median([r["steal_pct"] for r in rs])
            entry["errors"] = sum(r["all_errors"] for r in rs)
            s[name] = entry
        # ratios paired round by round (both clients ran a minute apart at most)
        for num, den in pairs(clients):
            if num not in s or den not in s:
                continue
            for key in ("throughput", "per_cpu"):
                ratios = []
                for rnd in sorted({r["round"] for r in runs}):
                    got = {
                        r["client"]: value(test, r, key)
                        for r in runs
                        if r["test"] == test
                        and r["round"] == rnd
                        and counted(r)
                        and r["client"] in (num, den)
                    }
                    if len(got) == 2 and got[den]:
                        ratios.append(got[num] / got[den])
                if ratios:
                    s[num].setdefault("paired", {}).setdefault(den, {})[key] = {
                        "median": median(ratios),
                        "min": min(ratios),
                        "max": max(ratios),
                        "rounds": len(ratios),
                    }
    return summary


def paired(summary, test, num, den, key):
    return summary.get(test, {}).get(num, {}).get("paired", {}).get(den, {}).get(key)


def table(summary, clients, tests, args):
    fmt = echo.fmt
    ratio_cols = pairs(clients)
    headers = ["test", "metric", *clients, *[f"{a}/{b}" for a, b in ratio_cols]]
    rows = []
    for test in tests:
        t = TESTS[test]
        label = f"{test}: {t['connections']}c x {t['size']} B x {t['inflight']}"
        s = summary.get(test, {})
        metrics = [
            (t["unit"], "throughput"),
            ("client CPU (cores)", "client_cpu"),
            (t["per_cpu_unit"], "per_cpu"),
            ("server CPU (cores)", "server_cpu"),
            ("noise CPU %", "noise_pct"),
            ("  of which steal %", "steal_pct"),
            ("errors", "errors"),
        ]
        for i, (mname, key) in enumerate(metrics):
            row = [label if i == 0 else "", mname]
            for name in clients:
                if name not in s:
                    row.append("n/a")
                elif key == "errors":
                    row.append(str(s[name]["errors"]))
                else:
                    row.append(fmt(s[name][key]))
            for a, b in ratio_cols:
                p = paired(summary, test, a, b, key) if key in ("throughput", "per_cpu") else None
                row.append(f"{p['median']:.2f}x ({p['min']:.2f}-{p['max']:.2f})" if p else "")
            rows.append(row)
        rows.append(None)
    widths = [max(len(h), *(len(r[i]) for r in rows if r)) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [
        f"WebSocket client benchmark: median of {args.rounds} round(s), {args.duration:g} s "
        f"measured after {args.warmup:g} s warmup; server (pygev, examples/websocket_echo.py, "
        f"1 loop) on CPU {SERVER_CPU}, each client on CPU {CLIENT_CPU}",
        "ratios: median (min-max) of the per-round ratios, each round running every client "
        "back to back against the same server",
        line(headers),
        line(["-" * w for w in widths]),
    ]
    for r in rows[:-1]:
        out.append(line(r) if r else "")
    checks = []
    for test, key, den, want in TARGETS:
        if test not in tests:
            continue
        what = TESTS[test]["unit"] if key == "throughput" else TESTS[test]["per_cpu_unit"]
        for num in clients:
            if not num.startswith("pygev") or den not in clients:
                continue
            p = paired(summary, test, num, den, key)
            got = f"{p['median']:.2f}x" if p else "n/a"
            verdict = "n/a" if not p else ("met" if p["median"] >= want else "NOT met")
            checks.append(f"  {test:8s} {what:17s} {num}/{den}: {got} (>= {want:g}x): {verdict}")
    if checks:
        out += ["", "targets (issue point 5), on the median of the paired ratios:", *checks]
    return "\n".join(out)


def plot(summary, clients, tests, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (pip install -r benches/requirements.txt)")
        return False
    colors = {
        "pygev": "#d62728",
        "pygev-send": "#ff9896",
        "picows": "#2ca02c",
        "websockets": "#1f77b4",
    }
    fig, axes = plt.subplots(len(tests), 2, figsize=(10, 3.6 * len(tests)), squeeze=False)
    for row, test in enumerate(tests):
        t = TESTS[test]
        s = summary.get(test, {})
        names = [n for n in clients if n in s]
        for col, (key, unit, what) in enumerate(
            [
                ("throughput", t["unit"], "throughput"),
                ("per_cpu", t["per_cpu_unit"], "per client CPU-second"),
            ]
        ):
            ax = axes[row][col]
            vals = [s[n][key] for n in names]
            lo = [s[n][key] - s[n][key + "_min"] for n in names]
            hi = [s[n][key + "_max"] - s[n][key] for n in names]
            bars = ax.bar(
                names, vals, yerr=[lo, hi], capsize=4, color=[colors.get(n, "gray") for n in names]
            )
            for n, b in zip(names, bars):
                label = echo.fmt(s[n][key])
                if col == 0:
                    label += f"\nclient CPU {s[n]['client_cpu']:.2f}"
                ax.annotate(
                    label,
                    (b.get_x() + b.get_width() / 2, b.get_height()),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
            ax.set_title(
                f"{test} ({t['connections']} conns, {t['size']} B, {t['inflight']} in flight): "
                f"{what}",
                fontsize=9,
            )
            ax.set_ylabel(unit)
            ax.margins(y=0.25)
    fig.suptitle(
        "pygev WebSocket client benchmark (median of rounds, bars show min-max; server and "
        "client pinned to one core each)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def start_server():
    server = common.Server(SERVER, cpu=SERVER_CPU, log_name="ws_client-server")
    if server.host is None:
        server.stop()
        raise ServerError("the echo server did not listen on TCP")
    return server


def main():
    ap = argparse.ArgumentParser(
        description="WebSocket client benchmark: pygev's client vs picows and websockets."
    )
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="warmup seconds before measuring")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    ap.add_argument(
        "--clients",
        default=DEFAULT_CLIENTS,
        help=f"comma-separated subset of: {', '.join(CLIENTS)} (default {DEFAULT_CLIENTS})",
    )
    ap.add_argument("--tests", default=",".join(TESTS), help=f"comma-separated: {','.join(TESTS)}")
    ap.add_argument(
        "--quick", action="store_true", help="smoke test: 1 round, 1 s measured, 0.5 s warmup"
    )
    ap.add_argument(
        "--max-noise",
        type=float,
        default=10.0,
        help="rerun a measurement when other processes (or the hypervisor) took more than "
        "this CPU %% on the two benchmark CPUs",
    )
    ap.add_argument("--retries", type=int, default=2, help="reruns of a noisy measurement")
    ap.add_argument(
        "--max-steal",
        type=float,
        default=20.0,
        help="leave out of the summary a kept run during which the hypervisor stole more "
        "than this CPU %% (of one CPU) on the benchmark CPUs; its round's ratios go with it",
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=120.0,
        help="before each measurement, wait up to this many seconds for the benchmark CPUs "
        "to be idle (0 = do not wait)",
    )
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
    wanted = [c.strip() for c in args.clients.split(",") if c.strip()]
    for c in wanted:
        if c not in CLIENTS:
            raise SystemExit(f"unknown client {c!r}; known: {', '.join(CLIENTS)}")
    if (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 CPUs; server and client will share a core")
    if not common.have_taskset():
        log("note: taskset not found; pinning with sched_setaffinity instead")

    envs, skipped, modules = {}, {}, {}
    for name in wanted:
        try:
            envs[name], modules[name] = client_env(name)
        except ServerError as exc:
            skipped[name] = str(exc)
            log(f"SKIP {name}: {exc}")
    clients = [c for c in wanted if c in envs]
    if not clients:
        raise SystemExit("no client can run")
    os.makedirs(args.out, exist_ok=True)
    runs, versions = [], {}
    started = datetime.datetime.now(datetime.timezone.utc)
    server = None
    try:
        for rnd in range(args.rounds):
            if server is None or not server.alive():
                server = start_server()
            k = rnd % len(clients)
            order = clients[k:] + clients[:k]  # rotate so no client always goes first
            for test in tests:
                for name in order:
                    attempts = []
                    for attempt in range(1 + args.retries):
                        time.sleep(args.pause + 3.0 * attempt)  # let a burst of load pass
                        if args.wait_quiet > 0:
                            echo.wait_quiet(args.wait_quiet, args.max_noise)
                        if not server.alive():
                            log(
                                f"  the server had exited (code {server.proc.returncode}); "
                                f"restarting it{server.log_tail()}"
                            )
                            server = start_server()
                        r = run_client(server, name, envs[name], test, args)
                        r.update(
                            {"client": name, "test": test, "round": rnd + 1, "attempt": attempt + 1}
                        )
                        attempts.append(r)
                        if "failed" in r or echo.noise(r) <= args.max_noise:
                            break
                        log(
                            f"round {rnd + 1} {name:10s} {test:8s} noisy: other load "
                            f"{r['other_cpu_pct']:.0f}% + steal {r['steal_pct']:.0f}% of a CPU"
                            + (
                                ", retrying"
                                if attempt < args.retries
                                else ", keeping the least noisy attempt"
                            )
                        )
                    if "failed" not in r:
                        r = min(attempts, key=echo.noise)
                        versions[name] = r.get("version")
                        if r["steal_pct"] > args.max_steal:
                            r["stolen"] = True
                            log(
                                f"round {rnd + 1} {name:10s} {test:8s} dropped: steal "
                                f"{r['steal_pct']:.0f}% of a CPU (over --max-steal "
                                f"{args.max_steal:g}%)"
                            )
                    for a in attempts:
                        if a is not r:
                            a["discarded"] = True
                    runs.extend(attempts)
                    if "failed" in r:
                        log(f"round {rnd + 1} {name:10s} {test:8s} FAILED: {r['failed']}")
                        continue
                    unit, pcu = TESTS[test]["unit"], TESTS[test]["per_cpu_unit"]
                    log(
                        f"round {rnd + 1} {name:10s} {test:8s} "
                        f"{echo.fmt(value(test, r, 'throughput')):>9s} {unit:6s} "
                        f"client CPU {r['client_cpu']:4.2f}  "
                        f"{echo.fmt(value(test, r, 'per_cpu')):>9s} {pcu}  "
                        f"server CPU {r['server_cpu']:4.2f}  noise {echo.noise(r):4.1f}% "
                        f"(steal {r['steal_pct']:4.1f}%)  errors {r['errors']} "
                        f"lost {r['lost']} closed {r['closed']}"
                    )
                    if r["all_errors"]:
                        log(f"  ERROR: {name}: {'; '.join(r.get('notes', []))}")
            server.stop()
            server = None
    finally:
        if server is not None:
            server.stop()

    summary = summarize(runs, clients, tests)
    text = table(summary, clients, tests, args)
    print()
    print(text)
    for name, why in skipped.items():
        print(f"skipped {name}: {why.splitlines()[0]}")
    total_errors = sum(r.get("all_errors", 0) for r in runs)
    failed = [r for r in runs if "failed" in r]
    noisy = [
        r
        for r in runs
        if "failed" not in r and not r.get("discarded") and echo.noise(r) > args.max_noise
    ]
    if noisy:
        print(
            f"warning: {len(noisy)} kept run(s) had more than {args.max_noise:g}% CPU of "
            f"other load on the benchmark CPUs: the machine was busy; compare with care"
        )
    stolen = [r for r in runs if r.get("stolen")]
    if stolen:
        which = ", ".join(f"round {r['round']} {r['client']} {r['test']}" for r in stolen)
        print(
            f"note: {len(stolen)} run(s) left out of the summary, the hypervisor having "
            f"stolen more than {args.max_steal:g}% of a CPU during them: {which}"
        )
    if total_errors:
        print(f"ERROR: {total_errors} echo error(s) (wrong, lost or closed); results not valid")
    if failed:
        print(f"ERROR: {len(failed)} run(s) failed")
        for r in failed:
            print(f"  round {r['round']} {r['client']} {r['test']}: {r['failed']}")

    data = {
        "benchmark": "ws_client",
        "started": started.isoformat(timespec="seconds"),
        "args": {
            "duration": args.duration,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "max_noise": args.max_noise,
            "retries": args.retries,
            "max_steal": args.max_steal,
            "wait_quiet": args.wait_quiet,
            "clients": clients,
            "tests": tests,
        },
        "tests": {k: v for k, v in TESTS.items() if k in tests},
        "pinning": {"server_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU},
        "machine": common.machine_info(),
        "server": " ".join(SERVER.command()),
        "clients": {n: {"module": modules.get(n), "version": versions.get(n)} for n in clients},
        "skipped": skipped,
        "runs": runs,
        "summary": summary,
        "table": text,
    }
    stem = "ws_client" + ("-quick" if args.quick else "")
    json_path = os.path.join(args.out, f"{stem}.json")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=2)
    png_path = os.path.join(args.out, f"{stem}.png")
    if summary and any(summary.values()) and plot(summary, clients, tests, png_path):
        print(f"wrote {json_path} and {png_path}")
    else:
        print(f"wrote {json_path}")
    return 1 if (total_errors or failed or not any(summary.values())) else 0


if __name__ == "__main__":
    sys.exit(main())

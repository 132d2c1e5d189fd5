"""Shared helpers for the pygev benchmark harness (echo.py, memory.py).

Starting and stopping the servers under test, reading their CPU time and RSS
from /proc, and building the C load generator.
"""
from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
BUILD_DIR = os.path.join(BENCH_DIR, "build")
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
LOG_DIR = os.path.join(RESULTS_DIR, "logs")
PEERS_DIR = os.path.join(BENCH_DIR, "peers")

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024

LISTEN_RE = re.compile(r"listening on\s+\[?([^\s\]]*)\]?:(\d+)")
UNIX_LISTEN_RE = re.compile(r"listening on\s+unix:(\S+)")


@dataclass
class ServerSpec:
    name: str
    script: str  # path relative to the repo root
    args: list = field(default_factory=list)
    requires: str | None = None  # a module the server's interpreter must import
    compiled: bool = False  # script is a C source, built into benches/build/
    # tried when `requires` does not import as installed: an in-place build
    # (maturin develop puts pygev/_pygev*.so into python/pygev/)
    fallback_pythonpath: str | None = None
    # put first on the server's PYTHONPATH (a baseline build of pygev, see below)
    pythonpath: str | None = None
    # the script that serves on a Unix socket: it takes `--unix PATH` in place of
    # `--port N` (see on_unix); None: this server has no Unix-socket mode
    unix_script: str | None = None

    def framed(self, framing):
        """This server in the given framing mode ("raw" or "length"). A compiled server
        echoes bytes unchanged, which is a valid length-prefix echo too."""
        if framing == "raw" or self.compiled:
            return self
        return replace(self, args=[*self.args, "--framing", framing])

    def on_unix(self, path):
        """This server listening on the Unix socket `path` instead of a TCP port: its
        unix_script with `--unix PATH` in place of `--port N`; None without a Unix mode."""
        if self.unix_script is None:
            return None
        args = list(self.args)
        i = args.index("--port")
        args[i:i + 2] = ["--unix", path]
        return replace(self, script=self.unix_script, args=args)

    def command(self):
        if self.compiled:
            return [build_c(self.script), *self.args]
        return [sys.executable, self.script, *self.args]


def server_specs(include_gevent=False, include_c=False):
    """The servers under test, in display order."""
    specs = [
        ServerSpec("pygev", "examples/echo.py", ["--port", "0", "--loops", "1", "--stats"], "pygev",
                   fallback_pythonpath=os.path.join(REPO, "python"),
                   unix_script="examples/echo.py"),
        ServerSpec("asyncio", "benches/peers/asyncio_echo.py", ["--port", "0"],
                   unix_script="benches/peers/asyncio_echo.py"),
        ServerSpec("uvloop", "benches/peers/uvloop_echo.py", ["--port", "0"], "uvloop",
                   unix_script="benches/peers/uvloop_echo.py"),
    ]
    if include_gevent:
        specs.append(
            ServerSpec("gevent", "benches/peers/gevent_echo.py", ["--port", "0"], "gevent"))
    if include_c:
        specs += extra_specs()
    return specs


def extra_specs():
    """Servers that run only when asked for by name."""
    return [
        # a minimal C epoll echo server: the ceiling the load generator can drive
        ServerSpec("c", "benches/peers/c_echo.c", ["--port", "0"], compiled=True,
                   unix_script="benches/peers/c_echo.c"),
        # pygev with its length-prefix framing built as a Rust plugin (C ABI parity);
        # the same as pygev in the raw tests
        ServerSpec("pygev-plugin", "examples/echo.py",
                   ["--port", "0", "--loops", "1", "--stats", "--plugin"], "pygev",
                   fallback_pythonpath=os.path.join(REPO, "python")),
        # the same echo inside an asyncio loop (await server.serve(); add --uvloop for
        # uvloop), against pygev's start() for the cost of the asyncio driver
        ServerSpec("pygev-serve", "examples/asyncio_echo.py",
                   ["--port", "0", "--loops", "1", "--report", "3600"], "pygev",
                   fallback_pythonpath=os.path.join(REPO, "python")),
        # the same pygev server, built from an older revision (PYGEV_BASELINE)
        *baseline_spec("pygev-old", "examples/echo.py", ["--port", "0", "--loops", "1", "--stats"]),
    ]


def baseline_spec(name, script, args):
    """`name` run from the baseline build in $PYGEV_BASELINE (benches/build_baseline.sh):
    that revision's own `script` against its own pygev, for old-against-new runs."""
    base = os.environ.get("PYGEV_BASELINE")
    if not base:
        return []
    base = os.path.abspath(base)
    return [ServerSpec(name, os.path.join(base, "repo", script), args, "pygev",
                       pythonpath=os.path.join(base, "site"))]


def select_specs(specs, wanted: str | None):
    if not wanted:
        return specs
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    by_name = {s.name: s for s in [*extra_specs(), *specs]}  # the suite's own specs win
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown server(s): {', '.join(unknown)}; known: {', '.join(by_name)}")
    return [by_name[n] for n in names]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def have_taskset():
    return shutil.which("taskset") is not None


def pinned(cmd, cpu):
    """Prefix cmd with `taskset -c CPU` (taskset execs, so the pid stays the same)."""
    if cpu is None:
        return cmd
    if have_taskset():
        return ["taskset", "-c", str(cpu), *cmd]
    return cmd  # fallback: affinity set in preexec (see start_server)


class ServerError(Exception):
    pass


class Server:
    """A running server process: its pid, address, and a drained stdout."""

    def __init__(self, spec: ServerSpec, cpu: int | None = 0, start_timeout: float = 60.0,
                 log_name: str | None = None):
        self.spec = spec
        self.proc = None
        self.host = None
        self.port = None
        self.unix_path = None  # set instead of host and port for a Unix-socket server
        script = os.path.join(REPO, spec.script)
        if not os.path.exists(script):
            raise ServerError(f"{spec.script} does not exist (yet)")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if spec.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (spec.pythonpath, env.get("PYTHONPATH")) if p)
        self.module_path = None
        if spec.requires and not spec.compiled:
            env, self.module_path = resolve_import(spec, env)
        try:
            cmd = pinned(spec.command(), cpu)
        except (subprocess.CalledProcessError, OSError) as exc:
            raise ServerError(f"cannot build {spec.script}: {exc}") from exc
        os.makedirs(LOG_DIR, exist_ok=True)
        self.log_path = os.path.join(LOG_DIR, f"{log_name or spec.name}.log")
        self._log = open(self.log_path, "wb")
        pin = cpu is not None and not have_taskset()

        def preexec():
            # A harness started in the background (`cmd &`) ignores SIGINT, and so would
            # its servers: asyncio.run then leaves Ctrl+C alone, and stop()'s SIGINT would
            # do nothing. The servers get the default disposition back.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if pin:
                os.sched_setaffinity(0, {cpu})
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=self._log, env=env, preexec_fn=preexec,
            start_new_session=True,  # Ctrl+C on the harness does not hit the server directly
        )
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + start_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise ServerError(f"no 'listening on' line within {start_timeout:.0f} s"
                                  f"{self.log_tail()}")
            try:
                line = self._lines.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None:
                    rc = self.proc.returncode
                    self.stop()
                    raise ServerError(
                        f"exited with code {rc} before listening{self.log_tail()}") from None
                continue
            if line is None:
                continue
            m = UNIX_LISTEN_RE.search(line)
            if m:
                self.unix_path = m.group(1)
                break
            m = LISTEN_RE.search(line)
            if m:
                host = m.group(1)
                self.host = "127.0.0.1" if host in ("", "0.0.0.0", "*") else (
                    "::1" if host == "::" else host)
                self.port = int(m.group(2))
                break

    def _drain(self):
        for raw in self.proc.stdout:
            self._lines.put(raw.decode("utf-8", "replace"))
        self._lines.put(None)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self):
        return proc_cpu_seconds(self.pid)

    def rss_bytes(self):
        return proc_rss_bytes(self.pid)

    def log_tail(self, n=15):
        try:
            self._log.flush()
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()[-n:]
        except OSError:
            return ""
        if not lines:
            return ""
        return "\n    " + "\n    ".join(lines)

    def stop(self, timeout=5.0):
        """SIGINT, then SIGTERM, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"  [{self.spec.name}] did not stop on {sig.name}")
        self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


_resolved: dict = {}


def _import_location(module, env):
    code = f"import {module} as m; print(m.__file__)"
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, timeout=60,
                             capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return None, "import timed out"
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip().splitlines()[-1], None
    err = out.stderr.strip().splitlines()
    return None, err[-1] if err else f"exit code {out.returncode}"


def resolve_import(spec, env):
    """Check that the server's interpreter imports spec.requires; fall back to
    spec.fallback_pythonpath. Returns (env, module file)."""
    key = (spec.name, env.get("PYTHONPATH"))
    if key not in _resolved:
        where, err = _import_location(spec.requires, env)
        if where is None and spec.fallback_pythonpath:
            env2 = dict(env, PYTHONPATH=os.pathsep.join(
                p for p in (spec.fallback_pythonpath, env.get("PYTHONPATH")) if p))
            where2, _err2 = _import_location(spec.requires, env2)
            if where2 is not None:
                env, where = env2, where2
        if where is None:
            hint = ("pip install . (from the repo root)" if spec.fallback_pythonpath
                    else "pip install -r benches/requirements.txt")
            raise ServerError(f"{sys.executable} cannot import {spec.requires} ({err}); {hint}")
        log(f"{spec.name}: using {spec.requires} from {where}")
        warn_debug_build(where)
        _resolved[key] = (env.get("PYTHONPATH"), where)
    pythonpath, where = _resolved[key]
    env = dict(env)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return env, where


def warn_debug_build(module_file):
    """A Rust extension built without --release is several times slower."""
    folder = os.path.dirname(module_file)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        path = os.path.join(folder, name)
        if name.endswith(".so") and os.path.getsize(path) > 20 * MIB:
            log(f"warning: {path} is {os.path.getsize(path) // MIB} MiB: probably a debug "
                f"build; benchmark a release build (pip install .)")


def proc_cpu_seconds(pid):
    """utime + stime of a process (all its threads, dead ones included), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_times(cpus):
    """Per-CPU (busy, steal) seconds from /proc/stat for the given CPU numbers.

    busy = user + nice + system + irq + softirq (idle, iowait and steal excluded).
    On this kind of kernel a task's utime+stime includes the softirq work done on
    its CPU (loopback TCP delivery), so busy - (our processes) = other load."""
    want = {f"cpu{c}" for c in cpus}
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in want:
                v = [int(x) for x in parts[1:9]]
                user, nice, system, _idle, _iowait, irq, softirq, steal = v
                out[int(parts[0][3:])] = ((user + nice + system + irq + softirq) / CLK_TCK,
                                          steal / CLK_TCK)
    return out


def proc_rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def build_loadgen(force=False):
    """Compile benches/loadgen.c into benches/build/loadgen when it is missing or stale."""
    return build_c("benches/loadgen.c", force, libs=("-lssl", "-lcrypto"))


def build_c(source, force=False, libs=()):
    """Compile a C file (path relative to the repo root) into benches/build/NAME
    with gcc -O2 (linked with `libs`), when the binary is missing or older than the
    source."""
    src = os.path.join(REPO, source)
    exe = os.path.join(BUILD_DIR, os.path.splitext(os.path.basename(source))[0])
    if not force and os.path.exists(exe) and os.path.getmtime(exe) >= os.path.getmtime(src):
        return exe
    os.makedirs(BUILD_DIR, exist_ok=True)
    cc = os.environ.get("CC", "gcc")
    cmd = [cc, "-O2", "-Wall", "-o", exe, src, *libs]
    log(f"building: {' '.join(cmd)}")
    subprocess.run(cmd, check=True)
    return exe


def raise_nofile_limit():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def machine_info():
    info = {
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    for mod in ("uvloop", "gevent", "pygev"):
        try:
            m = __import__(mod)
            info[f"{mod}_version"] = getattr(m, "__version__", "?")
        except Exception:
            pass
    return info


def median(values):
    vals = sorted(values)
    n = len(vals)
    if n == 0:
        return float("nan")
    mid = n // 2
    return vals[mid] if n % 2 else (vals[mid - 1] + vals[mid]) / 2

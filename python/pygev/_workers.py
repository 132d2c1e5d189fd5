"""``pygev.run``: one server, or several worker processes sharing its port.

The calling process becomes a supervisor: it forks ``workers`` processes, each of which
builds its own server with ``make_server()`` (listening with ``SO_REUSEPORT``: the kernel
spreads new connections over the workers) and serves it with ``start()``. A worker that
dies is started again, after a delay that doubles while workers keep dying young. SIGTERM
or SIGINT to the supervisor stops every worker gracefully (each drains: pending output
flushed, ``on_close`` for every connection) and ``run()`` returns once all have exited.

Sockets that SO_REUSEPORT cannot share are bound once: the first worker builds its
servers alone and reports, over a socket pair, what it bound. A Unix socket goes to the
supervisor itself (its descriptor passed with SCM_RIGHTS), which keeps it open, hands it
to every later worker and removes its file at the end; so does a TCP socket a server asked
for with ``reuse_port=False`` (one socket, one accept queue, for all the workers); for TCP
port 0, the port the first worker got is the one every other worker binds (with
SO_REUSEPORT). Then the others start.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from pygev import _pygev, _server

log = logging.getLogger("pygev")

#: A worker that ran this long before dying is restarted after the base delay again.
_SETTLED = 10.0

#: A worker's exit status when it failed before serving: ``make_server()`` raised (an
#: address in use, a certificate that does not load, a dependency down).
_BOOT_FAILED = 3


def run(
    make_server: Callable[[], _server.Server],
    workers: int = 1,
    *,
    restart_delay: float = 0.5,
    max_restart_delay: float = 30.0,
    stop_timeout: float = 30.0,
    on_worker_exit: Callable[[int], object] | None = None,
    max_boot_failures: int = 5,
) -> None:
    """Serves ``make_server()``'s server, in ``workers`` processes when more than one.

    With one worker the server is built and started here. With more, this process
    supervises: each worker process calls ``make_server()`` (so handlers and their state
    are per process) with ``reuse_port=True`` by default, and serves until it is told to
    stop. A worker that exits is started again after ``restart_delay`` seconds, doubled
    (up to ``max_restart_delay``) while workers die within 10 s of their start, with a
    log line each time. SIGTERM or SIGINT to this process stops every worker gracefully;
    a worker still running ``stop_timeout`` seconds later (or at a second signal) is
    killed; ``run()`` returns once they all exited. A worker gets SIGTERM if the
    supervisor dies. ``on_worker_exit(pid)`` is called in this process for each worker
    that exited, once reaped (``prometheus_client.multiprocess.mark_process_dead``, for
    one; an exception it raises is logged). Linux (fork) only; call it from the main
    thread, before any pygev server runs in this process.

    A worker whose ``make_server()`` raises is retried the same way, but a deployment that
    cannot start is not retried forever: when one worker's place has failed so
    ``max_boot_failures`` times in a row without ever serving since ``run()`` began, every
    worker is stopped and ``run()`` raises ``RuntimeError`` (the workers' log has the
    cause). With the default delays that is about 7.5 s after the start: a ``make_server()``
    that waits for a dependency should retry itself, or ``max_boot_failures`` be raised.
    A place that has served once is retried for as long as it takes (a dependency down for
    a while). (With ``workers=1``, ``make_server()``'s exception comes out of ``run()``.)

    A Unix socket address (``"unix:/path"`` or ``"unix:@name"``) is bound once, by the
    first worker, and shared by all: the supervisor keeps it open across restarts and
    removes its file when ``run()`` returns. So is a TCP address whose server was asked
    for with ``reuse_port=False``: the workers then share one accept queue, which the
    kernel does not balance (one worker may take most connections). With port 0,
    every worker listens on the port the first one got. The first worker builds its
    servers before the others start.
    """
    if workers < 1:
        raise ValueError(f"pygev: workers must be at least 1, got {workers}")
    if max_boot_failures < 1:
        raise ValueError(f"pygev: max_boot_failures must be at least 1, got {max_boot_failures}")
    if restart_delay <= 0 or max_restart_delay < restart_delay or stop_timeout <= 0:
        raise ValueError(
            "pygev: need 0 < restart_delay <= max_restart_delay and a positive stop_timeout"
        )
    if workers == 1:
        make_server().start()
        return
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("pygev: run() with workers supervises from the main thread")
    _Supervisor(
        make_server,
        workers,
        restart_delay,
        max_restart_delay,
        stop_timeout,
        on_worker_exit,
        max_boot_failures,
    ).run()


def _stop_with_parent() -> None:
    """Asks Linux to send this worker SIGTERM if the supervisor dies (even by SIGKILL), so
    that no worker outlives it unsupervised."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the worker stays up until told


#: Called in a worker process once its server stopped (drained), just before it exits:
#: the last word of what keeps figures outside it (``pygev.metrics``'s exporter).
_at_worker_exit: list[Callable[[], None]] = []


def _address_key(address: object, one_socket: bool) -> str | None:
    """The address a supervisor may share, as a key: a Unix socket's, or a TCP address
    without SO_REUSEPORT (``one_socket``: the workers could not each bind it), each bound
    once and shared as one socket; or a TCP address with port 0, whose port the first
    worker got and every worker binds. ``None`` for any other."""
    if isinstance(address, tuple) and len(address) >= 2:
        text = _host_port(str(address[0]), address[1])
    elif isinstance(address, str):
        if address.startswith("unix:"):
            return address if len(address) > len("unix:") else None
        text = address
    else:
        return None
    if one_socket:
        return f"one:{text}"
    return text if text.rpartition(":")[2] == "0" else None


def _host_port(host: str, port: object) -> str:
    """``host:port``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _shares_socket(key: str) -> bool:
    """Whether the address of `key` is shared as one socket (not as a port to bind)."""
    return key.startswith(("unix:", "one:"))


class _Binding:
    """How a worker's servers listen: ``reuse_port=True`` unless told otherwise, and the
    supervisor's shared sockets (or the port the first worker got) in place of the
    addresses they were bound for. The first worker records what it bound instead."""

    def __init__(self, shared: dict[str, socket.socket | str], first: bool) -> None:
        self.shared = shared
        #: The first worker's servers built with a shareable address.
        self.made: list[tuple[str, _server.Server]] | None = [] if first else None
        #: How many servers were built for each shareable address: the n-th server for an
        #: address gets the n-th socket bound for it (two port-0 servers, two ports).
        self.seen: dict[str, int] = {}

    def arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], str | None]:
        reuse_port = kwargs.setdefault("reuse_port", True)
        given = args[1] if len(args) > 1 else kwargs.get("address", _pygev.DEFAULT_ADDRESS)
        address = _address_key(given, one_socket=not reuse_port)
        if address is None:
            return args, None
        count = self.seen.get(address, 0)
        self.seen[address] = count + 1
        key = f"{address}#{count}"
        if key not in self.shared:
            return args, key
        inherited = self.shared[key]
        if len(args) > 1:
            args = (args[0], inherited, *args[2:])
        else:
            kwargs["address"] = inherited
        return args, None

    def built(self, key: str | None, server: _server.Server) -> None:
        if key is not None and self.made is not None:
            self.made.append((key, server))

    def report(self, channel: socket.socket) -> None:
        """Tells the supervisor what the first worker bound: the sockets it shares (their
        descriptors) and the ports it got for port 0."""
        entries: list[dict[str, str]] = []
        fds: list[int] = []
        made, self.made = self.made or [], None  # (servers it dropped are not kept alive)
        for key, server in made:
            if _shares_socket(key):
                fd = server._share_listener()
                if fd is not None:
                    entries.append({"key": key, "address": str(server.address)})
                    fds.append(fd)
            elif isinstance(server.address, tuple):
                bound = _host_port(server.address[0], server.address[1])
                entries.append({"key": key, "address": bound})
        try:
            socket.send_fds(channel, [json.dumps(entries).encode()], fds)
        finally:
            for fd in fds:
                os.close(fd)


class _Supervisor:
    """Runs with SIGTERM, SIGINT and SIGCHLD blocked and takes them with sigtimedwait: no
    handler runs between a fork and the new worker's registration, and none can interrupt
    the supervisor's own bookkeeping."""

    SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})

    def __init__(
        self,
        make_server: Callable[[], _server.Server],
        workers: int,
        restart_delay: float,
        max_restart_delay: float,
        stop_timeout: float,
        on_worker_exit: Callable[[int], object] | None = None,
        max_boot_failures: int = 5,
    ) -> None:
        self.make_server = make_server
        self.on_worker_exit = on_worker_exit
        self.workers = workers
        self.base_delay = restart_delay
        self.max_delay = max_restart_delay
        self.stop_timeout = stop_timeout
        self.pid = os.getpid()
        #: Worker slot by pid; when each slot's worker started; when a dead one restarts.
        self.slots: dict[int, int] = {}
        self.started: dict[int, float] = {}
        self.due: dict[int, float] = {}
        self.delays = [restart_delay] * workers
        #: Each place's failures to start in a row while it has never served (None: it
        #: has served); past max_boot_failures, the deployment gives up.
        self.max_boot_failures = max_boot_failures
        self.boot_failures: list[int | None] = [0] * workers
        #: Why the deployment gave up (run() raises it once every worker exited).
        self.failure: str | None = None
        #: When stopping began (None: serving).
        self.stopping: float | None = None
        #: What the first worker bound, by address key (None: it has not reported yet);
        #: the channel it reports on while it starts; the Unix socket files to remove.
        self.shared: dict[str, socket.socket | str] | None = None
        self.channel: socket.socket | None = None
        self.files: list[tuple[str, int, int]] = []

    def run(self) -> None:
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        self.old_mask = old_mask
        try:
            self._spawn(0)  # the others once it reported what it bound
            while self.slots or (self.due and self.stopping is None):
                info = signal.sigtimedwait(self.SIGNALS, self._timeout())
                if info is not None and info.si_signo != signal.SIGCHLD:
                    self._stop(f"signal {info.si_signo}")
                self._hear_first()
                self._reap()
                self._restart_due()
                if self.stopping is not None and time.monotonic() >= (
                    self.stopping + self.stop_timeout
                ):
                    self._signal_all(signal.SIGKILL)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            self._unbind()
        if self.failure is not None:
            raise RuntimeError(self.failure)

    def _timeout(self) -> float:
        now = time.monotonic()
        # While the first worker starts, its report is looked for every 20 ms.
        wake = [now + (0.02 if self.channel is not None else 1.0), *self.due.values()]
        if self.stopping is not None:
            wake.append(self.stopping + self.stop_timeout)
        return max(min(wake) - now, 0.0)

    def _stop(self, why: str) -> None:
        if self.stopping is not None:
            log.warning("pygev: a second signal: killing %d workers", len(self.slots))
            self._signal_all(signal.SIGKILL)
            return
        log.info("pygev: stopping %d workers (%s)", len(self.slots), why)
        self.stopping = time.monotonic()
        self.due.clear()
        self._close_shared()  # no worker starts now: no new connection may wait on them
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: int) -> None:
        for pid in list(self.slots):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _reap(self) -> None:
        for pid in list(self.slots):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == 0:
                continue
            slot = self.slots.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            self._exited(pid)
            if self.stopping is not None:
                log.info("pygev: worker %d (pid %d) exited with %d", slot, pid, code)
                continue
            lived = time.monotonic() - self.started[slot]
            if self._gives_up(slot, code):
                continue
            delay = self.delays[slot] if lived < _SETTLED else self.base_delay
            self.delays[slot] = min(delay * 2, self.max_delay)
            self.due[slot] = time.monotonic() + delay
            what = "failed to start" if code == _BOOT_FAILED else f"exited with {code}"
            log.warning(
                "pygev: worker %d (pid %d) %s after %.1f s; starting it again in %.1f s",
                slot,
                pid,
                what,
                lived,
                delay,
            )

    def _gives_up(self, slot: int, code: int) -> bool:
        """Counts a failure to start of a place that never served; stops the deployment
        once there were too many in a row."""
        failures = self.boot_failures[slot]
        if failures is None:
            return False  # it served once: it is retried for as long as it takes
        if code < 0:
            return False  # killed by a signal: it may or may not have served
        if code != _BOOT_FAILED:
            self.boot_failures[slot] = None  # it got as far as serving
            return False
        failures += 1
        self.boot_failures[slot] = failures
        if failures < self.max_boot_failures:
            return False
        self.failure = (
            f"pygev: worker {slot} failed to start {failures} times in a row (its log "
            "above has why): stopping every worker"
        )
        log.error("%s", self.failure)
        self._stop("a worker cannot start")
        return True

    def _hear_first(self) -> None:
        """Takes the first worker's report, if it came, and starts the other workers."""
        channel = self.channel
        if channel is None or not select.select([channel], [], [], 0)[0]:
            return
        self.channel = None
        try:
            message, fds, _, _ = socket.recv_fds(channel, 1 << 16, 64)
        finally:
            channel.close()
        sockets = [socket.socket(fileno=fd) for fd in fds]
        for sock in sockets:
            sock.set_inheritable(False)  # (fork keeps it; an exec must not)
        if not message:
            return  # it died first: its restart reports again
        try:
            self.shared = self._shared_from(json.loads(message), sockets)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("pygev: the first worker's report is unusable (%s): restarting it", exc)
            for sock in sockets:
                sock.close()
            self._signal_all(signal.SIGKILL)
            return
        if self.stopping is not None:
            self._close_shared()  # no later worker will start (files are still removed)
            return
        running = set(self.slots.values()) | set(self.due)
        for slot in range(self.workers):
            if slot not in running:
                self._spawn(slot)

    def _shared_from(
        self, entries: list[dict[str, str]], sockets: list[socket.socket]
    ) -> dict[str, socket.socket | str]:
        """The first worker's report as the table later workers bind from: each shared
        socket (a Unix socket's file noted for removal at the end), or the address port 0
        became."""
        shared: dict[str, socket.socket | str] = {}
        passed = [entry for entry in entries if _shares_socket(entry["key"])]
        if len(passed) != len(sockets):
            raise ValueError(f"{len(passed)} shared sockets reported, {len(sockets)} received")
        received = iter(sockets)
        for entry in entries:
            key = entry["key"]
            if not _shares_socket(key):
                shared[key] = entry["address"]
                continue
            shared[key] = next(received)
            if not key.startswith("unix:"):
                continue
            path = entry["address"][len("unix:") :]
            if path and not path.startswith("@"):
                try:
                    info = os.lstat(path)
                except OSError as exc:
                    log.warning("pygev: %s will not be removed at the end: %s", path, exc)
                    continue
                self.files.append((path, info.st_dev, info.st_ino))
        return shared

    def _close_shared(self) -> None:
        """Closes the sockets kept for later workers (each worker has its own copy)."""
        for value in (self.shared or {}).values():
            if isinstance(value, socket.socket):
                value.close()

    def _unbind(self) -> None:
        """Closes the shared sockets and removes the socket files, if still theirs."""
        if self.channel is not None:
            self.channel.close()  # the first worker's report never came
        self._close_shared()
        for path, dev, ino in self.files:
            try:
                info = os.lstat(path)
                if (info.st_dev, info.st_ino) == (dev, ino):
                    os.unlink(path)
            except OSError:
                pass

    def _exited(self, pid: int) -> None:
        if self.on_worker_exit is None:
            return
        try:
            self.on_worker_exit(pid)
        except Exception:
            log.exception("pygev: on_worker_exit(%d) raised", pid)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot, at in list(self.due.items()):
            if at <= now and self.stopping is None:
                del self.due[slot]
                self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        report = None
        if self.shared is None:  # the first worker: it binds, and reports what
            self.channel, report = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._work(report)  # never returns
        if report is not None:
            report.close()  # the channel's end is the worker's: EOF if it dies first
        self.slots[pid] = slot
        self.started[slot] = time.monotonic()
        log.info("pygev: worker %d started (pid %d)", slot, pid)

    def _work(self, report: socket.socket | None) -> None:
        code = 1
        try:
            # The worker's own signal handling: start() watches SIGTERM, and Ctrl+C (SIGINT
            # to the whole group) stops it as well. Then the signals are let through.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _stop_with_parent()
            signal.pthread_sigmask(signal.SIG_SETMASK, self.old_mask)
            if os.getppid() != self.pid:
                return  # the supervisor died before the watch was set
            if self.channel is not None:
                self.channel.close()
            binding = _Binding(self.shared or {}, first=report is not None)
            _server.Server._binding = binding
            code = _BOOT_FAILED  # until it serves
            server = self.make_server()
            if report is not None:
                binding.report(report)
                report.close()
            code = 1
            server.start()
            for hook in _at_worker_exit:
                try:
                    hook()
                except Exception:
                    log.exception("pygev: a worker's exit hook failed")
            code = 0
        except KeyboardInterrupt:
            code = 0
        except BaseException:
            log.exception("pygev: worker process %d failed", os.getpid())
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            logging.shutdown()
            os._exit(code)

"""``pygev.run``: one server, or several worker processes sharing its port.

The calling process becomes a supervisor: it forks ``workers`` processes, each of which
builds its own server with ``make_server()`` (listening with ``SO_REUSEPORT``: the kernel
spreads new connections over the workers) and serves it with ``start()``. A worker that
dies is started again, after a delay that doubles while workers keep dying young. SIGTERM
or SIGINT to the supervisor stops every worker gracefully (each drains: pending output
flushed, ``on_close`` for every connection) and ``run()`` returns once all have exited.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from pygev import _server

log = logging.getLogger("pygev")

#: A worker that ran this long before dying is restarted after the base delay again.
_SETTLED = 10.0


def run(
    make_server: Callable[[], _server.Server],
    workers: int = 1,
    *,
    restart_delay: float = 0.5,
    max_restart_delay: float = 30.0,
    stop_timeout: float = 30.0,
    on_worker_exit: Callable[[int], object] | None = None,
) -> None:
    """Serves ``make_server()``'s server, in ``workers`` processes when more than one.

    With one worker the server is built and started here. With more, this process
    supervises: each worker process calls ``make_server()`` (so handlers and their state
    are per process) with ``reuse_port=True`` by default, and serves until it is told to
    stop. Give the servers a fixed port: with port 0 each worker would get a port of its
    own. A worker that exits is started again after ``restart_delay`` seconds, doubled
    (up to ``max_restart_delay``) while workers die within 10 s of their start, with a
    log line each time. SIGTERM or SIGINT to this process stops every worker gracefully;
    a worker still running ``stop_timeout`` seconds later (or at a second signal) is
    killed; ``run()`` returns once they all exited. A worker gets SIGTERM if the
    supervisor dies. ``on_worker_exit(pid)`` is called in this process for each worker
    that exited, once reaped (``prometheus_client.multiprocess.mark_process_dead``, for
    one; an exception it raises is logged). Linux (fork) only; call it from the main
    thread, before any pygev server runs in this process. Unix-socket addresses need one
    shared socket, which is not supported yet: give the workers a TCP address.
    """
    if workers < 1:
        raise ValueError(f"pygev: workers must be at least 1, got {workers}")
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
        make_server, workers, restart_delay, max_restart_delay, stop_timeout, on_worker_exit
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
        #: When stopping began (None: serving).
        self.stopping: float | None = None

    def run(self) -> None:
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        self.old_mask = old_mask
        try:
            for slot in range(self.workers):
                self._spawn(slot)
            while self.slots or (self.due and self.stopping is None):
                info = signal.sigtimedwait(self.SIGNALS, self._timeout())
                if info is not None and info.si_signo != signal.SIGCHLD:
                    self._stop(info.si_signo)
                self._reap()
                self._restart_due()
                if self.stopping is not None and time.monotonic() >= (
                    self.stopping + self.stop_timeout
                ):
                    self._signal_all(signal.SIGKILL)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def _timeout(self) -> float:
        now = time.monotonic()
        wake = [now + 1.0, *self.due.values()]
        if self.stopping is not None:
            wake.append(self.stopping + self.stop_timeout)
        return max(min(wake) - now, 0.0)

    def _stop(self, signum: int) -> None:
        if self.stopping is not None:
            log.warning("pygev: a second signal: killing %d workers", len(self.slots))
            self._signal_all(signal.SIGKILL)
            return
        log.info("pygev: stopping %d workers (signal %d)", len(self.slots), signum)
        self.stopping = time.monotonic()
        self.due.clear()
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
            delay = self.delays[slot] if lived < _SETTLED else self.base_delay
            self.delays[slot] = min(delay * 2, self.max_delay)
            self.due[slot] = time.monotonic() + delay
            log.warning(
                "pygev: worker %d (pid %d) exited with %d after %.1f s; starting it again "
                "in %.1f s",
                slot,
                pid,
                code,
                lived,
                delay,
            )

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
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._work()  # never returns
        self.slots[pid] = slot
        self.started[slot] = time.monotonic()
        log.info("pygev: worker %d started (pid %d)", slot, pid)

    def _work(self) -> None:
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
            _server.Server._defaults = {"reuse_port": True}
            self.make_server().start()
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

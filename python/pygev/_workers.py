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
import threading
import time
from collections.abc import Callable
from types import FrameType

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
) -> None:
    """Serves ``make_server()``'s server, in ``workers`` processes when more than one.

    With one worker the server is built and started here. With more, this process
    supervises: each worker process calls ``make_server()`` (so handlers and their state
    are per process) with ``reuse_port=True`` by default, and serves until it is told to
    stop. Give the servers a fixed port: with port 0 each worker would get a port of its
    own. A worker that exits is started again after ``restart_delay`` seconds, doubled
    (up to ``max_restart_delay``) while workers die within 10 s of their start, with a
    log line each time. SIGTERM or SIGINT to this process stops every worker gracefully;
    ``run()`` returns once they all exited. Linux (fork) only; call it from the main
    thread, before any pygev server runs in this process.
    """
    if workers < 1:
        raise ValueError(f"pygev: workers must be at least 1, got {workers}")
    if restart_delay <= 0 or max_restart_delay < restart_delay:
        raise ValueError("pygev: need 0 < restart_delay <= max_restart_delay")
    if workers == 1:
        make_server().start()
        return
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("pygev: run() with workers supervises from the main thread")
    _Supervisor(make_server, workers, restart_delay, max_restart_delay).run()


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
    def __init__(
        self,
        make_server: Callable[[], _server.Server],
        workers: int,
        restart_delay: float,
        max_restart_delay: float,
    ) -> None:
        self.make_server = make_server
        self.workers = workers
        self.base_delay = restart_delay
        self.max_delay = max_restart_delay
        self.stopping = threading.Event()
        self.pid = os.getpid()
        #: Worker slot by pid, and when each slot's worker started.
        self.slots: dict[int, int] = {}
        self.started: dict[int, float] = {}
        self.delays = [restart_delay] * workers

    def run(self) -> None:
        previous = {
            signum: signal.signal(signum, self._stop) for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for slot in range(self.workers):
                self._spawn(slot)
            self._watch()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping.is_set():
            log.info("pygev: stopping %d workers (signal %d)", len(self.slots), signum)
        self.stopping.set()
        for pid in list(self.slots):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            self._work()  # never returns
        self.slots[pid] = slot
        self.started[slot] = time.monotonic()
        log.info("pygev: worker %d started (pid %d)", slot, pid)

    def _work(self) -> None:
        code = 1
        try:
            # The supervisor's handlers are not the worker's: start() watches SIGTERM,
            # and Ctrl+C (SIGINT to the whole group) stops it as well.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _stop_with_parent()
            if os.getppid() != self.pid:
                return  # the supervisor died before the watch was set
            _server.Server._defaults = {"reuse_port": True}
            server = self.make_server()
            if self.stopping.is_set():
                return
            server.start()
            code = 0
        except KeyboardInterrupt:
            code = 0
        except BaseException:
            log.exception("pygev: worker process %d failed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)

    def _watch(self) -> None:
        while self.slots:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return
            slot = self.slots.pop(pid, None)
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if self.stopping.is_set():
                log.info("pygev: worker %d (pid %d) exited with %d", slot, pid, code)
                continue
            lived = time.monotonic() - self.started[slot]
            delay = self.delays[slot] if lived < _SETTLED else self.base_delay
            self.delays[slot] = min(delay * 2, self.max_delay)
            log.warning(
                "pygev: worker %d (pid %d) exited with %d after %.1f s; starting it again "
                "in %.1f s",
                slot,
                pid,
                code,
                lived,
                delay,
            )
            if self.stopping.wait(delay):
                continue
            self._spawn(slot)

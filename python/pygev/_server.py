"""``pygev.Server``: the compiled server, plus serving inside a running asyncio loop."""

from __future__ import annotations

import signal
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from pygev import _pygev

if TYPE_CHECKING:
    import asyncio

    from pygev._workers import _Binding

# NOTE: asyncio is imported where it is used, not here: it pulls in ssl and
# concurrent.futures (about 6 MiB of RSS), which a server without async def callbacks
# never needs, and each of pygev.run's worker processes would carry.

# Servers serving in the main thread's loop: SIGTERM stops them all.
_serving: set[Server] = set()


def _stop_serving() -> None:
    for server in list(_serving):
        server.stop()


def _watch_sigterm(loop: asyncio.AbstractEventLoop, server: Server) -> bool:
    """Makes SIGTERM stop `server` (and the others serving), unless the application
    handles SIGTERM itself; returns whether this server is watched."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if not _serving:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return False  # the application's own handler decides
        try:
            loop.add_signal_handler(signal.SIGTERM, _stop_serving)
        except (NotImplementedError, RuntimeError):
            return False
    _serving.add(server)
    return True


def _unwatch_sigterm(loop: asyncio.AbstractEventLoop, server: Server) -> None:
    _serving.discard(server)
    if not _serving:
        loop.remove_signal_handler(signal.SIGTERM)


# Servers in start() in the main thread: SIGTERM stops them all.
_starting: set[Server] = set()


def _on_sigterm(signum: int, frame: object) -> None:
    for server in list(_starting):
        server.stop()


def _watch_sigterm_blocking(server: Server) -> bool:
    """Makes SIGTERM stop `server` in :meth:`Server.start` (a Python handler: start() runs
    it within 50 ms), unless the application handles SIGTERM itself; returns whether this
    server is watched."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if not _starting:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return False  # the application's own handler decides
        signal.signal(signal.SIGTERM, _on_sigterm)
    _starting.add(server)
    return True


def _unwatch_sigterm_blocking(server: Server) -> None:
    _starting.discard(server)
    if not _starting and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Server(_pygev.Server):
    """A TCP, Unix-socket or WebSocket server (see ``pygev._pygev.Server`` for its
    arguments).

    Serve it with :meth:`start` (blocks the calling thread, which runs the callbacks) or
    with ``await server.serve()`` inside a running asyncio loop (asyncio's own or
    uvloop), which runs the callbacks on the loop's thread, a batch per wake-up.
    """

    _closed: asyncio.Future[None] | None = None
    #: How the servers this process builds listen, in a worker of ``pygev.run``
    #: (``reuse_port=True``, and the sockets its supervisor shares); ``None`` elsewhere.
    _binding: ClassVar[_Binding | None] = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Server:
        binding = cls._binding
        if binding is None:
            return super().__new__(cls, *args, **kwargs)
        args, key = binding.arguments(args, kwargs)
        server = super().__new__(cls, *args, **kwargs)
        binding.built(key, server)
        return server

    def start(self) -> None:
        """Serves until :meth:`stop`, Ctrl+C or SIGTERM, blocking the calling thread, which
        runs the callbacks; each of them drains: every connection's pending output goes out
        and ``on_close`` runs for each. (SIGTERM is watched in the main thread, unless the
        application set its own SIGTERM handler.) A handler with an ``async def`` callback
        is served in an asyncio loop of its own (``asyncio.run(server.serve())``): its
        callbacks may wait.
        """
        if self._handler_awaits():
            import asyncio

            try:
                asyncio.run(self.serve())
            except KeyboardInterrupt:
                pass  # serve() drained; start() returns normally on Ctrl+C
            return
        watched = _watch_sigterm_blocking(self)
        try:
            super().start()
        finally:
            if watched:
                _unwatch_sigterm_blocking(self)

    async def serve(self) -> None:
        """Serves in the running asyncio loop until :meth:`stop` (or :meth:`close`).

        The dispatcher wakes through a descriptor registered with the loop and handles
        every event the loop threads queued in one go, as :meth:`start` does. Returns once
        the server has stopped: every connection drained and closed, ``on_close`` called
        for each. If the task running it is cancelled (Ctrl+C under ``asyncio.run``), the
        server stops the same way, and then the cancellation goes on. In the main thread,
        SIGTERM stops it too, unless the application set its own SIGTERM handler.
        """
        import asyncio

        loop = asyncio.get_running_loop()
        closed = self._closed_future(loop)
        try:
            fd = self._serve_start()
        except BaseException as exc:  # already running, stopped, or the loops failed
            closed.set_exception(exc)
            closed.exception()  # retrieved: wait_closed() re-raises it, nothing else must
            raise
        if fd is None:  # stop() came first
            if not closed.done():
                closed.set_result(None)
            return
        timer: asyncio.TimerHandle | None = None

        def turn() -> None:
            nonlocal timer
            if timer is not None:
                timer.cancel()
                timer = None
            try:
                result = self._serve_turn()
            except BaseException as exc:  # a callback's SystemExit, or a bug
                loop.remove_reader(fd)
                if not closed.done():
                    closed.set_exception(exc)
                return
            if result is None:
                loop.remove_reader(fd)
                if not closed.done():
                    closed.set_result(None)
                return
            again, next_timer = result
            if again:
                loop.call_soon(turn)
            elif next_timer is not None:
                timer = loop.call_later(next_timer, turn)

        loop.add_reader(fd, turn)
        loop.call_soon(turn)
        watched = _watch_sigterm(loop, self)
        try:
            await asyncio.shield(closed)
        except asyncio.CancelledError:
            self.stop()
            # Drains, then the cancellation goes on; a second cancel while draining must
            # not cancel the server's own future (wait_closed() awaits it too).
            while not closed.done():
                try:
                    await asyncio.shield(closed)
                except asyncio.CancelledError:
                    continue
            raise
        finally:
            if watched:
                _unwatch_sigterm(loop, self)

    def close(self) -> None:
        """Stops the server (as :meth:`stop`); :meth:`wait_closed` waits for the end."""
        self.stop()

    async def wait_closed(self) -> None:
        """Returns once a :meth:`serve` that ran has ended (at once if none runs)."""
        if self._closed is not None:
            import asyncio

            await asyncio.shield(self._closed)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()

    def _closed_future(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        if self._closed is not None:
            raise RuntimeError("pygev: serve() was called already")
        self._closed = loop.create_future()
        return self._closed

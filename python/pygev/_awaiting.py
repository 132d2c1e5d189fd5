"""What the dispatcher needs from Python to run ``async def`` callbacks.

The dispatcher runs a coroutine callback's first step itself, inside its batch: most
finish there (nothing to wait for) and never need a task. One that waits goes on in a
real ``asyncio.Task`` running a :class:`_Resumed`, which hands asyncio what the first step
was waiting for and then passes everything on to the coroutine.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any

_STARTED = object()


class _Resumed(Coroutine[Any, Any, Any]):
    """A callback's coroutine whose first step already ran and yielded `waiting`.

    ``SystemExit`` and ``KeyboardInterrupt`` from the coroutine are kept in ``escaped``
    (asyncio would re-raise them out of the loop): the dispatcher stops the server with
    them, as it does when a plain callback raises them.
    """

    __slots__ = ("_coro", "_waiting", "escaped")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting
        self.escaped: BaseException | None = None

    def send(self, value: Any) -> Any:
        waiting = self._waiting
        if waiting is not _STARTED:
            self._waiting = _STARTED
            return waiting
        try:
            return self._coro.send(value)
        except (SystemExit, KeyboardInterrupt) as exc:
            self.escaped = exc
            raise StopIteration(None) from None

    def throw(self, *args: Any) -> Any:
        # A cancellation before the task's first step goes in where the coroutine waits.
        self._waiting = _STARTED
        try:
            return self._coro.throw(*args)
        except (SystemExit, KeyboardInterrupt) as exc:
            self.escaped = exc
            raise StopIteration(None) from None

    def close(self) -> None:
        self._waiting = _STARTED
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self

    def __iter__(self) -> _Resumed:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def __repr__(self) -> str:
        return f"<pygev callback {self._coro!r}>"


def _wake(future: Any, outcome: BaseException | None) -> None:
    """Settles a ``drain()`` future (in its loop): done, or failed with `outcome`."""
    if future.done():
        return  # cancelled meanwhile
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)


class _Ready:
    """What ``drain()`` returns when there is nothing to wait for: awaiting it returns at
    once, without a future."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]

    def __repr__(self) -> str:
        return "<pygev drained>"


_READY = _Ready()

"""What the dispatcher needs from Python to run ``async def`` callbacks.

The dispatcher runs a coroutine callback's first step itself, inside its batch: most
finish there (nothing to wait for) and never need a task. One that waits goes on in a
real ``asyncio.Task`` made from :func:`_resume`, which hands asyncio what the first step
was waiting for and then delegates to the coroutine.
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], waiting: Any) -> Generator[Any, None, Any]:
    """Continues `coro`, whose first step yielded `waiting` (the future it waits for)."""
    while True:
        try:
            yield waiting
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # a cancellation: into the coroutine, where it waits
            try:
                waiting = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        return (yield from coro)

"""The handler base class users subclass."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pygev._pygev import Connection


class Handler:
    """Callbacks for one server's connections; override what you need.

    Callbacks run on the thread that called :meth:`pygev.Server.start`, one at a time: for
    one connection, ``on_connect`` first, then each ``on_message`` in arrival order, then
    ``on_close`` exactly once. Handler state therefore needs no locks. An exception is
    logged on the ``pygev`` logger and closes that connection only.

    Any callback may be an ``async def`` when the server is served in an asyncio loop
    (``await server.serve()``; :meth:`pygev.Server.start` makes one for such a handler).
    The order above still holds per connection: ``on_message`` N+1 starts once N has
    returned, and ``on_close`` comes after the connection's pending callbacks; other
    connections go on meanwhile. A coroutine that finishes without waiting costs about a
    plain call. Blocking work belongs in ``await asyncio.to_thread(...)``: a callback that
    blocks stalls every connection.
    """

    def on_connect(self, conn: Connection) -> Awaitable[None] | None:
        """A connection was accepted."""

    def on_message(
        self, conn: Connection, ctx: object, data: bytes
    ) -> bytes | Awaitable[bytes | None] | None:
        """A whole message arrived; returned bytes are packed by the protocol and sent."""
        return None

    def on_close(self, conn: Connection) -> Awaitable[None] | None:
        """The connection is closed (by either side); called exactly once."""

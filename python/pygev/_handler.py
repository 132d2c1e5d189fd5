"""The handler base class users subclass."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pygev._pygev import Connection


class Handler:
    """Callbacks for one server's connections; override what you need.

    Callbacks run on the thread that called :meth:`pygev.Server.start`, one at a time: for
    one connection, ``on_connect`` first, then each ``on_message`` in arrival order, then
    ``on_close`` exactly once. Handler state therefore needs no locks. An exception is
    logged on the ``pygev`` logger and closes that connection only.
    """

    def on_connect(self, conn: Connection) -> None:
        """A connection was accepted."""

    def on_message(self, conn: Connection, ctx: object, data: bytes) -> bytes | None:
        """A whole message arrived; returned bytes are packed by the protocol and sent."""
        return None

    def on_close(self, conn: Connection) -> None:
        """The connection is closed (by either side); called exactly once."""

"""The base class of framings written in Python (gev's ``Protocol``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pygev._pygev import Connection, RingBuffer


class Protocol:
    """A framing written in Python, given to a server as ``protocol=MyProtocol()``.

    The loop threads hand the bytes they read to the dispatcher, which appends them to the
    connection's :class:`~pygev.RingBuffer` and calls :meth:`unpacket` again and again while
    it returns frames; each frame's ``(ctx, payload)`` goes to ``on_message(conn, ctx,
    payload)``. Whatever ``on_message`` returns, and whatever is passed to
    ``conn.send()``, goes through :meth:`packet` before it is written.

    Both methods run with the GIL, on the dispatcher's thread (``packet`` also on the thread
    that calls ``conn.send()``). An exception in either is logged on the ``pygev`` logger
    and closes that connection. The defaults make a raw protocol: every chunk received is
    one message, sent bytes go out unchanged.
    """

    def unpacket(self, conn: Connection, buffer: RingBuffer) -> tuple[object, object] | None:
        """Takes one whole frame from ``buffer``: returns ``(ctx, payload)`` and consumes
        its bytes, or returns ``None`` (consuming nothing) to wait for more bytes.

        ``buffer`` is only valid during this call.
        """
        if len(buffer) == 0:
            return None
        return None, buffer.read(len(buffer))

    def packet(self, conn: Connection, data: bytes) -> bytes:
        """Returns the wire form of ``data`` (bytes-like)."""
        return data

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

    Both methods run with the GIL. ``unpacket`` runs on the dispatcher's thread; ``packet``
    runs on the thread that sends (the dispatcher's for replies and for sends made in
    callbacks, another thread's for ``conn.send()`` called there), so a ``packet`` that keeps
    state across calls cannot rely on the order of sends made on different threads. An
    exception in either is logged on the ``pygev`` logger and closes that connection
    (``conn.send()`` then raises :class:`~pygev.ConnectionClosed`); a ``packet`` that returns
    something that is not bytes-like makes ``conn.send()`` raise ``TypeError``. The defaults
    make a raw protocol: every chunk received is one message, sent bytes go out unchanged.
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

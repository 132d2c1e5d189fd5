"""WebSocket handlers and the answers of the ``on_handshake`` and ``on_http_request``
hooks."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pygev._pygev import Connection


class WebSocketHandler:
    """Callbacks for a WebSocket server's connections; override what you need.

    Give an instance to :class:`pygev.Server` (its ``protocol=`` defaults to
    :class:`pygev.WebSocket` then). The loop threads answer the upgrade request, pings and
    the closing handshake, reassemble fragmented messages, check UTF-8 and inflate
    compressed messages: Python sees only whole messages. For one connection,
    ``on_connect`` runs after the handshake, then ``on_message`` for each message in
    arrival order, then ``on_close`` exactly once. A connection whose handshake never
    completed gets neither ``on_connect`` nor ``on_close``.

    To accept or refuse upgrade requests yourself, define
    ``on_handshake(self, conn, request)``: it gets a :class:`pygev.WebSocketRequest` (path,
    query, headers, origin, subprotocols) and returns ``None`` (accept), an
    :class:`Accept` (pick a subprotocol, add headers) or a :class:`Reject` (an HTTP status
    and reason). An exception there refuses the request with 500. Without the method, the
    loop threads accept every valid request themselves, without a trip to Python.

    To answer plain HTTP requests on the WebSocket port (not upgrades: a load balancer's
    ``GET /healthz``), define ``on_http_request(self, conn, request)``: it gets a
    :class:`pygev.HttpRequest` (method, path, query, headers) and returns a
    :class:`Response` (status, headers, a body of at most 1 MiB), written before the
    connection closes, or ``None`` to refuse it as without the method (400: not an
    upgrade). An exception there answers 500. Such a connection
    gets neither ``on_connect`` nor ``on_close``. A request with a body, or one asking
    for an upgrade, never reaches it.

    Every callback, ``on_handshake`` included, may be an ``async def`` (see
    :class:`pygev.Handler`).
    """

    def on_connect(self, conn: Connection) -> Awaitable[None] | None:
        """The handshake completed; the connection can send and receive."""

    def on_message(
        self, conn: Connection, data: str | bytes
    ) -> str | bytes | Awaitable[str | bytes | None] | None:
        """A whole message arrived: ``str`` for text, ``bytes`` for binary. A returned
        ``str`` is sent as a text message, returned bytes as a binary one."""
        return None

    def on_close(self, conn: Connection) -> Awaitable[None] | None:
        """The connection is closed (by either side); called exactly once."""


@dataclass(frozen=True)
class Accept:
    """``on_handshake``'s answer accepting a request with a subprotocol (one the client
    offered) and extra response headers."""

    subprotocol: str | None = None
    headers: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True)
class Reject:
    """``on_handshake``'s answer refusing a request: an HTTP status (400 to 599) and a
    one-line reason sent as the response body."""

    status: int = 403
    reason: str = "Forbidden"


@dataclass(frozen=True)
class Response:
    """``on_http_request``'s answer to a plain HTTP request: a status (200 to 599), header
    fields (``Content-Length`` and ``Connection: close`` are added) and a body (``str`` is
    sent as UTF-8 ``text/plain`` unless a ``Content-Type`` is given; none is sent to a
    ``HEAD``)."""

    status: int = 200
    body: bytes | str = b""
    headers: Sequence[tuple[str, str]] = ()

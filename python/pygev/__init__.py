"""pygev: gev for Python, a fast Reactor-pattern TCP server library with a Rust core.

Write a :class:`Handler`, give it to a :class:`Server`, call :meth:`Server.start`::

    import pygev

    class Echo(pygev.Handler):
        def on_message(self, conn, ctx, data):
            return data

    pygev.Server(Echo(), "127.0.0.1:1833").start()
"""

from __future__ import annotations

from pygev import _pygev
from pygev._awaiting import _READY, _Resumed, _wake
from pygev._handler import Handler
from pygev._protocol import Protocol
from pygev._pygev import (
    TLS,
    Connection,
    ConnectionClosed,
    Delimited,
    HttpRequest,
    LengthPrefix,
    Raw,
    RingBuffer,
    Timer,
    TLSInfo,
    WebSocket,
    WebSocketHandshakeError,
    WebSocketRequest,
    _register_classes,
)
from pygev._server import Server
from pygev._websocket import Accept, Reject, Response, WebSocketHandler
from pygev._workers import run

# The compiled module recognises these classes; it never imports the package itself.
_register_classes(
    protocol=Protocol,
    websocket_handler=WebSocketHandler,
    accept=Accept,
    reject=Reject,
    response=Response,
    resume=_Resumed,
    wake=_wake,
    ready=_READY,
)
del _register_classes, _Resumed, _wake, _READY

# Exceptions pickle by module path: name the public one.
ConnectionClosed.__module__ = "pygev"
WebSocketHandshakeError.__module__ = "pygev"
# What a handshake error made by hand says (pygev sets each on every one it raises).
WebSocketHandshakeError.status = None
WebSocketHandshakeError.reason = None
WebSocketHandshakeError.headers = ()
WebSocketHandshakeError.body = b""
WebSocketHandshakeError.location = None

__all__ = [
    "TLS",
    "Accept",
    "Connection",
    "ConnectionClosed",
    "Delimited",
    "Handler",
    "HttpRequest",
    "LengthPrefix",
    "Protocol",
    "Raw",
    "Reject",
    "Response",
    "RingBuffer",
    "Server",
    "TLSInfo",
    "Timer",
    "WebSocket",
    "WebSocketHandler",
    "WebSocketHandshakeError",
    "WebSocketRequest",
    "run",
]

__version__: str = _pygev.__version__  # one source: Cargo.toml's [workspace.package]

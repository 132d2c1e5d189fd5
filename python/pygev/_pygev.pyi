"""Typed face of ``pygev._pygev``, the compiled core. Users import these names from ``pygev``.

Threads: a server's callbacks (handler methods and timer callbacks) all run on the thread
that called :meth:`Server.start`, one at a time. Each method below says whether it may be
called from another thread and from inside a callback.
"""

import builtins
import concurrent.futures
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, final, type_check_only

from typing_extensions import Buffer, CapsuleType, Self, disjoint_base
from typing_extensions import Protocol as _TypingProtocol

from pygev._handler import Handler
from pygev._protocol import Protocol
from pygev._websocket import Accept, Reject, Response, WebSocketHandler

__all__ = [
    "DEFAULT_ADDRESS",
    "TLS",
    "Connection",
    "ConnectionClosed",
    "Delimited",
    "HttpRequest",
    "LengthPrefix",
    "Raw",
    "RingBuffer",
    "Server",
    "TLSInfo",
    "Timer",
    "WebSocket",
    "WebSocketHandshakeError",
    "WebSocketRequest",
    "__version__",
    "_length_prefix_plugin",
    "_register_classes",
]

__version__: str
"""The package's version (one source: ``[workspace.package]`` in Cargo.toml)."""

DEFAULT_ADDRESS: str
"""Where a :class:`Server` listens when no address is given: ``"0.0.0.0:1833"``."""

@final
class ConnectionClosed(ConnectionError):
    """Raised when sending on a connection that is closed or has shut down its write side."""

@final
class WebSocketHandshakeError(ConnectionError):
    """A WebSocket client's handshake failed (the future of ``Server.connect("ws://...")``).

    The server refused the upgrade (any status but 101; redirects are reported, not
    followed), or answered it wrongly (then ``status`` is ``None`` and the message says
    why: a wrong ``Sec-WebSocket-Accept``, a subprotocol or extension not offered, ...),
    or the connection closed before the answer.
    """

    status: int | None
    """The response's status, on a refusal."""
    reason: str | None
    """The response's reason phrase, on a refusal."""
    headers: Sequence[tuple[str, str]]
    """The response's header fields (names lower-cased), on a refusal."""
    body: bytes
    """The start of the response's body: its ``Content-Length`` bytes (at most 8 KiB), or
    what came with the head when it has no length."""
    location: str | None
    """The ``Location`` header, on a redirect."""

@final
class Raw:
    """The default framing: each chunk of bytes read is one message; sent bytes go out as
    they are.

    Immutable: one instance may be shared by several servers and threads.
    """

    def __new__(cls) -> Self: ...

@final
class LengthPrefix:
    """Frames made of an unsigned length header, then that many payload bytes.

    Parsed in the loop threads, so only whole frames reach Python: ``on_message`` gets the
    payload without its header, and a returned or sent payload gets its header. A frame
    whose header declares more than ``max_frame_size`` bytes closes that connection (with a
    log line naming the length and the limit) before any of it is buffered.

    Args:
        header_size: 1, 2, 4 or 8 bytes.
        byteorder: ``"big"`` (network order) or ``"little"``.
        max_frame_size: The largest payload accepted from a peer. Default 16 MiB, or what
            the header can hold if less. Sending a payload longer than the header can hold
            raises ``ValueError``.

    Immutable: one instance may be shared by several servers and threads.
    """

    def __new__(
        cls,
        header_size: Literal[1, 2, 4, 8] = 4,
        byteorder: Literal["big", "little"] = "big",
        max_frame_size: int | None = None,
    ) -> Self: ...
    @property
    def header_size(self) -> int:
        """The header's size in bytes."""

    @property
    def byteorder(self) -> Literal["big", "little"]:
        """The header's byte order."""

    @property
    def max_frame_size(self) -> int:
        """The largest payload accepted from a peer, in bytes."""

@final
class Delimited:
    """Frames that end with a delimiter of 1 to 16 bytes (``b"\\r\\n"`` by default).

    Parsed in the loop threads: ``on_message`` gets each frame without its delimiter, and
    a returned or sent payload gets it appended. A frame longer than ``max_frame_size``
    (delimiter not counted) closes that connection as soon as that many bytes arrived
    without a delimiter. Sending a payload that contains the delimiter raises
    ``ValueError``: the peer would split it.

    Args:
        delimiter: 1 to 16 bytes.
        max_frame_size: The largest frame accepted from a peer (default 1 MiB).

    Immutable: one instance may be shared by several servers and threads.
    """

    def __new__(cls, delimiter: bytes = b"\r\n", max_frame_size: int = 1048576) -> Self: ...
    @property
    def delimiter(self) -> bytes:
        """The delimiter."""

    @property
    def max_frame_size(self) -> int:
        """The largest frame accepted from a peer, delimiter not counted."""

@final
class RingBuffer:
    """The bytes of a connection that its :class:`~pygev.Protocol` has not taken yet, with
    gev's reads.

    The server lends a connection's buffer to ``Protocol.unpacket`` only: outside that call
    every method raises ``RuntimeError``. ``RingBuffer()`` builds a standalone buffer, always
    usable, for testing a protocol.
    """

    def __new__(cls) -> Self: ...
    def write(self, data: Buffer) -> None:
        """Appends ``data``."""

    def __len__(self) -> int: ...
    def len(self) -> int:
        """Bytes held."""

    def peek(self, n: int) -> builtins.bytes:
        """Up to ``n`` bytes from the front, not consumed."""

    def read(self, n: int) -> builtins.bytes:
        """Up to ``n`` bytes from the front, consumed."""

    def retrieve(self, n: int) -> None:
        """Consumes ``n`` bytes (or all, if fewer are held)."""

    def retrieve_all(self) -> None:
        """Consumes everything held."""

    def bytes(self) -> builtins.bytes:
        """A copy of everything held; nothing is consumed."""

    def virtual_read(self, n: int) -> builtins.bytes:
        """Up to ``n`` bytes after the virtual cursor, which advances. Nothing is consumed
        until :meth:`virtual_flush`; :meth:`virtual_revert` moves the cursor back."""

    def virtual_length(self) -> int:
        """Bytes after the virtual cursor."""

    def virtual_flush(self) -> None:
        """Consumes the bytes the virtual reads covered."""

    def virtual_revert(self) -> None:
        """Moves the virtual cursor back to the front."""

@final
class TLS:
    """TLS settings for a server (``Server(tls=...)``) or an outgoing connection
    (``connect(tls=...)``), run in the loops with rustls.

    Args:
        certfile: PEM file with the certificate chain (leaf first). A server needs one; a
            client presents it when the server asks.
        keyfile: PEM file with the private key (PKCS#8, RSA or EC), encrypted or not.
        password: The key's password, if it is encrypted.
        ca_file: PEM file of the CAs to trust: a server checks client certificates
            against it, a client the server's (default for a client: the system's
            roots).
        client_auth: ``"none"``, ``"optional"`` or ``"required"`` client certificates
            (a server; needs ``ca_file``).
        alpn: Protocols offered (client) or accepted (server), in preference order.
        min_version: ``"1.2"`` or ``"1.3"``.
        sni: More certificates for a server, by the name a client asks for:
            ``{"name": (certfile, keyfile)}`` (``"*.example.com"`` matches one label).
        handshake_timeout: Seconds an accepted connection's handshake may take before it
            is closed (default 10).
        max_handshakes: Handshakes each loop thread runs at once with accepted
            connections (default 1024): past it a new connection is reset, with a warning
            at most once a second, so that clients that never finish their handshake cannot
            take the loop's memory while established connections go on.

    Files are read when a server or a connection uses the settings. A client uses
    ``certfile``/``keyfile``, ``password``, ``ca_file``, ``alpn`` and ``min_version``;
    ``client_auth``, ``sni``, ``handshake_timeout`` and ``max_handshakes`` are a
    server's (a dial's handshake counts within its ``timeout``).
    """

    def __new__(
        cls,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        *,
        password: str | bytes | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        client_auth: Literal["none", "optional", "required"] = "none",
        alpn: Sequence[str] = (),
        min_version: Literal["1.2", "1.3"] = "1.2",
        sni: dict[str, tuple[str | os.PathLike[str], str | os.PathLike[str]]] | None = None,
        handshake_timeout: float = 10.0,
        max_handshakes: int = 1024,
    ) -> Self: ...

@final
class TLSInfo:
    """What a connection's TLS handshake negotiated (:attr:`Connection.tls`)."""

    @property
    def version(self) -> str:
        """``"TLSv1.3"`` or ``"TLSv1.2"``."""

    @property
    def cipher(self) -> str:
        """The cipher suite, e.g. ``"TLS13_AES_256_GCM_SHA384"``."""

    @property
    def alpn(self) -> str | None:
        """The ALPN protocol agreed on, or ``None``."""

    @property
    def server_name(self) -> str | None:
        """The name the client asked for (SNI), or ``None``."""

    @property
    def peer_certificate(self) -> bytes | None:
        """The peer's certificate (DER), or ``None`` when it presented none."""

@final
class Timer:
    """A scheduled callback, returned by :meth:`Server.run_after` and :meth:`Server.run_every`.

    Not constructible from Python.
    """

    def cancel(self) -> None:
        """Stops the timer: its callback will not run again.

        Thread-safe and callable from callbacks (including the timer's own). Idempotent;
        cancelling a timer that already ran or whose server stopped does nothing.
        """

    @property
    def active(self) -> bool:
        """Whether the callback is still due to run.

        False once cancelled, once a ``run_after`` timer ran, or once :meth:`Server.start`
        returned. Thread-safe and callable from callbacks.
        """

@final
class Connection:
    """One client connection, created by the server and handed to every handler callback.

    Not constructible from Python. The object stays usable after the connection closed:
    its addresses and ``context`` keep their values, and sending raises
    :class:`ConnectionClosed`.
    """

    def send(self, data: Buffer | str) -> None:
        """Queues ``data`` for writing, packed by the connection's protocol (the server's,
        or the one it was dialed with).

        On a WebSocket connection a ``str`` goes out as a text message and bytes as a
        binary one; before the handshake completed (in ``on_handshake``) it raises
        ``RuntimeError``. Other protocols take bytes only.

        The data is copied; the connection's loop writes it asynchronously. Thread-safe:
        callable from any thread and from callbacks (where the writes of one batch of events
        go out together).

        Args:
            data: The payload: ``bytes``, ``bytearray``, ``memoryview`` or any C-contiguous
                buffer of bytes.

        Raises:
            ConnectionClosed: The connection is closed, or ``shutdown_write()`` was called,
                or the server stopped; or this send would have taken the connection's unsent
                output past ``max_write_buffer`` (sends count at once, also within one
                callback): the connection was then reset, as the peer does not read as fast
                as it is sent to.
            TypeError: ``data`` is not a bytes-like object.
            ValueError: The protocol cannot frame ``data`` (longer than a
                :class:`LengthPrefix` header can hold, or containing the :class:`Delimited`
                delimiter), or ``data`` alone is larger than ``max_write_buffer``. Nothing
                was sent; the connection stays open.
        """

    def shutdown_write(self) -> None:
        """Flushes pending output, then shuts down the write side: the peer reads EOF.

        Not for WebSocket connections (``TypeError``): they end with :meth:`close`.

        The connection keeps reading: ``on_message`` still runs for what the peer sends, but
        replies are dropped and ``send()`` raises :class:`ConnectionClosed`. Thread-safe and
        callable from callbacks. Idempotent; on a connection that is already closed it does
        nothing.
        """

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Stops reading, flushes pending output, then closes; ``on_close`` follows.

        Messages already read but not yet handled are dropped. Thread-safe, callable from
        callbacks, idempotent.

        Args:
            code: WebSocket only: the close frame's status code (1000-1003, 1007-1014 or
                3000-4999, else ``ValueError``). Ignored by other protocols.
            reason: WebSocket only: the close frame's reason, at most 123 bytes of UTF-8.
        """

    def ping(self, payload: bytes = b"") -> None:
        """Sends a WebSocket ping (the peer answers with a pong, which the loop takes as a
        sign of life; a client's ping is masked). Thread-safe, callable from callbacks.

        Raises:
            ValueError: ``payload`` is over 125 bytes.
            TypeError: The connection is not a WebSocket one.
            RuntimeError: The handshake has not completed.
            ConnectionClosed: The connection is closed.
        """

    @property
    def peer_addr(self) -> Any:
        """The peer's address: ``(host, port)``, or on a Unix socket ``"unix:/path"``,
        ``"unix:@name"`` or ``"unix:"`` (a client that bound no name). Behind a proxy
        (``proxy_protocol=True``) it is the client's address from the PROXY header.
        Thread-safe.

        Typed ``Any`` (as asyncio's ``getpeername``) so that ``host, port =
        conn.peer_addr`` type-checks on TCP servers."""

    @property
    def local_addr(self) -> Any:
        """This end's address, in the same forms as :attr:`peer_addr`. Thread-safe."""

    @property
    def peer_credentials(self) -> tuple[int, int, int] | None:
        """On a Unix socket, the peer process as ``(pid, uid, gid)``, as the kernel
        recorded it when the peer connected (``SO_PEERCRED``); ``None`` on TCP.
        Thread-safe."""

    @property
    def id(self) -> int:
        """A number unique to this connection within its server. Thread-safe."""

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose, on a WebSocket client's connection (dialed to
        a ``ws://`` URL with ``subprotocols=``); ``None`` when it chose none, and on other
        connections (a server's connections carry the one their ``on_handshake``
        accepted, which the handler knows). Thread-safe."""

    @property
    def response_headers(self) -> list[tuple[str, str]] | None:
        """The header fields of the server's 101 response (names lower-cased, in order),
        on a WebSocket client's connection (``Set-Cookie``, ``Server``, ...); ``None`` on
        other connections. Thread-safe."""

    @property
    def tls(self) -> TLSInfo | None:
        """What the TLS handshake negotiated; ``None`` on a plain connection (the
        handshake completed before ``on_connect``). Thread-safe."""

    @property
    def connected(self) -> bool:
        """False once the connection is closed (by either side) or ``close()`` was called.

        Thread-safe.
        """

    @property
    def write_buffer_size(self) -> int:
        """Bytes sent and not yet written to the socket. Thread-safe."""

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """``(low, high)``: the connection's write low- and high-water marks."""

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Sets the connection's write high- and low-water marks.

        Past ``high`` bytes of unsent output the loop stops reading this connection (a
        peer that does not read its replies cannot make it buffer more); at ``low`` reading
        resumes and :meth:`drain` returns. A WebSocket client's connection keeps reading
        (its server may read again only once its own output drained: both waiting would
        deadlock); its output is bounded by ``max_write_buffer`` and :meth:`drain`. ``high``
        defaults to the server's ``write_high_water``, ``low`` to half ``high``. Thread-safe.

        Raises:
            ValueError: ``low > high``, ``high == 0`` or ``high`` over ``max_write_buffer``.
        """

    def drain(self) -> Awaitable[None]:
        """``await conn.drain()`` returns once unsent output is at or under the low-water
        mark: the way to send much without buffering it all (``conn.send(chunk); await
        conn.drain()``). It returns at once when there is little unsent; any asyncio loop
        in any thread may await it.

        Raises:
            ConnectionClosed: The connection is closed, or closes while it waits.
            RuntimeError: It must wait and no asyncio loop runs in this thread.
        """

    def pause_reading(self) -> None:
        """Stops reading from the peer until :meth:`resume_reading`; what was read already
        is still delivered. Idle and frame timeouts do not run meanwhile. Thread-safe."""

    def resume_reading(self) -> None:
        """Reads from the peer again after :meth:`pause_reading`. Thread-safe."""

    def is_reading(self) -> bool:
        """False after :meth:`pause_reading` (until :meth:`resume_reading`) and once
        closed."""

    @property
    def context(self) -> Any:
        """A free slot for the user's per-connection state; ``None`` until set.

        Reading and writing it is thread-safe, but callbacks are the natural place: they
        never run concurrently, so state kept here needs no locks.
        """

    @context.setter
    def context(self, value: Any) -> None: ...

@disjoint_base
class Server:
    """A TCP server: binds when constructed, serves in :meth:`start`, ends with :meth:`stop`."""

    def __new__(
        cls,
        handler: Handler | WebSocketHandler,
        address: str | tuple[str, int] | socket.socket | None = ...,
        *,
        num_loops: int = 0,
        protocol: Raw
        | LengthPrefix
        | Delimited
        | WebSocket
        | Protocol
        | CapsuleType
        | ProvidesProtocol
        | None = None,
        reuse_port: bool = False,
        strategy: Literal["round_robin", "least_connections"] = "round_robin",
        idle_timeout: float | None = None,
        frame_timeout: float | None = ...,
        backlog: int = 1024,
        drain_timeout: float = 5.0,
        write_high_water: int = ...,
        write_low_water: int | None = None,
        max_write_buffer: int = ...,
        max_input_buffer: int = ...,
        dispatch_high_water: int = ...,
        max_batch_events: int = 2048,
        unix_mode: int | None = None,
        slow_callback_duration: float | None = ...,
        tls: TLS | None = None,
        proxy_protocol: bool = False,
        trusted_proxies: Sequence[str | ipaddress.IPv4Network | ipaddress.IPv6Network]
        | None = None,
        proxy_header_timeout: float | None = None,
    ) -> Self:
        """Validates the settings and binds the listening socket(s).

        Args:
            handler: The callbacks, usually a :class:`pygev.Handler` subclass instance. Any
                object with callable ``on_connect``, ``on_message`` and ``on_close`` works.
            address: Where to listen: ``"host:port"`` (port 0 picks a free port, see
                :attr:`address`; ``"[::1]:0"`` for IPv6), a ``(host, port)`` tuple,
                ``"unix:/path/to.sock"`` (a Unix socket file: a stale one left by a dead
                process is replaced, one a live server listens on is refused with
                ``EADDRINUSE``, and the file is removed on :meth:`stop`) or ``"unix:@name"``
                (Linux's abstract namespace, no file), or a socket already listening
                (a ``socket.socket``, or any object with ``fileno()``: TCP or Unix, handed
                down by a parent process or systemd; the server listens on a duplicate,
                which shares the original's non-blocking mode (it becomes non-blocking),
                ignores ``reuse_port``, ``backlog`` and ``unix_mode`` (the socket is bound
                and listening already) and leaves a Unix socket's file to its binder). Default
                ``"0.0.0.0:1833"``. ``None``: no listener, a server whose loops only serve
                the connections it dials with :meth:`connect`.
            num_loops: Reactor (loop) threads; 0 means one per CPU.
            protocol: The framing: :class:`Raw` (the default, also ``None``),
                :class:`LengthPrefix`, :class:`Delimited`, :class:`WebSocket` (the default
                and the only choice for a :class:`~pygev.WebSocketHandler`), an instance of
                a :class:`~pygev.Protocol` subclass (framing written in Python), or a Rust
                plugin: a capsule named ``"pygev.protocol"``, or an object whose
                ``__pygev_protocol__()`` returns one (see docs/plugins.md). A capsule with
                another name is a ``TypeError``; a table with the wrong magic, ABI version or
                size is a ``ValueError``.
            reuse_port: Use ``SO_REUSEPORT``: one listening socket per loop, the kernel
                balances connections between them.
            strategy: How the acceptor picks a loop for a new connection:
                ``"round_robin"`` or ``"least_connections"``.
            idle_timeout: Seconds without progress, reading or writing, after which a
                connection is closed; ``None`` never closes idle connections. A peer that
                stopped reading makes no progress however much output waits for it; such a
                connection (or one holding part of a frame) is reset, not closed with a FIN.
            frame_timeout: Seconds within which a frame (a WebSocket message) that started
                arriving must be complete, or the connection is reset: a slowloris client
                cannot hold a connection by trickling a frame (default 60). ``None``
                disables it. Time
                the server itself stopped reading (backpressure) does not count.
            backlog: The listen backlog.
            drain_timeout: Seconds :meth:`stop` waits at most for pending output to flush.
            write_high_water: Bytes of pending output past which a connection stops
                reading until its output drains to ``write_low_water`` (a WebSocket client's
                keeps reading; :meth:`Connection.drain` waits for it) (default 1 MiB; each
                connection may set its own, see
                :meth:`Connection.set_write_buffer_limits`).
            write_low_water: Bytes of pending output at or under which a connection reads
                again and ``await conn.drain()`` returns (default half the high-water
                mark).
            max_write_buffer: Bytes of pending output past which a connection is reset
                (default 64 MiB, at most 2 GiB). Sends count at once: a send that would
                take a connection past it resets the connection and raises
                :class:`ConnectionClosed`; a single send larger than it raises
                ``ValueError`` and sends nothing.
            max_input_buffer: Bytes of unframed input past which a connection is closed
                (default 64 MiB).
            dispatch_high_water: Dispatch cost (bytes held plus 128 per event) of what waits
                for the Python dispatcher past which the loops stop reading and accepting
                until it catches up (default 32 MiB). Besides, a connection with more than
                256 KiB of it waiting is not read until the dispatcher caught up with it (the
                others are).
            max_batch_events: The most handler calls in one batch (one GIL acquisition).
                Between batches replies go out and paused reads resume; past it,
                connections with much queued take turns, so one flooding client delays
                another's reply by one batch at most. Messages held behind an awaiting
                callback resume with at most half of it per batch.
            unix_mode: Permissions of the Unix socket file (for example ``0o660``);
                ``None`` keeps what the umask gives.
            slow_callback_duration: Seconds past which a callback that holds the
                dispatcher (``on_connect``, ``on_message``, ``on_close``, ``on_handshake``,
                a timer, a :class:`~pygev.Protocol`'s ``unpacket``/``packet``, or the first
                step of an ``async def`` one, up to its first ``await``) is logged as a
                warning on the ``pygev`` logger with its name and connection, once it has
                returned (default 0.1, as asyncio's debug mode; ``None`` disables it).
                Every connection waits while a callback runs: blocking work belongs in
                ``await asyncio.to_thread(...)``.
            tls: Speak TLS on every accepted connection (any framing, TCP or Unix
                socket): the handshake and the records run in the loops, and a connection
                is announced (``on_connect``) once its handshake completed. Its files are
                loaded and checked here.
            proxy_protocol: Every accepted connection starts with a PROXY protocol header
                (HAProxy's, version 1 or 2, as ``send-proxy`` or ``send-proxy-v2`` sends
                it), read in the loops before TLS and any framing: ``conn.peer_addr`` is
                the client's address from it (the proxy's own for a header without one:
                ``LOCAL``, such as a health check, or ``UNKNOWN``); ``conn.local_addr``
                stays the socket's. A connection from a peer that is not a trusted proxy,
                or with a malformed header, or with none within ``proxy_header_timeout``,
                is reset with a warning before ``on_connect``; the others go on.
            trusted_proxies: The networks a header is believed from (``"10.0.0.0/8"``,
                ``"::1"``, or ``ipaddress`` networks); default: loopback only. Unix-socket
                peers are always trusted.
            proxy_header_timeout: Seconds a connection may take to send its whole PROXY
                header (default 10; a proxy sends it at once); with TLS, the handshake's
                timeout if shorter. A TLS handshake has its own timeout again once the
                header is in.

        Returns:
            The bound server; nothing is served before :meth:`start`.

        Raises:
            TypeError: ``handler`` lacks a callable callback, or ``protocol`` is not one.
            ValueError: A setting is out of range, ``address`` cannot be parsed, or a
                TLS file is missing, unreadable or does not match (the message names the
                file and the reason).
            OSError: Binding failed (for example ``EADDRINUSE``), with its errno.
        """

    def reload_tls(self, tls: TLS) -> None:
        """Uses ``tls``'s certificates and keys for the connections accepted from now on;
        connections made before keep theirs (the handshake timeout stays the server's).
        Thread-safe.

        Raises:
            ValueError: A file is missing, unreadable or does not match; the certificates
                in use stay.
            RuntimeError: The server was made without ``tls=``.
        """

    def _share_listener(self) -> int | None:
        """A duplicate of the listening socket before :meth:`start`, as a descriptor the
        caller owns (``pygev.run`` shares it with its workers); a Unix socket's file is
        then the caller's to remove. ``None`` without a listener, or with one SO_REUSEPORT
        socket per loop."""

    @property
    def address(self) -> Any:
        """The bound address as ``(host, port)``, with the actual port when 0 was asked,
        or the ``"unix:..."`` address of a Unix socket (typed ``Any``, as
        :attr:`Connection.peer_addr`).

        Thread-safe.
        """

    @property
    def num_loops(self) -> int:
        """The number of loop threads. Thread-safe."""

    @property
    def time_callbacks(self) -> bool:
        """Whether Python callbacks are timed, for ``stats()["callback_durations"]``
        (default ``False``; :class:`pygev.metrics.ServerCollector` turns it on).

        Timing reads the clock once per callback, as it returns: a callback's time runs
        from the return of the one before it in the same batch (or from its own start),
        so it includes pygev's own work for that event (well under a microsecond). It
        costs about 8% more instructions per message on a small-message echo; off, nothing
        measurable. Takes effect from the next batch; settable at any time, thread-safe and
        callable from callbacks.
        """

    @time_callbacks.setter
    def time_callbacks(self, enabled: bool) -> None: ...

    def start(self) -> None:
        """Serves until :meth:`stop`, Ctrl+C or SIGTERM: blocks the calling thread, which
        runs every callback.

        Call it once, normally from the main thread (signals such as Ctrl+C are only seen
        there); not from a callback. Ctrl+C and SIGTERM stop the server cleanly (pending
        output flushed, ``on_close`` for every connection) and ``start()`` returns normally
        (SIGTERM is watched by ``pygev.Server.start`` unless the application set its own
        SIGTERM handler); ``SystemExit`` raised in a callback stops it and is re-raised
        here.

        Raises:
            RuntimeError: The server is already running, or was stopped.
            OSError: The loop threads could not be started.
        """

    def connect(
        self,
        address: str | tuple[str, int],
        handler: Handler | WebSocketHandler | None = None,
        protocol: Raw
        | LengthPrefix
        | Delimited
        | Protocol
        | WebSocket
        | CapsuleType
        | ProvidesProtocol
        | None = None,
        *,
        timeout: float = 10.0,
        tls: TLS | bool | None = None,
        server_hostname: str | None = None,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        subprotocols: Sequence[str] | None = None,
        origin: str | None = None,
    ) -> concurrent.futures.Future[Connection]:
        """Dials ``address`` from the server's loops (in turn).

        Once connected the connection is like an accepted one: the same callbacks (of
        ``handler``, or the server's), protocol, limits, idle timeout and stats, and
        :meth:`stop` drains and closes it. Callable before :meth:`start` (the request then
        waits for it), from any thread and from callbacks. A host name is resolved in the
        calling thread.

        A ``ws://`` or ``wss://`` URL dials a WebSocket server: the loop sends the upgrade
        request (a fresh random ``Sec-WebSocket-Key``), checks the 101 (accept key,
        ``Upgrade``/``Connection``, a subprotocol and extensions among those offered),
        then frames as a server's connection does, with every frame masked by a fresh
        random key. The handler (this one or the server's) is a
        :class:`WebSocketHandler`: ``on_connect`` after the handshake, ``on_message`` with
        ``str``/``bytes``, ``ping()``, ``close(code, reason)``, and the keepalive of the
        :class:`WebSocket` settings.

        Args:
            address: ``"host:port"``, a ``(host, port)`` tuple, ``"unix:/path"``,
                ``"unix:@name"``, or a ``ws://host[:port][/path][?query]`` or ``wss://``
                URL.
            handler: The connection's callbacks; default the server's.
            protocol: The connection's framing, as ``Server(protocol=...)`` takes it;
                default the server's. Only this connection is framed by it. For a
                WebSocket URL a :class:`WebSocket` (default ``WebSocket()``): its
                ``max_message_size``, keepalive and ``handshake_timeout``, and its
                compression settings as the client's offer (permessage-deflate when
                ``compression``, asking for ``server_no_context_takeover`` and
                ``server_max_window_bits`` below 15, promising
                ``client_no_context_takeover``, compressing with a window of at most
                ``client_max_window_bits``).
            timeout: Seconds the connect may take (with its TLS handshake).
            tls: Speak TLS: ``True`` verifies the server against the system's roots, a
                :class:`TLS` against its ``ca_file`` and may present its certificate.
                The connection is announced once the handshake completed; a failed one
                fails the future (``ConnectionAbortedError`` naming the reason).
            server_hostname: The name the server's certificate must have, sent as SNI
                (default: the host of ``address``).
            headers: WebSocket URLs only: more header fields for the upgrade request, a
                mapping or ``(name, value)`` pairs (not ``Host``, ``Upgrade``,
                ``Connection``, ``Origin``, ``Content-Length``, ``Transfer-Encoding`` nor
                ``Sec-WebSocket-*``).
            subprotocols: WebSocket URLs only: subprotocols to offer, in order of
                preference; the one chosen is ``conn.subprotocol``.
            origin: WebSocket URLs only: the ``Origin`` header.

        Returns:
            A future that resolves to the :class:`Connection` once connected (just before
            ``on_connect``), or fails with the ``OSError`` of the connect:
            ``ConnectionRefusedError``, ``TimeoutError`` after ``timeout``,
            ``FileNotFoundError`` (no such socket file), or ``ConnectionAbortedError`` when
            the server stopped first. A failed connect leaves no descriptor open.
            Cancelling the future before it resolves closes the connection without
            callbacks. ``asyncio.wrap_future`` makes it awaitable. For a WebSocket URL it
            resolves once the upgrade was accepted, and fails with
            :class:`WebSocketHandshakeError` when it was refused or answered wrongly, or
            with ``TimeoutError`` after the :class:`WebSocket`'s ``handshake_timeout``.

        Raises:
            TypeError: ``address`` is not an address, ``handler`` lacks a callback, or
                ``tls`` is not a :class:`TLS`, a bool or ``None``.
            ValueError: ``address`` cannot be parsed, ``timeout`` is not positive, the
                connection would speak WebSocket without a ``ws://`` URL, a URL is not
                valid (a fragment, credentials, a bad port), ``tls`` is given with a plain
                ``ws://`` URL, a header or subprotocol cannot go into a request,
                ``headers``/``subprotocols``/``origin`` are given for another kind of
                address, ``server_hostname`` is given without ``tls``, no name can be told
                for TLS (a Unix socket without ``server_hostname``) or it is not a valid
                name, or a TLS file is missing, unreadable or does not match.
            RuntimeError: The server was stopped.
        """

    def _handler_awaits(self) -> bool:
        """Whether a handler callback is an ``async def``."""

    def _serve_start(self) -> int | None:
        """``serve()``'s first step: starts the loops; returns the descriptor that becomes
        readable when the dispatcher has work, or ``None`` when :meth:`stop` came first."""

    def _serve_turn(self) -> tuple[bool, float | None] | None:
        """One turn of ``serve()``: ``(again, next_timer)``, or ``None`` once stopped."""

    def stop(self) -> None:
        """Stops the server; :meth:`start` then returns.

        Stops accepting, handles what was already read, flushes pending output (bounded by
        ``drain_timeout``), calls ``on_close`` for every connection and closes every socket.
        WebSocket clients get a close frame (1001) first; a WebSocket connection whose
        handshake never completed gets no ``on_close`` (it got no ``on_connect``). Before
        :meth:`start` it just releases the listening socket. Thread-safe, callable from
        callbacks and signal handlers, idempotent.
        """

    def run_after(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Runs ``callback()`` once, ``delay`` seconds from now, on the dispatcher thread.

        Timer callbacks run like handler callbacks: one at a time, never concurrently with
        them. An exception is logged on the ``pygev`` logger. Thread-safe and callable from
        callbacks; may be called before :meth:`start`.

        Args:
            delay: Seconds from now, ``>= 0``.
            callback: Called with no arguments; its result is ignored.

        Returns:
            The timer; :meth:`Timer.cancel` stops it.

        Raises:
            ValueError: ``delay`` is negative or not finite.
            TypeError: ``callback`` is not callable.
            RuntimeError: The server is stopped.
        """

    def run_every(self, interval: float, callback: Callable[[], object]) -> Timer:
        """Runs ``callback()`` every ``interval`` seconds, on the dispatcher thread.

        The first run is ``interval`` seconds from now. A timer that falls behind skips
        runs rather than bursting. Timer callbacks run like handler callbacks: one at a time,
        never concurrently with them; an exception is logged on the ``pygev`` logger and the
        timer goes on. Thread-safe and callable from callbacks; may be called before
        :meth:`start`.

        Args:
            interval: Seconds between runs, ``> 0``.
            callback: Called with no arguments; its result is ignored.

        Returns:
            The timer; :meth:`Timer.cancel` stops it.

        Raises:
            ValueError: ``interval`` is not positive or not finite.
            TypeError: ``callback`` is not callable.
            RuntimeError: The server is stopped.
        """

    def stats(self) -> dict[str, Any]:
        """Counters, as a new dict.

        Keys: ``connections`` (open now), ``accepted``, ``dialed``, ``connect_failed``,
        ``closed``, ``bytes_in``, ``bytes_out``, ``messages_in``, ``loop_wakeups``,
        ``read_pauses`` (a connection's reading paused: its output over the high-water
        mark), ``input_pauses`` (its input waiting for the handler over 256 KiB),
        ``write_buffered``, ``events_dispatched`` (handler calls), ``batches_dispatched``,
        ``max_batch``, ``dispatch_pending`` (bytes, plus 128 per event, that the loops
        handed to Python and it has not handled yet; reading stops past
        ``dispatch_high_water``), ``dispatch_queue_depth`` (events queued that the
        dispatcher has not taken yet), ``timers_queued`` (timer entries held, cancelled
        ones included until they are dropped) (integers);

        ``closed_by_reason``: ``closed`` by the cause that began each close (the counts add
        up to ``closed``): ``"peer"`` (its EOF, a reset, its WebSocket close),
        ``"local"`` (``conn.close()``, a callback that raised, a handshake
        ``on_handshake`` refused), ``"stop"`` (the server stopped), ``"idle"``
        (``idle_timeout``), ``"timeout"`` (``frame_timeout``, the WebSocket handshake
        timeout, an unanswered keepalive ping), ``"protocol"`` (a malformed or oversized
        frame or message, bad UTF-8, ``max_input_buffer``), ``"abort"`` (reset for
        anything else: ``max_write_buffer``, a framing that failed to pack, a
        :class:`Protocol` that raised), ``"error"`` (a socket error other than the
        peer's reset), ``"tls"`` (closed during its TLS handshake); a PROXY protocol
        header that is malformed counts as ``"protocol"``, one that is late as
        ``"timeout"``;

        ``refused_by_reason``: connections reset before they counted as accepted:
        ``"untrusted_proxy"`` (``proxy_protocol`` is on and the peer is not in
        ``trusted_proxies``), ``"tls_handshakes"`` (``tls_max_handshakes`` were going on);

        ``callback_durations``: a histogram of callback times (see
        :attr:`time_callbacks`; its counts stay as they were while that is off):
        ``"buckets"``, a list of
        ``(upper_bound_seconds, count)`` with cumulative counts, bounds 1 µs to 8.4 s
        doubling, then ``inf``; ``"count"``; ``"sum"`` in seconds;

        and ``loops``: a list with the loop counters per loop (``connections`` to
        ``write_buffered``, ``closed_by_reason``, ``refused_by_reason`` and
        ``dispatch_pending``). Loop counters
        are zero before :meth:`start`. Thread-safe and callable from callbacks.

        Returns:
            The counters.
        """

@final
class WebSocket:
    """WebSocket (RFC 6455) with permessage-deflate (RFC 7692), run in the loop threads.

    Give it as ``protocol=`` with a :class:`~pygev.WebSocketHandler` (it is that handler's
    default). The loops answer the upgrade request (or hold it for the handler's
    ``on_handshake``), check every frame, reassemble fragmented messages, validate UTF-8,
    inflate and deflate, answer pings and the closing handshake. Bad input fails only its
    connection, with close code 1002 (protocol error), 1007 (bad UTF-8) or 1009 (too big);
    a bad upgrade request gets HTTP 400, 426 or 431.

    Args:
        max_message_size: The largest message accepted, after reassembly and inflation.
        compression: Accept permessage-deflate when a client offers it.
        compression_threshold: Messages shorter than this go out uncompressed.
        server_no_context_takeover: Reset the server's compressor after each message.
        client_no_context_takeover: Ask clients to reset theirs after each message.
        server_max_window_bits: The server's compression window, 9 to 15.
        client_max_window_bits: The largest window a client may use, 9 to 15 (default 12:
            an idle connection keeps at most this window of the client's context; a client
            that allows no limit is asked for ``client_no_context_takeover`` instead, unless
            this is 15).
        max_request_size: The largest upgrade request, in bytes.
        max_headers: The most header fields in an upgrade request.
        ping_interval: Ping a client silent for this many seconds (``None``: never). On by
            default, as in ``websockets``: a peer that vanished without a FIN is found.
        ping_timeout: Close (1011) a pinged client silent this many more seconds. A client
            that takes output we queued counts as heard from.
        handshake_timeout: Close a connection whose upgrade request is not complete (and
            answered) this many seconds after it was accepted.

    For a client (``Server.connect("ws://...", protocol=WebSocket(...))``) the same
    settings read from the other side: ``compression`` offers permessage-deflate, asking
    the server for ``server_no_context_takeover`` and ``server_max_window_bits`` (below 15)
    and promising ``client_no_context_takeover``; the client compresses with a window of at
    most ``client_max_window_bits``; ``ping_interval`` and ``ping_timeout`` watch the
    server; ``handshake_timeout`` counts from the upgrade request sent to the server's
    complete answer. ``max_request_size`` and ``max_headers`` do not apply (a response
    head holds at most 16 KiB and 64 fields).

    Immutable: one instance may be shared by several servers and threads.
    """

    def __new__(
        cls,
        *,
        max_message_size: int = 16777216,
        compression: bool = True,
        compression_threshold: int = 64,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int = 15,
        client_max_window_bits: int = 12,
        max_request_size: int = 8192,
        max_headers: int = 64,
        ping_interval: float | None = 20.0,
        ping_timeout: float = 20.0,
        handshake_timeout: float = 10.0,
    ) -> Self: ...
    @property
    def max_message_size(self) -> int:
        """The largest message accepted, in bytes."""

    @property
    def compression(self) -> bool:
        """Whether permessage-deflate is accepted."""

    @property
    def ping_interval(self) -> float | None:
        """Seconds of silence after which a client is pinged (``None``: never)."""

    @property
    def ping_timeout(self) -> float:
        """Seconds a pinged client may stay silent before it is closed (1011)."""

@final
class WebSocketRequest:
    """A client's upgrade request, as ``on_handshake(conn, request)`` sees it."""

    @property
    def path(self) -> str:
        """The request target's path, e.g. ``"/chat"``."""

    @property
    def query(self) -> str | None:
        """What follows ``?`` in the request target, or ``None``."""

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Every header field in order, as ``(name, value)`` with lower-case names."""

    @property
    def origin(self) -> str | None:
        """The ``Origin`` header, or ``None``."""

    @property
    def subprotocols(self) -> list[str]:
        """The subprotocols the client offered, in its order of preference."""

    def header(self, name: str, default: str | None = None) -> str | None:
        """The value of header ``name`` (any case), or ``default``; repeated fields are
        joined with ``", "``."""

@final
class HttpRequest:
    """A plain HTTP request on a WebSocket port (not an upgrade; a load balancer's health
    check, say), as ``on_http_request(conn, request)`` sees it."""

    @property
    def method(self) -> str:
        """``"GET"``, ``"HEAD"``, ... as sent."""

    @property
    def path(self) -> str:
        """The request target's path, e.g. ``"/healthz"``."""

    @property
    def query(self) -> str | None:
        """What follows ``?`` in the request target, or ``None``."""

    @property
    def version(self) -> str:
        """``"HTTP/1.0"`` or ``"HTTP/1.1"``."""

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Every header field in order, as ``(name, value)`` with lower-case names."""

    def header(self, name: str, default: str | None = None) -> str | None:
        """The value of header ``name`` (any case), or ``default``; repeated fields are
        joined with ``", "``."""

@type_check_only
class ProvidesProtocol(_TypingProtocol):
    """An object that hands over a plugin's capsule (see docs/plugins.md)."""

    def __pygev_protocol__(self) -> CapsuleType: ...

def _length_prefix_plugin(
    header_size: int = 4,
    byteorder: str = "big",
    max_frame_size: int = 16777216,
    panic_on: bytes | None = None,
) -> CapsuleType:
    """A capsule holding pygev's length-prefix framing built as a Rust plugin through the C
    ABI (tests and benchmarks compare it with :class:`LengthPrefix`). ``panic_on``: a frame
    or payload equal to it makes the plugin panic (tests of the boundary)."""

def _register_classes(
    *,
    protocol: type[Protocol],
    websocket_handler: type[WebSocketHandler],
    accept: type[Accept],
    reject: type[Reject],
    response: type[Response],
    resume: Callable[[Any, Any], Any],
    wake: Callable[[Any, BaseException | None], None],
    ready: Any,
) -> None:
    """Called once by ``pygev/__init__.py``: the package's classes the compiled module
    recognises, and the helper an awaiting callback goes on with (it never imports the
    package itself)."""

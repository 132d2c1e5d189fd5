"""TLS in the loops: configuration errors, every framing over TCP and Unix sockets with
Python's ``ssl`` clients (TLS 1.2 and 1.3, client certificates), ``websockets`` over wss://,
``openssl s_client``, what ``conn.tls`` reports, SNI, reloads under load, outgoing TLS to a
Python ``ssl`` server, close_notify, truncation, and each bad input with a bystander that
keeps working. Certificates are made at test time (trustme)."""

from __future__ import annotations

import asyncio
import datetime
import os
import random
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
import websockets
from conftest import WAIT, LineFraming, LogCapture, ServerThread, recv_exactly, wait_until

import pygev

pytestmark = pytest.mark.timeout(120)

Serve = Callable[..., ServerThread]


@dataclass
class Pki:
    """A CA, a server certificate for localhost and 127.0.0.1, a client certificate, and
    their files."""

    ca: trustme.CA
    dir: Path
    ca_file: str
    certfile: str
    keyfile: str
    client_certfile: str
    client_keyfile: str
    client_der: bytes

    def issue(
        self, name: str, *identities: str, ca: trustme.CA | None = None, **kw: Any
    ) -> tuple[str, str]:
        """A new certificate (by this CA, or `ca`) for `identities`, as (certfile, keyfile)."""
        cert = (ca or self.ca).issue_cert(*identities, **kw)
        certfile, keyfile = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
        cert.private_key_pem.write_to_path(str(keyfile))
        return str(certfile), str(keyfile)

    def client_context(self, **kw: Any) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        for name, value in kw.items():
            setattr(ctx, name, value)
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("pki")
    ca_file = str(folder / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    pki = Pki(ca, folder, ca_file, "", "", "", "", b"")
    pki.certfile, pki.keyfile = pki.issue("server", "localhost", "127.0.0.1", "::1")
    pki.client_certfile, pki.client_keyfile = pki.issue("client", "client.example")
    pem = Path(pki.client_certfile).read_text()
    first = pem[pem.index("-----BEGIN CERTIFICATE-----") :]
    first = first[: first.index("-----END CERTIFICATE-----") + 25]
    pki.client_der = ssl.PEM_cert_to_DER_cert(first)
    return pki


class Echo(pygev.Handler):
    def __init__(self) -> None:
        self.conns: list[pygev.Connection] = []
        self.infos: list[pygev.TLSInfo | None] = []

    def on_connect(self, conn: pygev.Connection) -> None:
        self.conns.append(conn)
        self.infos.append(conn.tls)

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> bytes:
        return data


def tls_connect(
    server: ServerThread, ctx: ssl.SSLContext, hostname: str = "localhost"
) -> ssl.SSLSocket:
    raw = server.connect()
    return ctx.wrap_socket(raw, server_hostname=hostname)


def echo(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload


# ---- configuration --------------------------------------------------------------------


def test_missing_unreadable_and_mismatched_files_fail_at_server(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ValueError, match=r"nope\.pem"):
        pygev.Server(Echo(), "127.0.0.1:0", tls=pygev.TLS(missing, pki.keyfile))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"garbage\.pem"):
        pygev.Server(Echo(), "127.0.0.1:0", tls=pygev.TLS(str(garbage), pki.keyfile))
    with pytest.raises(ValueError, match=r"garbage\.pem"):
        pygev.Server(Echo(), "127.0.0.1:0", tls=pygev.TLS(pki.certfile, str(garbage)))
    # A key that is not the certificate's.
    with pytest.raises(ValueError, match=r"server\.pem|client\.key|match"):
        pygev.Server(Echo(), "127.0.0.1:0", tls=pygev.TLS(pki.certfile, pki.client_keyfile))
    with pytest.raises(ValueError, match="certfile"):
        pygev.Server(Echo(), "127.0.0.1:0", tls=pygev.TLS(ca_file=pki.ca_file))
    with pytest.raises(ValueError, match="client_auth"):
        pygev.TLS(pki.certfile, pki.keyfile, client_auth="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_version"):
        pygev.TLS(pki.certfile, pki.keyfile, min_version="1.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keyfile"):
        pygev.TLS(pki.certfile)
    with pytest.raises(ValueError, match="ca_file"):
        pygev.Server(
            Echo(), "127.0.0.1:0", tls=pygev.TLS(pki.certfile, pki.keyfile, client_auth="required")
        )


def test_an_encrypted_key_needs_its_password(pki: Pki, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(pki.keyfile).read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    with pytest.raises(ValueError, match=r"encrypted\.key"):
        pygev.Server(Echo(), "127.0.0.1:0", tls=pygev.TLS(pki.certfile, str(encrypted)))
    with pytest.raises(ValueError, match=r"encrypted\.key"):
        tls = pygev.TLS(pki.certfile, str(encrypted), password="wrong")
        pygev.Server(Echo(), "127.0.0.1:0", tls=tls)
    tls = pygev.TLS(pki.certfile, str(encrypted), password=b"s3cret")
    server = ServerThread(Echo(), tls=tls).start()
    try:
        with tls_connect(server, pki.client_context()) as sock:
            echo(sock, b"unlocked")
    finally:
        server.stop()


# ---- every framing, TCP and Unix sockets ----------------------------------------------


def frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


FRAMINGS: dict[str, tuple[Callable[[], Any], Callable[[bytes], bytes]]] = {
    "raw": (pygev.Raw, lambda d: d),
    "length-prefix": (pygev.LengthPrefix, frame),
    "delimited": (lambda: pygev.Delimited(b"\n"), lambda d: d + b"\n"),
    "python-protocol": (LineFraming, lambda d: d + b"\n"),
    "plugin": (
        lambda: pygev._pygev._length_prefix_plugin(2),
        lambda d: struct.pack(">H", len(d)) + d,
    ),
}


@pytest.mark.parametrize("framing", list(FRAMINGS))
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_echo_over_tls_with_every_framing(
    serve: Serve, pki: Pki, tmp_path: Path, framing: str, transport: str
) -> None:
    make, wire = FRAMINGS[framing]
    address = "127.0.0.1:0" if transport == "tcp" else f"unix:{tmp_path}/tls.sock"
    handler = Echo()
    server = serve(handler, address, protocol=make(), tls=pygev.TLS(pki.certfile, pki.keyfile))
    with tls_connect(server, pki.client_context()) as sock:
        for size in (1, 100, 5000, 60000):
            payload = bytes(random.Random(size).randrange(97, 123) for _ in range(size))
            echo(sock, wire(payload))
    info = handler.infos[0]
    assert info is not None and info.version == "TLSv1.3"


# ---- Python's ssl clients: versions, client certificates, conn.tls --------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_python_ssl_clients_of_each_version(
    serve: Serve, pki: Pki, version: ssl.TLSVersion
) -> None:
    handler = Echo()
    tls = pygev.TLS(pki.certfile, pki.keyfile, alpn=["h2", "http/1.1"])
    server = serve(handler, tls=tls)
    ctx = pki.client_context(maximum_version=version)
    ctx.set_alpn_protocols(["http/1.1"])
    with tls_connect(server, ctx) as sock:
        echo(sock, b"versions")
        negotiated = sock.version()
        assert sock.selected_alpn_protocol() == "http/1.1"
    assert (
        negotiated
        == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    )
    info = handler.infos[0]
    assert info is not None
    assert info.version == negotiated
    assert info.alpn == "http/1.1"
    assert info.server_name == "localhost"
    assert info.peer_certificate is None
    assert info.cipher  # e.g. TLS13_AES_256_GCM_SHA384


def test_plain_connections_have_no_tls(serve: Serve) -> None:
    handler = Echo()
    server = serve(handler)
    with server.connect() as sock:
        echo(sock, b"plain")
    assert handler.infos == [None]


@pytest.mark.parametrize("client_auth", ["optional", "required"])
def test_client_certificates(
    serve: Serve, pki: Pki, client_auth: str, pygev_log: LogCapture
) -> None:
    handler = Echo()
    tls = pygev.TLS(pki.certfile, pki.keyfile, ca_file=pki.ca_file, client_auth=client_auth)  # type: ignore[arg-type]
    server = serve(handler, tls=tls)
    ctx = pki.client_context()
    ctx.load_cert_chain(pki.client_certfile, pki.client_keyfile)
    with tls_connect(server, ctx) as sock:
        echo(sock, b"with a certificate")
    info = handler.infos[0]
    assert info is not None and info.peer_certificate == pki.client_der
    # Without a certificate: served when optional, refused when required.
    with tls_connect(server, pki.client_context()) as sock:
        if client_auth == "optional":
            echo(sock, b"without one")
            assert handler.infos[-1] is not None and handler.infos[-1].peer_certificate is None
        else:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                echo(sock, b"without one")
            pygev_log.wait_for("TLS handshake with")


def test_sni_picks_the_certificate(serve: Serve, pki: Pki) -> None:
    other_cert, other_key = pki.issue("other", "other.test")
    handler = Echo()
    tls = pygev.TLS(pki.certfile, pki.keyfile, sni={"other.test": (other_cert, other_key)})
    server = serve(handler, tls=tls)
    with tls_connect(server, pki.client_context(), "other.test") as sock:
        echo(sock, b"by name")
        assert ("DNS", "other.test") in sock.getpeercert()["subjectAltName"]
    with tls_connect(server, pki.client_context(), "localhost") as sock:
        echo(sock, b"default")
        assert ("DNS", "localhost") in sock.getpeercert()["subjectAltName"]
    names = [info.server_name if info else None for info in handler.infos]
    assert names == ["other.test", "localhost"]


# ---- real peers: websockets over wss://, openssl s_client -----------------------------


class WsEcho(pygev.WebSocketHandler):
    def on_message(self, conn: pygev.Connection, data: str | bytes) -> str | bytes:
        return data


def test_websockets_client_over_wss(serve: Serve, pki: Pki) -> None:
    server = serve(WsEcho(), tls=pygev.TLS(pki.certfile, pki.keyfile))

    async def main() -> list[Any]:
        ctx = pki.client_context()
        async with websockets.connect(f"wss://localhost:{server.port}/", ssl=ctx) as ws:
            got = []
            for message in ["hello", b"\x00binary", "x" * 100_000]:
                await ws.send(message)
                got.append(await ws.recv())
            return got

    assert asyncio.run(main()) == ["hello", b"\x00binary", "x" * 100_000]


def test_websockets_client_over_wss_on_a_unix_socket(
    serve: Serve, pki: Pki, tmp_path: Path
) -> None:
    server = serve(WsEcho(), f"unix:{tmp_path}/wss.sock", tls=pygev.TLS(pki.certfile, pki.keyfile))
    assert server.unix is not None
    path = server.unix.removeprefix("unix:")

    async def main() -> Any:
        ctx = pki.client_context()
        async with websockets.unix_connect(
            path, "wss://localhost/", ssl=ctx, server_hostname="localhost"
        ) as ws:
            await ws.send("over a Unix socket")
            return await ws.recv()

    assert asyncio.run(main()) == "over a Unix socket"


def test_openssl_s_client(serve: Serve, pki: Pki) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        assert os.environ.get("CI") != "true", "openssl is missing (scripts/test.sh installs it)"
        pytest.skip("openssl is not installed")

    class EchoThenClose(pygev.Handler):
        def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
            conn.send(data)
            conn.close()  # s_client ends when the server does

    tls = pygev.TLS(pki.certfile, pki.keyfile)
    server = serve(EchoThenClose(), protocol=pygev.Delimited(b"\n"), tls=tls)
    result = subprocess.run(
        [
            openssl,
            "s_client",
            "-connect",
            f"127.0.0.1:{server.port}",
            "-CAfile",
            pki.ca_file,
            "-servername",
            "localhost",
            "-verify_return_error",
            "-quiet",
        ],
        input=b"through openssl\n",
        capture_output=True,
        timeout=WAIT,
    )
    assert result.stdout == b"through openssl\n", result.stderr


# ---- many connections, random splits, reloads -----------------------------------------


def test_echo_integrity_through_200_concurrent_tls_connections(serve: Serve, pki: Pki) -> None:
    server = serve(Echo(), num_loops=2, tls=pygev.TLS(pki.certfile, pki.keyfile))
    ctx = pki.client_context()

    async def client(n: int) -> None:
        rng = random.Random(n)
        payload = rng.randbytes(rng.randrange(1, 200_000))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=ctx, server_hostname="localhost"
        )
        sent = 0
        while sent < len(payload):
            step = rng.choice([1, 7, 100, 1500, 16_384, 50_000])
            writer.write(payload[sent : sent + step])
            sent += step
            if rng.random() < 0.3:
                await writer.drain()
        got = await reader.readexactly(len(payload))
        assert got == payload
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        await asyncio.gather(*(client(n) for n in range(200)))

    asyncio.run(asyncio.wait_for(main(), WAIT * 4))


def test_reload_under_load_swaps_certificates_for_new_connections(serve: Serve, pki: Pki) -> None:
    server = serve(Echo(), num_loops=2, tls=pygev.TLS(pki.certfile, pki.keyfile))
    ctx = pki.client_context()
    before = tls_connect(server, ctx)
    first_der = before.getpeercert(binary_form=True)
    new_cert, new_key = pki.issue("renewed", "localhost", "127.0.0.1")
    stop = threading.Event()
    failures: list[BaseException] = []
    seen: set[bytes] = set()

    def load() -> None:
        while not stop.is_set():
            try:
                with tls_connect(server, ctx) as sock:
                    echo(sock, b"under load")
                    seen.add(sock.getpeercert(binary_form=True) or b"")
            except BaseException as exc:
                failures.append(exc)
                return

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(0.3)
    server.server.reload_tls(pygev.TLS(new_cert, new_key))
    time.sleep(0.3)
    stop.set()
    for worker in workers:
        worker.join(WAIT)
    assert not failures, failures
    with tls_connect(server, ctx) as after:
        echo(after, b"renewed")
        assert after.getpeercert(binary_form=True) != first_der
    assert len(seen) == 2, "connections got the old certificate, then the new one"
    echo(before, b"kept its own")  # made before the reload: still served
    before.close()
    with pytest.raises(ValueError, match=r"missing\.pem"):
        server.server.reload_tls(pygev.TLS(str(pki.dir / "missing.pem"), new_key))
    with tls_connect(server, ctx) as still:
        echo(still, b"a failed reload keeps the certificates in use")


# ---- outgoing TLS ----------------------------------------------------------------------


class PythonTlsServer:
    """A Python ssl echo server (one thread per connection) that answers b"re:" + data."""

    def __init__(self, certfile: str, keyfile: str) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(certfile, keyfile)
        self.ctx.set_alpn_protocols(["h2", "http/1.1"])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.errors: list[BaseException] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as sock:
                while data := sock.recv(65536):
                    sock.sendall(b"re:" + data)
        except (ssl.SSLError, OSError) as exc:
            self.errors.append(exc)

    def close(self) -> None:
        self.listener.close()


class Dialer(pygev.Handler):
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def on_connect(self, conn: pygev.Connection) -> None:
        conn.send(b"ping")

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
        self.got.append(data)


def test_outgoing_tls_to_a_python_ssl_server(serve: Serve, pki: Pki) -> None:
    peer = PythonTlsServer(pki.certfile, pki.keyfile)
    server = serve(Echo(), None)
    try:
        dialer = Dialer()
        tls = pygev.TLS(ca_file=pki.ca_file, alpn=["http/1.1"])
        conn = server.server.connect(
            f"127.0.0.1:{peer.port}", handler=dialer, tls=tls, server_hostname="localhost"
        ).result(WAIT)
        wait_until(lambda: dialer.got, what="the reply")
        assert b"".join(dialer.got) == b"re:ping"
        info = conn.tls
        assert info is not None and info.version == "TLSv1.3"
        assert info.alpn == "http/1.1"  # offered by us, chosen by the server
        # The address's host is the name by default: 127.0.0.1 is in the certificate.
        conn = server.server.connect(f"127.0.0.1:{peer.port}", handler=Dialer(), tls=tls).result(
            WAIT
        )
        assert conn.tls is not None
        # A name the certificate does not have, and roots that do not trust it.
        with pytest.raises(ConnectionAbortedError, match="certificate"):
            server.server.connect(
                f"127.0.0.1:{peer.port}", handler=Dialer(), tls=tls, server_hostname="wrong.test"
            ).result(WAIT)
        with pytest.raises(ConnectionAbortedError, match=r"certificate|issuer"):
            server.server.connect(f"127.0.0.1:{peer.port}", handler=Dialer(), tls=True).result(WAIT)
    finally:
        peer.close()


def test_outgoing_tls_to_pygev_with_a_client_certificate(serve: Serve, pki: Pki) -> None:
    handler = Echo()
    tls = pygev.TLS(pki.certfile, pki.keyfile, ca_file=pki.ca_file, client_auth="required")
    server = serve(handler, tls=tls)
    dialer = Dialer()
    client_tls = pygev.TLS(pki.client_certfile, pki.client_keyfile, ca_file=pki.ca_file)
    server.server.connect(
        f"127.0.0.1:{server.port}", handler=dialer, tls=client_tls, server_hostname="localhost"
    ).result(WAIT)
    wait_until(lambda: b"".join(dialer.got) == b"ping", what="the echo")
    accepted = [info for info in handler.infos if info is not None and info.peer_certificate]
    assert accepted and accepted[0].peer_certificate == pki.client_der
    assert accepted[0].server_name == "localhost"  # the SNI our client sent


@pytest.mark.parametrize("framing", ["length-prefix", "python-protocol", "plugin"])
def test_outgoing_tls_over_a_unix_socket_with_its_own_framing(
    serve: Serve, pki: Pki, tmp_path: Path, framing: str
) -> None:
    make, _ = FRAMINGS[framing]
    tls = pygev.TLS(pki.certfile, pki.keyfile)
    server = serve(Echo(), f"unix:{tmp_path}/tls.sock", protocol=make(), tls=tls)
    assert server.unix is not None
    dialer = Dialer()
    conn = server.server.connect(
        server.unix,
        handler=dialer,
        protocol=make(),
        tls=pygev.TLS(ca_file=pki.ca_file),
        server_hostname="localhost",
    ).result(WAIT)
    wait_until(lambda: dialer.got, what="the echo")
    assert dialer.got == [b"ping"]  # one whole frame, both ways framed
    assert conn.tls is not None and conn.tls.server_name == "localhost"


# ---- closing: close_notify both ways, truncation --------------------------------------


class Closes(pygev.Handler):
    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
        conn.send(b"bye")
        conn.close()


class ShutsDown(pygev.Handler):
    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
        conn.send(b"bye")
        conn.shutdown_write()


@pytest.mark.parametrize("handler", [Closes, ShutsDown], ids=["close", "shutdown_write"])
def test_close_and_shutdown_write_send_close_notify(
    serve: Serve, pki: Pki, handler: type[pygev.Handler]
) -> None:
    server = serve(handler(), tls=pygev.TLS(pki.certfile, pki.keyfile))
    raw = server.connect()
    # Strict about the end: an EOF without close_notify raises SSLEOFError.
    with pki.client_context().wrap_socket(
        raw, server_hostname="localhost", suppress_ragged_eofs=False
    ) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 3) == b"bye"
        assert sock.recv(10) == b""  # close_notify, after what was sent before it


def test_a_peer_without_close_notify_raises_for_a_strict_client() -> None:
    """The check the test above relies on: a TLS server that ends with a bare FIN makes a
    strict client raise (so a missing close_notify would be seen there)."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_one() -> None:
        raw, _ = listener.accept()
        tls = server_ctx.wrap_socket(raw, server_side=True)
        tls.sendall(b"bye")
        os.close(tls.detach())  # the TCP end, no close_notify

    thread = threading.Thread(target=serve_one)
    thread.start()
    with client_ctx.wrap_socket(
        socket.create_connection(listener.getsockname(), timeout=WAIT),
        server_hostname="localhost",
        suppress_ragged_eofs=False,
    ) as sock:
        assert recv_exactly(sock, 3) == b"bye"
        with pytest.raises(ssl.SSLEOFError):
            sock.recv(10)
    thread.join(WAIT)
    listener.close()


class Recorder(pygev.Handler):
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = threading.Event()

    def on_message(self, conn: pygev.Connection, ctx: object, data: bytes) -> None:
        self.data += data

    def on_close(self, conn: pygev.Connection) -> None:
        self.closed.set()


def test_a_truncated_stream_is_logged_and_never_taken_as_data(
    serve: Serve, pki: Pki, pygev_log: LogCapture
) -> None:
    handler = Recorder()
    server = serve(handler, tls=pygev.TLS(pki.certfile, pki.keyfile))
    ctx = pki.client_context()
    sock = tls_connect(server, ctx)
    sock.sendall(b"whole record")
    wait_until(lambda: bytes(handler.data) == b"whole record", what="the first record")
    # Part of the next record, then the TCP connection ends without close_notify.
    tcp = socket.socket(fileno=sock.detach())
    tcp.sendall(b"\x17\x03\x03\x00\x40" + b"\x00" * 10)  # an application-data record, cut
    tcp.shutdown(socket.SHUT_WR)  # (a close with the session tickets unread would reset)
    assert handler.closed.wait(WAIT)
    tcp.close()
    pygev_log.wait_for("ended without close_notify inside a record")
    assert bytes(handler.data) == b"whole record"


# ---- bad input closes only that connection --------------------------------------------


@pytest.fixture
def guarded(serve: Serve, pki: Pki) -> Iterator[tuple[ServerThread, ssl.SSLSocket]]:
    """A TLS echo server (client certificates required, TLS 1.3 only, a short handshake
    timeout) and a bystander connection that must keep working. The connections refused
    never reach the handler, and the counters add up."""
    tls = pygev.TLS(
        pki.certfile,
        pki.keyfile,
        ca_file=pki.ca_file,
        client_auth="required",
        min_version="1.3",
        handshake_timeout=0.5,
    )
    server = serve(Echo(), num_loops=1, tls=tls)
    ctx = pki.client_context()
    ctx.load_cert_chain(pki.client_certfile, pki.client_keyfile)
    bystander = tls_connect(server, ctx)
    echo(bystander, b"before")
    yield server, bystander
    echo(bystander, b"after")
    assert len(server.handler.conns) == 1, "a refused connection reached on_connect"
    stats = server.stats()
    assert stats["connections"] == 1
    assert stats["accepted"] == stats["closed"] + 1
    bystander.close()


def test_stop_with_connections_in_their_handshake(serve: Serve, pki: Pki) -> None:
    handler = Echo()
    server = serve(handler, tls=pygev.TLS(pki.certfile, pki.keyfile))
    silent = [server.connect() for _ in range(5)]  # connected, no ClientHello
    wait_until(lambda: server.stats()["accepted"] == 5, what="the accepts")
    server.stop()  # prompt: nothing to drain, no callbacks
    assert handler.conns == []
    for sock in silent:
        sock.close()


def test_handshakes_past_max_handshakes_are_refused(
    serve: Serve, pki: Pki, pygev_log: LogCapture
) -> None:
    """A loop runs at most max_handshakes at once: clients that never finish theirs
    cannot take the loop's memory; the next is refused, established connections go on,
    and a handshake slot freed is taken again."""
    handler = Echo()
    tls = pygev.TLS(pki.certfile, pki.keyfile, max_handshakes=3)
    server = serve(handler, num_loops=1, tls=tls)
    ctx = pki.client_context()
    established = tls_connect(server, ctx)
    echo(established, b"before")
    silent = [server.connect() for _ in range(3)]  # in their handshake, for ever
    wait_until(lambda: server.stats()["accepted"] == 4, what="the accepts")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with tls_connect(server, ctx) as refused:
            echo(refused, b"no room")
    assert "tls_max_handshakes" in pygev_log.wait_for("TLS handshakes in progress").getMessage()
    echo(established, b"still served")
    silent.pop().close()  # its handshake ends: a slot is free
    wait_until(lambda: server.stats()["closed"] == 1, what="the close")
    with tls_connect(server, ctx) as admitted:
        echo(admitted, b"admitted")
    for sock in silent:
        sock.close()
    established.close()


def test_a_dial_timeout_covers_the_handshake(serve: Serve) -> None:
    mute = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never answers
    server = serve(Echo(), None)
    try:
        started = time.monotonic()
        future = server.server.connect(
            mute.getsockname(), handler=Dialer(), tls=True, server_hostname="localhost", timeout=0.5
        )
        with pytest.raises(TimeoutError):
            future.result(WAIT)
        assert time.monotonic() - started < WAIT
        assert server.stats()["connect_failed"] == 1
        assert server.stats()["dialed"] == 0
    finally:
        mute.close()


def test_server_hostname_needs_tls(serve: Serve) -> None:
    server = serve(Echo(), None)
    with pytest.raises(ValueError, match="server_hostname"):
        server.server.connect("127.0.0.1:9", server_hostname="localhost")
    with pytest.raises(TypeError, match="tls"):
        server.server.connect("127.0.0.1:9", tls="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="server_hostname"):
        server.server.connect("unix:/tmp/nowhere.sock", tls=True)


def loop_wakeups(server: ServerThread) -> int:
    return int(server.stats()["loop_wakeups"])


def assert_quiet(server: ServerThread) -> None:
    """The loop does not spin: idle, it wakes only for its own timers."""
    before = loop_wakeups(server)
    time.sleep(0.3)
    assert loop_wakeups(server) - before < 50


def test_plaintext_on_a_tls_port(
    pygev_log: LogCapture, guarded: tuple[ServerThread, ssl.SSLSocket]
) -> None:
    server, bystander = guarded
    with server.connect() as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        got = plain.recv(100)  # a TLS alert (or nothing), never an HTTP answer
        assert not got.startswith(b"HTTP")
    record = pygev_log.wait_for("TLS handshake with")
    assert "failed" in record.getMessage()
    echo(bystander, b"still served")
    assert_quiet(server)


def test_garbage_records(
    pygev_log: LogCapture, guarded: tuple[ServerThread, ssl.SSLSocket]
) -> None:
    server, bystander = guarded
    with server.connect() as garbage:
        garbage.sendall(bytes(random.Random(5).randrange(256) for _ in range(4096)))
        try:
            garbage.recv(100)
        except ConnectionError:
            pass
    pygev_log.wait_for("TLS handshake with")
    echo(bystander, b"still served")
    assert_quiet(server)


def refused(server: ServerThread, ctx: ssl.SSLContext, pygev_log: LogCapture) -> str:
    """Connects with `ctx`, expects the handshake to fail, returns the server's log line."""
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with tls_connect(server, ctx) as sock:
            echo(sock, b"let me in")
    return pygev_log.wait_for("TLS handshake with").getMessage().lower()


def test_a_client_certificate_from_the_wrong_ca(
    pygev_log: LogCapture, guarded: tuple[ServerThread, ssl.SSLSocket], pki: Pki
) -> None:
    server, bystander = guarded
    stranger_cert, stranger_key = pki.issue("stranger", "client.example", ca=trustme.CA())
    ctx = pki.client_context()
    ctx.load_cert_chain(stranger_cert, stranger_key)
    assert "unknownissuer" in refused(server, ctx, pygev_log)
    echo(bystander, b"still served")


def test_an_expired_client_certificate(
    pygev_log: LogCapture, guarded: tuple[ServerThread, ssl.SSLSocket], pki: Pki
) -> None:
    server, bystander = guarded
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    expired_cert, expired_key = pki.issue(
        "expired", "client.example", not_before=past, not_after=past + datetime.timedelta(days=1)
    )
    ctx = pki.client_context()
    ctx.load_cert_chain(expired_cert, expired_key)
    assert "expired" in refused(server, ctx, pygev_log)
    echo(bystander, b"still served")


def test_an_unsupported_version(
    pygev_log: LogCapture, guarded: tuple[ServerThread, ssl.SSLSocket], pki: Pki
) -> None:
    server, bystander = guarded
    ctx = pki.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    assert "version" in refused(server, ctx, pygev_log)
    echo(bystander, b"still served")


def test_a_silent_client_is_closed_at_the_handshake_timeout(
    pygev_log: LogCapture, guarded: tuple[ServerThread, ssl.SSLSocket]
) -> None:
    server, bystander = guarded
    with server.connect() as silent:
        silent.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and no more
        pygev_log.wait_for("did not complete its TLS handshake")
        silent.settimeout(WAIT)
        try:
            assert silent.recv(10) == b""
        except ConnectionResetError:
            pass
    echo(bystander, b"still served")
    assert server.stats()["connections"] == 1  # the bystander only

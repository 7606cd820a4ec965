"""The WMS client's aiohttp transport: httpx2's exceptions for aiohttp's failures, the URL sent as
encoded, connections capped, reused and closed, the session closed with the app.

Servers here are raw asyncio servers on 127.0.0.1 written for each failure (every byte on the
wire is the test's); tests/test_fault_matrix.py checks the statuses the service answers.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import httpx2
import pytest
from asgi_lifespan import LifespanManager

from satapi.app import create_app, make_http_client
from satapi.config import Settings
from satapi.providers.netguard import GuardedResolver
from satapi.providers.transport import AiohttpTransport
from tests.support.fault_upstream import FaultUpstream

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[int]:
    """A raw HTTP server on 127.0.0.1 running `handler` per connection; yields its port."""

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def client(port: int, *, read: float = 2.0, pool: float = 5.0, cap: int = 8) -> httpx2.AsyncClient:
    """An httpx2 client over the transport, 127.0.0.1:`port` trusted (an operator's provider)."""
    guard = GuardedResolver([("127.0.0.1", port), ("localhost", port)], lookup_timeout_s=1.0)
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(connect=1.0, read=read, write=read, pool=pool),
        transport=AiohttpTransport(max_connections=cap, guard=guard),
    )


async def fetch(http: httpx2.AsyncClient, url: str) -> bytes:
    async with http.stream("GET", url) as response:
        return b"".join([chunk async for chunk in response.aiter_bytes()])


async def _close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def _not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)


async def _short_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(HEAD + b"Content-Length: 1000\r\n\r\n" + b"x" * 100)
    await writer.drain()


async def _reset_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(HEAD + b"Content-Length: 100000\r\n\r\n" + b"x" * 1000)
    await writer.drain()
    await asyncio.sleep(0.05)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(5)


async def _stall_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(HEAD + b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
    await writer.drain()
    await asyncio.sleep(5)


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        # httpcore2 raised the same class for each (the service's status follows the family:
        # TimeoutException 504, NetworkError / RemoteProtocolError 502).
        (_close_at_once, httpx2.RemoteProtocolError),
        (_not_http, httpx2.RemoteProtocolError),
        (_short_body, httpx2.RemoteProtocolError),
        (_reset_mid_body, httpx2.ReadError),
        (_silent, httpx2.ReadTimeout),
        (_stall_mid_body, httpx2.ReadTimeout),
    ],
)
async def test_aiohttp_failures_become_httpcore2s_exceptions(
    handler: Handler, expected: type[Exception]
) -> None:
    async with serve(handler) as port, client(port, read=0.3) as http:
        with pytest.raises(expected):
            await fetch(http, f"http://127.0.0.1:{port}/wms")


async def test_a_refused_connection_is_a_connect_error_not_a_timeout() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens once it is closed
    async with client(port) as http:
        for host in ("127.0.0.1", "localhost"):
            with pytest.raises(httpx2.ConnectError):
                await fetch(http, f"http://{host}:{port}/wms")


@pytest.mark.parametrize(
    ("lookup", "expected"),
    [
        ("fails", httpx2.ConnectError),  # NXDOMAIN: an upstream error (502), as before
        ("hangs", httpx2.ConnectTimeout),  # counts against the connect timeout (504)
    ],
)
async def test_lookup_failures(lookup: str, expected: type[Exception]) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        if lookup == "hangs":
            await asyncio.sleep(5)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    guard = GuardedResolver([], resolver=resolve, lookup_timeout_s=0.2)
    transport = AiohttpTransport(max_connections=2, guard=guard)
    async with httpx2.AsyncClient(transport=transport, timeout=5.0) as http:
        with pytest.raises(expected):
            await fetch(http, "http://unknown.example/wms")


async def test_waiting_for_a_free_connection_times_out() -> None:
    async with serve(_silent) as port, client(port, read=3.0, pool=0.2, cap=1) as http:
        url = f"http://127.0.0.1:{port}/wms"
        first = asyncio.create_task(fetch(http, url))
        await asyncio.sleep(0.1)  # holds the only connection
        with pytest.raises(httpx2.TimeoutException):
            await fetch(http, url)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_the_url_is_sent_as_httpx2_encoded_it() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(HEAD + b"Content-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()

    params = {"BBOX": "45,10,47,14", "CRS": "EPSG:4326", "STYLES": "", "TIME": "2024-06-01/P1D"}
    async with serve(record) as port, client(port) as http:
        request = http.build_request("GET", f"http://127.0.0.1:{port}/wms", params=params)
        response = await http.send(request)
        assert response.content == b"ok"
    head = seen[0].decode()
    assert head.startswith(f"GET {request.url.raw_path.decode()} HTTP/1.1\r\n"), head
    assert "BBOX=45%2C10%2C47%2C14" in head and "CRS=EPSG%3A4326" in head
    sent = [line for line in head.split("\r\n")[1:] if line]
    assert f"User-Agent: {request.headers['user-agent']}" in sent  # httpx2's, not aiohttp's
    assert len([line for line in sent if line.lower().startswith("user-agent:")]) == 1


async def test_connections_are_reused_and_capped() -> None:
    connections = 0
    active = 0
    most = 0

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections, active, most
        connections += 1
        active += 1
        most = max(most, active)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await asyncio.sleep(0.02)
                writer.write(HEAD + b"Content-Length: 2\r\n\r\nok")
                await writer.drain()
        finally:
            active -= 1

    async with serve(keep_alive) as port, client(port, cap=4) as http:
        url = f"http://127.0.0.1:{port}/wms"
        bodies = await asyncio.gather(*(fetch(http, url) for _ in range(40)))
        assert bodies == [b"ok"] * 40
        assert most <= 4 and connections == 4  # capped, and kept alive between requests


async def test_an_unread_body_closes_its_connection() -> None:
    connections = 0

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(HEAD + b"Content-Length: 1000000\r\n\r\n" + b"x" * 1_000_000)
            await writer.drain()

    async with serve(big) as port, client(port) as http:
        url = f"http://127.0.0.1:{port}/wms"
        for _ in range(2):
            async with http.stream("GET", url) as response:
                async for _chunk in response.aiter_bytes():
                    break  # e.g. over the byte limit: the rest is never read
        assert connections == 2  # the half-read connection was not reused


async def test_the_session_is_made_by_the_first_request_and_closed_with_the_client() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with FaultUpstream() as upstream:
            guard = GuardedResolver([("127.0.0.1", upstream.port)])
            transport = AiohttpTransport(max_connections=2, guard=guard)
            assert transport._session is None  # nothing opened before a request
            async with httpx2.AsyncClient(transport=transport) as http:
                await fetch(http, upstream.mode_url("ok") + "?WIDTH=8&HEIGHT=8")
                session = transport._session
                assert isinstance(session, aiohttp.ClientSession) and not session.closed
            assert session.closed and transport._session is None
            with pytest.raises(RuntimeError):
                await transport.handle_async_request(httpx2.Request("GET", upstream.url))
        del session, transport, http
        gc.collect()
    assert not [w for w in caught if "nclosed" in str(w.message)], [str(w) for w in caught]


async def test_the_app_closes_its_session_at_shutdown(tmp_path: Path) -> None:
    with FaultUpstream() as upstream:
        settings = Settings(
            data_dir=tmp_path / "data",
            default_provider="fault",
            providers={"fault": {"url": upstream.wms_url, "default_layer": "ok"}},
            anthropic_api_key=None,
        )
        app = create_app(settings)
        async with LifespanManager(app) as manager:
            resources = app.state.resources
            async with httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=manager.app), base_url="http://satapi.test"
            ) as c:
                body = {"bbox": [10, 45, 12, 46], "width": 32, "height": 16}
                assert (await c.post("/api/images", json=body)).status_code == 200
            transport = resources.http._transport
            assert isinstance(transport, AiohttpTransport)
            session = transport._session
            assert session is not None and not session.closed
        assert session.closed  # the lifespan closed it


def test_the_factory_uses_a_given_transport_with_the_same_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, anthropic_api_key=None, max_concurrent_wms=7)
    mock = httpx2.MockTransport(lambda request: httpx2.Response(204))
    injected = make_http_client(settings, transport=mock)
    real = make_http_client(settings)
    assert injected._transport is mock
    assert isinstance(real._transport, AiohttpTransport) and real._transport._limit == 7
    for http in (injected, real):
        assert http.follow_redirects is False and http.trust_env is False
        assert http.headers["user-agent"].startswith("satapi/")
        assert http.timeout.connect == settings.wms_connect_timeout_s
        assert http.timeout.read == settings.wms_read_timeout_s
        assert http.timeout.pool == settings.wms_total_timeout_s


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for `localhost` only (and its key), signed by itself."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_tls_certificates_and_host_names_are_verified(tmp_path: Path) -> None:
    import ssl

    cert_file, key_file = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_file, key_file)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + b"Content-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    trusted = [("localhost", port), ("127.0.0.1", port)]
    trusting = ssl.create_default_context(cafile=str(cert_file))
    try:
        # The system's CAs (the default): a self-signed certificate is refused.
        async with httpx2.AsyncClient(
            transport=AiohttpTransport(max_connections=2, guard=GuardedResolver(trusted))
        ) as http:
            with pytest.raises(httpx2.ConnectError):
                await fetch(http, f"https://localhost:{port}/wms")
        async with httpx2.AsyncClient(
            transport=AiohttpTransport(
                max_connections=2, guard=GuardedResolver(trusted), verify=trusting
            )
        ) as http:
            assert await fetch(http, f"https://localhost:{port}/wms") == b"ok"
            with pytest.raises(httpx2.ConnectError):  # the certificate does not name 127.0.0.1
                await fetch(http, f"https://127.0.0.1:{port}/wms")
    finally:
        server.close()
        await server.wait_closed()

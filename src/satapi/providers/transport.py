"""The WMS HTTP client's transport: aiohttp's connection pool and HTTP parser under httpx2's API.

The service's code talks to an `httpx2.AsyncClient` (timeouts, streaming, the exception tree);
this transport does the I/O with aiohttp, which cost less CPU per download than httpcore2's
pools (`python -m bench.clientab`, docs/performance.md). It follows the `httpx-aiohttp`
package's transport, with what satapi needs on top:

* aiohttp's exceptions mapped to the httpx2 ones httpcore2 raises for the same failure (a
  refused connection or a failed lookup is a `ConnectError`, not a timeout), see `_mapped`;
* the connect-time SSRF guard as the connector's resolver (`netguard.GuardedResolver`, no DNS
  cache), and IP-literal hosts checked before anything is sent;
* the URL sent exactly as httpx2 encoded it, no cookies kept, no proxies from the environment;
* the aiohttp session made on the first request (it needs the running loop) and closed by
  `aclose()` (the app's lifespan).

aiohttp has no write timeout (requests here are a GET or a small POST) and no per-host
keep-alive count: up to `max_connections` connections, idle ones closed after 5 s like httpx2.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx2
from multidict import CIMultiDict
from yarl import URL

from satapi.providers.netguard import AddressNotAllowed, GuardedResolver

KEEPALIVE_EXPIRY_S = 5.0  # httpx2.Limits()'s default
# aiohttp stops reading a connection once 2 x this is buffered (the rest waits in the kernel).
# Its default, 64 KiB, took bench scenario 5 (100 concurrent 4096² PNGs) from 146-156 MB peak
# RSS with httpcore2 to 221-238 MB; 16 KiB: 166 MB, at the same CPU.
READ_BUFSIZE = 16 * 1024


@functools.cache
def default_tls() -> ssl.SSLContext:
    """The default TLS settings (certifi's CA bundle), made once per process: loading the bundle
    costs ~30 ms of CPU, and one context serves every client and thread."""
    return httpx2.create_ssl_context(trust_env=False)


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport over one `aiohttp.ClientSession` of up to `max_connections`.

    `guard` checks where connections go (the WMS client, whose hosts users may name); None for
    a client that talks only to an operator-configured endpoint (the Anthropic API), which then
    uses aiohttp's own resolver and DNS cache.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        guard: GuardedResolver | None,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        self._limit = max_connections
        self._guard = guard
        self._tls = verify if verify is not None else default_tls()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        # Made on the first request, on the running loop (aiohttp binds to it); nothing to close
        # when the app never sent a request.
        if self._closed:
            raise RuntimeError("The transport has been closed.")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                ssl=self._tls,
                resolver=self._guard,
                # Every new connection asks the guard: a cached answer would skip the check.
                use_dns_cache=self._guard is None,
                keepalive_timeout=KEEPALIVE_EXPIRY_S,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # httpx2's client keeps cookies, if any
                trust_env=False,  # no proxies or .netrc from the environment
                auto_decompress=False,  # httpx2 decodes Content-Encoding
                requote_redirect_url=False,
                read_bufsize=READ_BUFSIZE,
            )
        return self._session

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send `request` through aiohttp; the response body streams from the connection."""
        session = self._open()
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        if self._guard is not None and _is_ip_literal(host):
            self._guard.check_literal(host, port)
        timeout = request.extensions.get("timeout", {})
        connect, pool = timeout.get("connect"), timeout.get("pool")
        content = await request.aread()
        try:
            response = await session.request(
                request.method,
                URL(str(request.url), encoded=True),  # as httpx2 encoded it, not requoted
                headers=CIMultiDict(
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in request.headers.raw  # names as written, not lowercased
                ),
                data=content or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    # Waiting for a free connection, then connecting (the lookup included).
                    connect=None if connect is None or pool is None else connect + pool,
                    sock_connect=connect,
                    sock_read=timeout.get("read"),
                ),
            )
        except aiohttp.InvalidURL as exc:
            # aiohttp refuses legacy numeric hosts (2130706433, 127.1) that the OS would map to
            # an address; refused like an internal address unless it is the operator's.
            if self._guard is None or self._guard.is_trusted(host, port):
                raise httpx2.ConnectError(str(exc)) from exc
            raise AddressNotAllowed(host, "a non-canonical numeric address") from exc
        except Exception as exc:
            raise _mapped(exc) from exc
        return httpx2.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("ascii", "replace"),
            },
        )

    async def aclose(self) -> None:
        """Close the session and its connections (once; later requests are refused)."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Body(httpx2.AsyncByteStream):
    """A response body read from aiohttp as it arrives, errors mapped like the request's."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except Exception as exc:
            raise _mapped(exc) from exc

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # the connection goes back to the pool
        else:
            self._response.close()  # an unread rest: the connection is closed, never reused


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _mapped(exc: Exception) -> Exception:
    """The httpx2 exception httpcore2 raises for the failure aiohttp reported as `exc`.

    What matters to the service is the family: a `TimeoutException` is a 504
    `upstream_timeout`; `NetworkError` and `RemoteProtocolError` are a 502 `upstream_error`.
    Anything that is not aiohttp's (the SSRF guard's `AddressNotAllowed`) passes unchanged.
    """
    message = str(exc) or type(exc).__name__
    kind: type[httpx2.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = httpx2.ConnectTimeout  # no free connection, or no connection, in time
    elif isinstance(exc, aiohttp.SocketTimeoutError):
        kind = httpx2.ReadTimeout  # no byte for `read` seconds, head or body
    elif isinstance(exc, aiohttp.ServerTimeoutError):
        kind = httpx2.ReadTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):
        kind = httpx2.ConnectError  # refused, unreachable, lookup failed, TLS handshake failed
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        kind = httpx2.RemoteProtocolError  # closed before a complete answer
    elif isinstance(exc, aiohttp.ClientPayloadError):
        # The body broke off: a reset connection is a read error (as httpcore2 reports it),
        # anything else an incomplete or malformed message. aiohttp keeps the socket's error
        # only in the message; either way the service answers 502 `upstream_error`.
        reset = "ConnectionResetError" in message
        kind = httpx2.ReadError if reset else httpx2.RemoteProtocolError
    elif isinstance(exc, aiohttp.ClientResponseError):
        kind = httpx2.RemoteProtocolError  # an answer that is not valid HTTP
    elif isinstance(exc, aiohttp.ClientError | OSError):
        kind = httpx2.ReadError  # a reset or broken connection
    elif isinstance(exc, asyncio.TimeoutError):
        kind = httpx2.ReadTimeout
    else:
        return exc
    return kind(message)

"""The connect-time SSRF guard: names are resolved once, checked, and connected to by address.

`UrlPolicy` decides which origins may be fetched by looking at the URL alone. A name in
`allowed_hosts` can still resolve to an internal address (or to a public one for the check and an
internal one for the connection: DNS rebinding). `GuardedNetworkBackend` sits under httpcore2's
connection pools: for every new connection to a host that is not an operator-configured
provider, it resolves the name once, refuses when any answer is a loopback, private,
link-local, shared, multicast, reserved or unspecified address (cloud metadata endpoints are
link-local or private), and connects to the checked address itself, so no second lookup can
answer differently. TLS still verifies the certificate against the host name (httpcore2 passes
the URL's host as the server name to `start_tls`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore2
from httpcore2 import AsyncNetworkBackend, AsyncNetworkStream

# (host, port) -> addresses, in the resolver's order. A seam: tests answer with a resolver of
# their own (the real one is `system_resolver`).
Resolver = Callable[[str, int], Awaitable[list[str]]]
SocketOption = Any  # httpcore2's SOCKET_OPTION union, not exported


class AddressNotAllowed(Exception):
    """A host resolved to an address the service never connects to; nothing was sent."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host!r} resolves to {address}, an internal address")
        self.host = host
        self.address = address


def is_public_address(address: str) -> bool:
    """True for a globally routable unicast address (IPv4 inside IPv6 forms checked too)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        if any(v4 is not None and not is_public_address(str(v4)) for v4 in embedded):
            return False
    # is_global excludes loopback, RFC 1918 / fc00::/7, link-local (169.254.169.254 and other
    # metadata endpoints), 100.64/10 (shared; Alibaba's metadata), documentation, benchmarking,
    # reserved and unspecified ranges; multicast is "global" to ipaddress, so refused here.
    return ip.is_global and not ip.is_multicast


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to now, via the operating system (in a worker thread)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    seen: dict[str, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


class GuardedNetworkBackend(AsyncNetworkBackend):
    """httpcore2 network backend that checks where a connection really goes.

    `trusted` holds the (host, port) pairs of operator-configured providers: those may point
    anywhere (a MapServer on 127.0.0.1) and are connected to as usual. Every other host is
    resolved once with `resolver`; if any answer is not a public address the connection is
    refused with `AddressNotAllowed` (before any byte is sent), otherwise the checked addresses
    are tried in order.
    """

    def __init__(
        self,
        trusted: Iterable[tuple[str, int]],
        *,
        resolver: Resolver = system_resolver,
        inner: AsyncNetworkBackend | None = None,
    ) -> None:
        self._trusted = frozenset((host.lower().strip("[]"), port) for host, port in trusted)
        self._resolve = resolver
        self._inner: AsyncNetworkBackend = inner if inner is not None else httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore2's interface)
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> AsyncNetworkStream:
        """Connect to a checked address of `host` (or to a trusted provider as configured)."""
        if (host.lower().strip("[]"), port) in self._trusted:
            return await self._inner.connect_tcp(
                host, port, timeout=timeout, local_address=local_address,
                socket_options=socket_options,
            )  # fmt: skip
        addresses = await self._lookup(host, port, timeout)
        for address in addresses:
            if not is_public_address(address):
                raise AddressNotAllowed(host, address)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options,
                )  # fmt: skip
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                last = exc  # the next address may answer
        assert last is not None
        raise last

    async def _lookup(self, host: str, port: int, limit: float | None) -> list[str]:
        # The lookup counts against the connect timeout, and its failures are connect errors
        # (retried like any unreachable server).
        try:
            async with asyncio.timeout(limit):
                addresses = await self._resolve(host, port)
        except TimeoutError:
            raise httpcore2.ConnectTimeout(f"Looking up {host!r} timed out.") from None
        except OSError as exc:
            raise httpcore2.ConnectError(f"{host!r} could not be resolved ({exc}).") from None
        if not addresses:
            raise httpcore2.ConnectError(f"{host!r} resolved to no address.")
        return addresses

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore2's interface)
        socket_options: Iterable[SocketOption] | None = None,
    ) -> AsyncNetworkStream:
        """Never used (no `uds` transport); refused rather than passed through unchecked."""
        raise AddressNotAllowed(path, "a Unix socket")

    async def sleep(self, seconds: float) -> None:
        """Delegates to the inner backend (used between httpcore2's connect retries)."""
        await self._inner.sleep(seconds)

"""The connect-time SSRF guard: names are resolved once, checked, and connected to by address.

`UrlPolicy` decides which origins may be fetched by looking at the URL alone. A name in
`allowed_hosts` can still resolve to an internal address (or to a public one for the check and an
internal one for the connection: DNS rebinding). `GuardedResolver` is the resolver of the WMS
client's aiohttp connector (`satapi.providers.transport`): for every new connection to a host
that is not an operator-configured provider, it resolves the name once, refuses when any answer
is a loopback, private, link-local, shared, multicast, reserved or unspecified address (cloud
metadata endpoints are link-local or private), and hands aiohttp the checked addresses, which
aiohttp connects to without a second lookup (its DNS cache is off, so every connection asks
again). TLS still verifies the certificate against the host name (aiohttp passes the URL's
host as the server name). aiohttp never asks a resolver about an IP literal, so the transport
checks those with `check_literal` before anything is sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import ThreadedResolver
from aiohttp.abc import AbstractResolver, ResolveResult

# (host, port) -> addresses, in the resolver's order. A seam: tests answer with a resolver of
# their own (the real one is `system_resolver`).
Resolver = Callable[[str, int], Awaitable[list[str]]]


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


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that checks where a connection really goes.

    `trusted` holds the (host, port) pairs of operator-configured providers: those may point
    anywhere (a MapServer on 127.0.0.1) and are resolved by aiohttp's usual resolver, unchecked.
    Every other host is resolved once with `resolver`; if any answer is not a public address the
    connection is refused with `AddressNotAllowed` (before any byte is sent), otherwise aiohttp
    gets the checked addresses to connect to. A lookup slower than `lookup_timeout_s` (the
    connect timeout) is a `TimeoutError` (aiohttp's connect timeout); a failed one an `OSError`
    (aiohttp's DNS error).
    """

    def __init__(
        self,
        trusted: Iterable[tuple[str, int]],
        *,
        resolver: Resolver = system_resolver,
        lookup_timeout_s: float | None = None,
    ) -> None:
        self._trusted = frozenset((_bare(host), port) for host, port in trusted)
        self._resolve = resolver
        self._timeout = lookup_timeout_s
        self._plain: ThreadedResolver | None = None

    def is_trusted(self, host: str, port: int) -> bool:
        """True for an operator-configured provider's host and port (never checked)."""
        return (_bare(host), port) in self._trusted

    def check_literal(self, host: str, port: int) -> None:
        """Refuse an IP-literal host (which needs no lookup) that is not a public address."""
        if not self.is_trusted(host, port) and not is_public_address(_bare(host)):
            raise AddressNotAllowed(host, _bare(host))

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses aiohttp may connect to for `host` (checked unless trusted)."""
        if self.is_trusted(host, port):
            if self._plain is None:
                self._plain = ThreadedResolver()
            return await self._plain.resolve(host, port, family)
        addresses = await self._lookup(host, port)
        for address in addresses:
            if not is_public_address(address):
                raise AddressNotAllowed(host, address)
        results: list[ResolveResult] = []
        for address in addresses:
            kind = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family in (socket.AF_UNSPEC, kind):
                results.append(
                    ResolveResult(
                        hostname=host, host=address, port=port, family=kind, proto=0,
                        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                    )
                )  # fmt: skip
        if not results:
            raise OSError(f"{host!r} has no address of the family asked for.")
        return results

    async def _lookup(self, host: str, port: int) -> list[str]:
        # The lookup counts against the connect timeout: aiohttp turns this TimeoutError into
        # its connect timeout, and an OSError into its DNS error (a connect error).
        try:
            async with asyncio.timeout(self._timeout):
                addresses = await self._resolve(host, port)
        except TimeoutError:
            raise TimeoutError(f"Looking up {host!r} timed out.") from None
        if not addresses:
            raise OSError(f"{host!r} resolved to no address.")
        return addresses

    async def close(self) -> None:
        """Release aiohttp's resolver used for trusted hosts, if one was made."""
        if self._plain is not None:
            await self._plain.close()


def _bare(host: str) -> str:
    return host.lower().strip("[]")

"""Which URLs the service will fetch: configured providers and `allowed_hosts`, nothing else."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from satapi.config import ProviderConfig, url_origin
from satapi.errors import UrlNotAllowed

Origin = tuple[str, str, int]


@dataclass(frozen=True)
class UrlMatch:
    """The provider (or allowed host) a URL belongs to."""

    source: str  # provider name, or the allowed host's origin as text
    provider: ProviderConfig | None


def _is_internal(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host in ("localhost", "localhost.localdomain") or host.endswith(".localhost")
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


def _parse_allowed(entry: str) -> Origin:
    return url_origin(entry if "://" in entry else f"https://{entry}")


class UrlPolicy:
    """Decides whether a client-supplied or redirect URL may be fetched.

    A URL is allowed when its scheme, host and port equal those of a configured provider or of an
    `allowed_hosts` entry. A loopback, link-local or private address is allowed only when it is
    exactly a configured provider's host and port (never through `allowed_hosts`).
    """

    def __init__(self, providers: Mapping[str, ProviderConfig], allowed_hosts: Iterable[str]):
        self._providers: dict[Origin, tuple[str, ProviderConfig]] = {}
        for name, provider in providers.items():
            self._providers.setdefault(provider.origin, (name, provider))
        self._hosts: set[Origin] = {_parse_allowed(h) for h in allowed_hosts}

    def check(self, url: str) -> UrlMatch:
        """Return what `url` belongs to, or raise `UrlNotAllowed` without fetching anything."""
        try:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            if scheme not in ("http", "https"):
                raise UrlNotAllowed(f"Only http and https URLs can be fetched, not {scheme!r}.")
            if parts.username is not None or parts.password is not None or "@" in parts.netloc:
                raise UrlNotAllowed("URLs with user information (user@host) are not fetched.")
            origin = url_origin(url)
        except UrlNotAllowed:
            raise
        except ValueError:
            raise UrlNotAllowed("The URL could not be parsed as an absolute http(s) URL.") from None
        if origin in self._providers:
            name, provider = self._providers[origin]
            return UrlMatch(source=name, provider=provider)
        if origin in self._hosts and not _is_internal(origin[1]):
            return UrlMatch(source=f"{origin[0]}://{origin[1]}:{origin[2]}", provider=None)
        same_host = sorted(f"{o[0]}://{o[1]}:{o[2]}" for o in self._hosts if o[1] == origin[1])
        if same_host and not _is_internal(origin[1]):
            # An allowed host on another scheme or port: the usual slip is a bare entry (https,
            # 443) for a plain-http server. Say what is allowed (these are public origins).
            raise UrlNotAllowed(
                f"The host {origin[1]!r} is allowed only as {', '.join(same_host)}, not as "
                f"{origin[0]}://{origin[1]}:{origin[2]}."
            )
        raise UrlNotAllowed(
            f"The host {origin[1]!r} (port {origin[2]}) is not a configured provider or an "
            "allowed host."
        )

    def is_allowed(self, url: str) -> bool:
        """True when `check(url)` would pass."""
        try:
            self.check(url)
        except UrlNotAllowed:
            return False
        return True

"""The connect-time SSRF guard (`satapi.providers.netguard`) with a resolver the test controls.

The end-to-end proof over real sockets and real name resolution is tests/test_ssrf_dns.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpcore2
import pytest

from satapi.providers.netguard import AddressNotAllowed, GuardedNetworkBackend, is_public_address


class Recording(httpcore2.AsyncNetworkBackend):
    """An inner backend that records where it was asked to connect, and connects nowhere."""

    def __init__(self) -> None:
        self.connected: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        self.connected.append((host, port))
        return httpcore2.AsyncMockStream([b"HTTP/1.1 204 No Content\r\n\r\n"])


def scripted(*answers: list[str]) -> tuple[Any, list[str]]:
    """A resolver answering `answers` in turn (the last repeats), and the names it was asked."""
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return answers[min(len(asked) - 1, len(answers) - 1)]

    return resolve, asked


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("::1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.100.100.200", False),  # shared address space (Alibaba Cloud metadata)
        ("fd00:ec2::254", False),  # AWS metadata over IPv6
        ("fe80::1", False),
        ("224.0.0.1", False),
        ("ff02::1", False),
        ("0.0.0.0", False),
        ("240.0.0.1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:93.184.216.34", True),
        ("2002:7f00:1::", False),  # 6to4 wrapping 127.0.0.1
        ("not an address", False),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public_address(address) is public


async def test_connects_to_the_checked_address_after_one_lookup() -> None:
    resolve, asked = scripted(["93.184.216.34"], ["127.0.0.1"])
    inner = Recording()
    guard = GuardedNetworkBackend([], resolver=resolve, inner=inner)
    await guard.connect_tcp("rebind.example", 80)
    assert asked == ["rebind.example"]
    assert inner.connected == [("93.184.216.34", 80)]
    with pytest.raises(AddressNotAllowed):  # the next connection looks again
        await guard.connect_tcp("rebind.example", 80)
    assert inner.connected == [("93.184.216.34", 80)]


async def test_any_internal_answer_refuses_the_name() -> None:
    resolve, _ = scripted(["93.184.216.34", "10.0.0.1"])
    inner = Recording()
    guard = GuardedNetworkBackend([], resolver=resolve, inner=inner)
    with pytest.raises(AddressNotAllowed) as caught:
        await guard.connect_tcp("mixed.example", 80)
    assert caught.value.address == "10.0.0.1"
    assert inner.connected == []


async def test_a_configured_provider_is_connected_to_as_named_without_a_check() -> None:
    resolve, asked = scripted(["127.0.0.1"])
    inner = Recording()
    guard = GuardedNetworkBackend([("wms.internal", 8080)], resolver=resolve, inner=inner)
    await guard.connect_tcp("WMS.internal", 8080)
    assert asked == []
    assert inner.connected == [("WMS.internal", 8080)]
    with pytest.raises(AddressNotAllowed):  # the same host on another port is not the provider
        await guard.connect_tcp("wms.internal", 8081)


async def test_lookup_failures_are_connect_errors() -> None:
    async def broken(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    guard = GuardedNetworkBackend([], resolver=broken, inner=Recording())
    with pytest.raises(httpcore2.ConnectError):
        await guard.connect_tcp("nowhere.example", 80)

"""The connect-time SSRF guard (`satapi.providers.netguard`) with a resolver the test controls.

The guard is the aiohttp connector's resolver; these tests send real requests through the WMS
client's transport to servers on 127.0.0.1 (the "public" address is 127.0.0.1 here, by a
patched `is_public_address`). The end-to-end proof over real sockets and real name resolution
is tests/test_ssrf_dns.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from satapi.providers import netguard
from satapi.providers.netguard import AddressNotAllowed, GuardedResolver, is_public_address
from satapi.providers.transport import AiohttpTransport
from tests.support.fault_upstream import FaultUpstream


def scripted(*answers: list[str]) -> tuple[Any, list[str]]:
    """A resolver answering `answers` in turn (the last repeats), and the names it was asked."""
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return answers[min(len(asked) - 1, len(answers) - 1)]

    return resolve, asked


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultUpstream]:
    """A WMS on 127.0.0.1, which the guard treats as the one public address (127.0.0.2 not)."""
    real = netguard.is_public_address
    monkeypatch.setattr(netguard, "is_public_address", lambda a: a == "127.0.0.1" or real(a))
    with FaultUpstream() as server:
        yield server


def client(guard: GuardedResolver) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        transport=AiohttpTransport(max_connections=4, guard=guard), timeout=5.0
    )


async def get(http: httpx2.AsyncClient, host: str, port: int) -> int:
    response = await http.get(f"http://{host}:{port}/wms/ok?WIDTH=8&HEIGHT=8")
    return response.status_code


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


async def test_each_connection_is_checked_and_goes_to_the_checked_address(
    upstream: FaultUpstream,
) -> None:
    # DNS rebinding: public for the first lookup, internal for the next. aiohttp connects to
    # the address the guard returned (it could not look "rebind.example" up itself), and its DNS
    # cache is off, so the second connection asks again and is refused with nothing sent.
    resolve, asked = scripted(["127.0.0.1"], ["127.0.0.2"])
    async with client(GuardedResolver([], resolver=resolve)) as http:
        assert await get(http, "rebind.example", upstream.port) == 200
        with pytest.raises(AddressNotAllowed) as caught:
            await get(http, "rebind.example", upstream.port)
    assert caught.value.address == "127.0.0.2"
    assert asked == ["rebind.example", "rebind.example"]
    assert upstream.requests() == 1


async def test_rebinding_the_other_way_round_is_refused(upstream: FaultUpstream) -> None:
    resolve, asked = scripted(["127.0.0.2"], ["127.0.0.1"])
    async with client(GuardedResolver([], resolver=resolve)) as http:
        with pytest.raises(AddressNotAllowed):
            await get(http, "rebind.example", upstream.port)
    assert asked == ["rebind.example"] and upstream.requests() == 0


async def test_any_internal_answer_refuses_the_name(upstream: FaultUpstream) -> None:
    resolve, _ = scripted(["127.0.0.1", "10.0.0.1"])
    async with client(GuardedResolver([], resolver=resolve)) as http:
        with pytest.raises(AddressNotAllowed) as caught:
            await get(http, "mixed.example", upstream.port)
    assert caught.value.address == "10.0.0.1"
    assert upstream.requests() == 0


@pytest.mark.parametrize("host", ["127.0.0.2", "[::1]", "2130706433", "127.1"])
async def test_ip_literals_are_checked_without_a_lookup(upstream: FaultUpstream, host: str) -> None:
    # aiohttp never asks a resolver about an address; the transport checks it itself (and
    # aiohttp's refusal of legacy numeric forms is a refusal too, never a 500).
    resolve, asked = scripted(["127.0.0.1"])
    async with client(GuardedResolver([], resolver=resolve)) as http:
        with pytest.raises(AddressNotAllowed):
            await get(http, host, upstream.port)
    assert asked == [] and upstream.requests() == 0


async def test_a_configured_provider_is_connected_to_as_named_without_a_check(
    upstream: FaultUpstream,
) -> None:
    resolve, asked = scripted(["127.0.0.2"])
    guard = GuardedResolver([("LOCALHOST", upstream.port)], resolver=resolve)
    async with client(guard) as http:
        assert await get(http, "localhost", upstream.port) == 200  # the system's resolver
        assert asked == []
        with pytest.raises(AddressNotAllowed):  # the same host on another port is not the provider
            await get(http, "localhost", upstream.port + 1)
    assert asked == ["localhost"]


async def test_lookup_failures_are_connect_errors() -> None:
    async def broken(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    async def empty(host: str, port: int) -> list[str]:
        return []

    for resolver in (broken, empty):
        async with client(GuardedResolver([], resolver=resolver)) as http:
            with pytest.raises(httpx2.ConnectError):
                await get(http, "nowhere.example", 80)


async def test_the_resolver_answers_only_the_family_asked_for() -> None:
    resolve, _ = scripted(["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
    guard = GuardedResolver([], resolver=resolve)
    both = await guard.resolve("example.org", 443, socket.AF_UNSPEC)
    assert [(r["host"], r["hostname"], r["port"]) for r in both] == [
        ("93.184.216.34", "example.org", 443),
        ("2606:2800:220:1:248:1893:25c8:1946", "example.org", 443),
    ]
    v6 = await guard.resolve("example.org", 443, socket.AF_INET6)
    assert [r["family"] for r in v6] == [socket.AF_INET6]

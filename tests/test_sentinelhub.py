"""The `sentinelhub` provider kind against a fake Sentinel Hub on 127.0.0.1.

`tests.support.fake_sentinelhub.FakeSentinelHub` is a real HTTP server: an OAuth token endpoint
issuing short-lived random tokens and a Process API that checks the bearer token and the body
and answers a PNG of the requested size. The app runs in-process (ASGI) and reaches the fake
over real sockets. Proven here: the request body, the token cache (one token for 100
concurrent first requests, one refresh on expiry, one shared refresh on revocation), wrong
credentials, 429 handling, error JSON, the 2500 px limit (tiles beyond it), every route on
this provider, and no secret or token in any response, log record or stored file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from satapi.app import create_app
from satapi.config import Settings, load_settings
from satapi.coordination.local import LocalTokenCache
from satapi.errors import InvalidRequest
from satapi.providers.sentinelhub import CRS84, TRUE_COLOUR, build_target, process_request
from satapi.tokens import SharedTokenCache, Token, TokenCache
from satapi.wms_client import GetMapRequest
from tests.conftest import store_files
from tests.support.fake_sentinelhub import (
    CLIENT_ID,
    CLIENT_SECRET,
    Busy,
    Fail,
    FakeSentinelHub,
    Revoke,
)
from tests.support.shared_values import MemorySharedValues

BBOX = [13.35, 52.48, 13.45, 52.54]
BODY: dict[str, Any] = {"bbox": BBOX, "time": "2024-06-01", "width": 64, "height": 48}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSentinelHub]:
    with FakeSentinelHub() as server:
        yield server


@pytest.fixture
def sh(fake: FakeSentinelHub) -> FakeSentinelHub:
    fake.reset()
    fake.token_ttl_s = 600.0
    return fake


@pytest.fixture
def sh_settings(make_settings: Callable[..., Settings], sh: FakeSentinelHub) -> Settings:
    return make_settings(
        default_provider="sh",
        providers={"sh": sh.provider(max_concurrency=200)},
        max_concurrent_wms=200,
        retry_attempts=3,
        retry_wait_initial_s=0.01,
        retry_wait_max_s=0.5,
    )


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://satapi.test"
        ) as c,
    ):
        c.app = app  # type: ignore[attr-defined]
        yield c


@pytest.fixture
async def api(sh_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(sh_settings):
        yield c


def body(**over: Any) -> dict[str, Any]:
    return {**BODY, **over}


def shifted(i: int) -> list[float]:
    """A distinct bbox per i (distinct image ids, so no two requests share a download)."""
    d = i * 0.001
    return [BBOX[0] + d, BBOX[1], BBOX[2] + d, BBOX[3]]


def req(**over: Any) -> GetMapRequest:
    values: dict[str, Any] = {
        "layer": "sentinel-2-l2a",
        "bbox": (13.35, 52.48, 13.45, 52.54),
        "crs": "EPSG:4326",
        "width": 512,
        "height": 256,
        "time": "2024-06-01",
    }
    values.update(over)
    return GetMapRequest(**values)


def provider_config(**over: Any) -> Any:
    settings = load_settings(
        default_provider="gibs",
        providers={
            "sh": {
                "kind": "sentinelhub",
                "url": "https://sh.example",
                "token_url": "https://auth.example/token",
                "client_id": "id",
                "client_secret": "secret",
                **over,
            }
        },
    )
    return settings.providers["sh"]


# --- the request body ---------------------------------------------------------------------------


def test_body_fields_as_the_issue_specifies() -> None:
    sent = process_request(provider_config(), req())
    assert sent == {
        "input": {
            "bounds": {
                "bbox": [13.35, 52.48, 13.45, 52.54],
                "properties": {"crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"},
            },
            "data": [
                {
                    "type": "sentinel-2-l2a",
                    "dataFilter": {
                        "timeRange": {
                            "from": "2024-06-01T00:00:00Z",
                            "to": "2024-06-01T23:59:59Z",
                        },
                        "maxCloudCoverage": 100,
                        "mosaickingOrder": "leastCC",
                    },
                }
            ],
        },
        "output": {
            "width": 512,
            "height": 256,
            "responses": [{"identifier": "default", "format": {"type": "image/png"}}],
        },
        "evalscript": TRUE_COLOUR,
    }
    assert "B04" in TRUE_COLOUR and "B03" in TRUE_COLOUR and "2.5" in TRUE_COLOUR


@pytest.mark.parametrize(
    ("crs", "bbox", "url"),
    [
        ("CRS:84", (-10.0, 35.0, 5.0, 44.0), CRS84),
        ("EPSG:4326", (-10.0, 35.0, 5.0, 44.0), CRS84),  # lon/lat kept, never swapped
        (
            "EPSG:3857",
            (1486000.0, 6891000.0, 1497000.0, 6898000.0),
            "http://www.opengis.net/def/crs/EPSG/0/3857",
        ),
    ],
)
def test_crs_and_bbox(crs: str, bbox: tuple[float, ...], url: str) -> None:
    sent = process_request(provider_config(), req(crs=crs, bbox=bbox))
    assert sent["input"]["bounds"] == {"bbox": list(bbox), "properties": {"crs": url}}


@pytest.mark.parametrize(
    ("time", "expected"),
    [
        ("2024-06-01", ("2024-06-01T00:00:00Z", "2024-06-01T23:59:59Z")),
        ("2024-06-01/2024-06-30", ("2024-06-01T00:00:00Z", "2024-06-30T23:59:59Z")),
        (
            "2024-06-01T10:00:00Z/2024-06-02T12:30:00+02:00",
            ("2024-06-01T10:00:00Z", "2024-06-02T10:30:00Z"),
        ),
        ("2024-06-01T10:15:00Z", ("2024-06-01T10:15:00Z", "2024-06-01T10:15:00Z")),
    ],
)
def test_time_range(time: str, expected: tuple[str, str]) -> None:
    data = process_request(provider_config(), req(time=time))["input"]["data"][0]
    assert (data["dataFilter"]["timeRange"]["from"], data["dataFilter"]["timeRange"]["to"]) == (
        expected
    )


def test_no_time_is_the_last_30_days() -> None:
    sent = process_request(provider_config(), req(time=None), today=dt.date(2024, 6, 30))
    assert sent["input"]["data"][0]["dataFilter"]["timeRange"] == {
        "from": "2024-06-01T00:00:00Z",
        "to": "2024-06-30T23:59:59Z",
    }


def test_settings_reach_the_body() -> None:
    config = provider_config(
        collection="sentinel-2-l1c",
        evalscript="//VERSION=3\n// mine",
        max_cloud_coverage=20.5,
        mosaicking_order="mostRecent",
    )
    sent = process_request(config, req(layer="sentinel-2-l1c", format="image/jpeg"))
    data = sent["input"]["data"][0]
    assert data["type"] == "sentinel-2-l1c"
    assert data["dataFilter"]["maxCloudCoverage"] == 20.5
    assert data["dataFilter"]["mosaickingOrder"] == "mostRecent"
    assert sent["evalscript"] == "//VERSION=3\n// mine"
    assert sent["output"]["responses"][0]["format"] == {"type": "image/jpeg"}


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"crs": "EPSG:32633"}, "EPSG:3857"),
        ({"layer": "landsat-ot-l2"}, "sentinel-2-l2a"),
        ({"style": "x"}, "styles"),
        ({"time": "2024-06-30/2024-06-01"}, "ends before"),
    ],
)
def test_refused_before_any_call(over: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        process_request(provider_config(), req(**over))


def test_target_id_covers_the_body_and_names_no_secret() -> None:
    config = provider_config()
    a = build_target("sh", config, req())
    assert a.image_id == build_target("sh", config, req()).image_id  # canonical
    assert a.image_id != build_target("sh", config, req(time="2024-06-02")).image_id
    other_script = provider_config(evalscript="//VERSION=3\n// other")
    assert a.image_id != build_target("sh", other_script, req()).image_id
    assert a.endpoint == "https://sh.example/api/v1/process"
    assert json.loads(a.body or "") == process_request(config, req())
    assert "secret" not in a.url() and "collection=sentinel-2-l2a" in a.url()


# --- configuration -----------------------------------------------------------------------------


def test_builtins_stay_disabled_until_credentials() -> None:
    plain = load_settings()
    assert "cdse" not in plain.providers and "sentinelhub" not in plain.providers
    configured = load_settings(
        providers={"cdse": {"client_id": "me", "client_secret": "cdse-secret-value"}}
    )
    cdse = configured.providers["cdse"]
    assert cdse.kind == "sentinelhub"
    assert cdse.url == "https://sh.dataspace.copernicus.eu"
    assert cdse.token_url == (
        "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token"
    )
    assert cdse.layer == "sentinel-2-l2a"
    assert "cdse-secret-value" in configured.secrets
    assert "cdse-secret-value" not in repr(configured)
    hub = load_settings(providers={"sentinelhub": {"client_id": "a", "client_secret": "b"}})
    assert hub.providers["sentinelhub"].token_url == (
        "https://services.sentinel-hub.com/auth/realms/main/protocol/openid-connect/token"
    )


def test_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SATAPI_PROVIDERS", json.dumps({"cdse": {"client_id": "x", "client_secret": "y"}})
    )
    assert load_settings().providers["cdse"].has_credentials


@pytest.mark.parametrize(
    ("providers", "words"),
    [
        ({"cdse": {"client_id": "only-the-id"}}, "client_id and client_secret"),
        (
            {
                "mine": {
                    "kind": "sentinelhub",
                    "url": "https://x.example",
                    "token_url": "https://x.example/t",
                }
            },
            "client_id",
        ),
        (
            {
                "mine": {
                    "kind": "sentinelhub",
                    "url": "https://x.example",
                    "client_id": "a",
                    "client_secret": "b",
                }
            },
            "token_url",
        ),
        ({"mine": {"url": "https://x.example/wms"}}, "default_layer"),
        (
            {"mine": {"url": "https://x.example/wms", "default_layer": "a", "client_id": "x"}},
            "only for kind",
        ),
        ({"cdse": {"client_id": "a", "client_secret": "b", "default_layer": "x"}}, "collection"),
    ],
)
def test_bad_provider_settings(providers: dict[str, Any], words: str) -> None:
    from satapi.config import SettingsError

    with pytest.raises(SettingsError, match=words):
        load_settings(providers=providers)


# --- the token cache ---------------------------------------------------------------------------


# Every `TokenCache` implementation must pass these (add the Redis one, with a redis-server
# started by the test, when the scale-out backend lands).
def shared_cache() -> TokenCache:
    """A `SharedTokenCache` over the in-memory stand-in for Redis shared values."""
    return SharedTokenCache(MemorySharedValues().process())


TOKEN_CACHES: list[Callable[[], TokenCache]] = [LocalTokenCache, shared_cache]


@pytest.fixture(params=TOKEN_CACHES, ids=lambda f: getattr(f, "__name__", str(f)))
def cache(request: pytest.FixtureRequest) -> TokenCache:
    factory: Callable[[], TokenCache] = request.param
    return factory()


async def test_token_cache_single_flight_stale_and_cancellation(cache: TokenCache) -> None:
    calls = 0

    async def issue() -> Token:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return Token.issued(f"t{calls}", 600)

    waiters = [asyncio.create_task(cache.get("k", issue)) for _ in range(50)]
    await asyncio.sleep(0.01)
    waiters[0].cancel()  # one caller leaving does not cancel the issue for the others
    results = await asyncio.gather(*waiters[1:])
    assert calls == 1 and {t.value for t in results} == {"t1"}
    # Many callers refused for t1 share one refresh; a late one gets the new token as it is.
    refreshed = await asyncio.gather(*(cache.get("k", issue, stale="t1") for _ in range(20)))
    assert calls == 2 and {t.value for t in refreshed} == {"t2"}
    assert (await cache.get("k", issue, stale="t1")).value == "t2" and calls == 2
    assert "t2" not in repr(refreshed[0])


async def test_token_cache_failure_reaches_every_waiter_and_is_not_kept(
    cache: TokenCache,
) -> None:
    calls = 0

    async def issue() -> Token:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        raise RuntimeError("refused")

    results = await asyncio.gather(
        *(cache.get("k", issue) for _ in range(10)), return_exceptions=True
    )
    assert calls == 1 and all(isinstance(r, RuntimeError) for r in results)
    with pytest.raises(RuntimeError):
        await cache.get("k", issue)
    assert calls == 2


async def test_a_fleet_over_shared_values_asks_once_per_expiry() -> None:
    """Five processes (five `SharedTokenCache`s over one store), 100 concurrent first requests:
    one token; every process refused for it: one refresh; after the refresh time: one more."""
    store = MemorySharedValues()
    fleet = [SharedTokenCache(store.process()) for _ in range(5)]
    calls = 0

    async def issue() -> Token:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return Token.issued(f"t{calls}", 1.0)  # refreshed 0.1 s before its 1 s run out

    first = await asyncio.gather(*(fleet[i % 5].get("k", issue) for i in range(100)))
    assert calls == 1 and {t.value for t in first} == {"t1"}
    again = await asyncio.gather(*(p.get("k", issue) for p in fleet))  # no round trip needed
    assert calls == 1 and {t.value for t in again} == {"t1"}
    refused = await asyncio.gather(*(fleet[i % 5].get("k", issue, stale="t1") for i in range(50)))
    assert calls == 2 and {t.value for t in refused} == {"t2"} and store.invalidations == 1
    await asyncio.sleep(1.0)
    later = await asyncio.gather(*(fleet[i % 5].get("k", issue) for i in range(20)))
    assert calls == 3 and {t.value for t in later} == {"t3"}
    assert store.fetches == 3


def test_token_refresh_margin() -> None:
    cdse = Token.issued("a", 600, now=1000.0)
    assert cdse.usable(now=1539.0) and not cdse.usable(now=1540.0)  # 60 s before expiry
    short = Token.issued("b", 2, now=1000.0)
    assert short.usable(now=1001.7) and not short.usable(now=1001.8)  # a tenth of its life


# --- the API on this provider ------------------------------------------------------------------


async def test_image_fetched_checked_and_stored(
    api: httpx.AsyncClient, sh: FakeSentinelHub, sh_settings: Settings
) -> None:
    r = await api.post("/api/images", json=body())
    assert r.status_code == 200, r.text
    image = r.json()["image"]
    assert (image["width"], image["height"], image["content_type"]) == (64, 48, "image/png")
    assert image["provider"] == "sh" and image["layer"] == "sentinel-2-l2a"
    assert image["time"] == "2024-06-01" and image["cached"] is False
    # What the Process API got: the bearer token it issued, and the body as specified.
    [call] = sh.process_calls
    assert call.status == 200 and call.token in sh.tokens
    assert call.headers["content-type"] == "application/json"
    assert call.body is not None
    assert call.body["input"]["bounds"]["bbox"] == BBOX
    assert call.body["output"]["width"] == 64 and call.body["output"]["height"] == 48
    [token_call] = sh.token_calls
    assert token_call.form == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    # The bytes, the metadata, and a cache hit for the same request.
    got = await api.get(image["url"])
    assert got.status_code == 200 and got.content[:8] == b"\x89PNG\r\n\x1a\n"
    meta = (await api.get(image["url"] + "/meta")).json()
    assert meta["kind"] == "sentinelhub"
    assert meta["source_url"].startswith(f"{sh.url}/api/v1/process?collection=sentinel-2-l2a")
    again = await api.post("/api/images", json=body())
    assert again.json()["image"]["cached"] is True and len(sh.process_calls) == 1
    # A JPEG and an interval work too.
    jpeg = await api.post(
        "/api/images", json=body(format="image/jpeg", time="2024-06-01/2024-06-30")
    )
    assert jpeg.status_code == 200, jpeg.text
    assert jpeg.json()["image"]["content_type"] == "image/jpeg"
    assert sh.process_calls[-1].body["input"]["data"][0]["dataFilter"]["timeRange"] == {  # type: ignore[index]
        "from": "2024-06-01T00:00:00Z",
        "to": "2024-06-30T23:59:59Z",
    }
    assert sh.issued() == 1


async def test_providers_show_the_kind_and_the_collection(api: httpx.AsyncClient) -> None:
    providers = {p["name"]: p for p in (await api.get("/api/providers")).json()["providers"]}
    assert providers["sh"]["kind"] == "sentinelhub" and providers["gibs"]["kind"] == "wms"
    assert providers["sh"]["default_layer"] == "sentinel-2-l2a"
    assert providers["sh"]["version"] is None and providers["gibs"]["version"] == "1.3.0"
    assert "client_secret" not in json.dumps(providers) and CLIENT_SECRET not in json.dumps(
        providers
    )
    layers = (await api.get("/api/providers/sh/layers")).json()
    assert [layer["name"] for layer in layers["layers"]] == ["sentinel-2-l2a"]


async def test_100_concurrent_first_requests_ask_for_one_token(
    api: httpx.AsyncClient, sh: FakeSentinelHub
) -> None:
    sh.token_delay_s = 0.2  # every request arrives while the first token is still being issued
    rs = await asyncio.gather(
        *(api.post("/api/images", json=body(bbox=shifted(i))) for i in range(100))
    )
    assert [r.status_code for r in rs] == [200] * 100
    assert len(sh.token_calls) == 1 and sh.issued() == 1
    assert len(sh.process_calls) == 100
    assert len({c.token for c in sh.process_calls}) == 1


async def test_expiry_refreshes_once(api: httpx.AsyncClient, sh: FakeSentinelHub) -> None:
    sh.token_ttl_s = 1.0  # refreshed 0.1 s before it runs out
    for i in range(3):
        assert (await api.post("/api/images", json=body(bbox=shifted(i)))).status_code == 200
    assert sh.issued() == 1
    await asyncio.sleep(1.0)
    rs = await asyncio.gather(
        *(api.post("/api/images", json=body(bbox=shifted(10 + i))) for i in range(10))
    )
    assert all(r.status_code == 200 for r in rs)
    assert sh.issued() == 2  # one refresh for all ten
    assert all(c.status == 200 for c in sh.process_calls)  # the expired token was never sent


async def test_revocation_refreshes_once_and_succeeds(
    api: httpx.AsyncClient, sh: FakeSentinelHub
) -> None:
    assert (await api.post("/api/images", json=body())).status_code == 200
    sh.revoke_all()
    sh.process_delay_s = 0.1  # the refused calls overlap
    rs = await asyncio.gather(
        *(api.post("/api/images", json=body(bbox=shifted(1 + i))) for i in range(20))
    )
    assert [r.status_code for r in rs] == [200] * 20
    assert sh.issued() == 2  # one shared refresh
    refused = [c for c in sh.process_calls if c.status == 401]
    assert len(refused) == 20 and len({c.token for c in refused}) == 1
    assert sum(1 for c in sh.process_calls if c.status == 200) == 21


async def test_revoked_mid_flight_by_the_server(
    api: httpx.AsyncClient, sh: FakeSentinelHub
) -> None:
    sh.process_script.append(Revoke())
    r = await api.post("/api/images", json=body())
    assert r.status_code == 200, r.text
    assert sh.issued() == 2 and [c.status for c in sh.process_calls] == [401, 200]


async def test_second_401_is_provider_auth(api: httpx.AsyncClient, sh: FakeSentinelHub) -> None:
    sh.process_script.extend([Fail(401, "COMMON_UNAUTHORIZED", "no")] * 2)
    r = await api.post("/api/images", json=body())
    assert r.status_code == 502 and r.json()["code"] == "provider_auth", r.text
    assert "fresh" in r.json()["error"]
    assert [c.status for c in sh.process_calls] == [401, 401] and sh.issued() == 2


async def test_wrong_credentials_are_provider_auth_without_the_secret(
    make_settings: Callable[..., Settings], sh: FakeSentinelHub, tmp_path: Path
) -> None:
    wrong = "Wr0ng+Secret/Value=="
    settings = make_settings(
        default_provider="sh", providers={"sh": sh.provider(client_secret=wrong)}
    )
    sh.token_delay_s = 0.5  # all ten are waiting for the one token request, on a busy machine too
    async for api in _client(settings):
        rs = await asyncio.gather(*(api.post("/api/images", json=body()) for _ in range(10)))
        for r in rs:
            assert r.status_code == 502, r.text
            doc = r.json()
            assert doc["code"] == "provider_auth"
            assert "refused the client credentials" in doc["error"]
            assert "invalid_client" in doc["error"]
            assert wrong not in r.text and CLIENT_SECRET not in r.text
    assert len(sh.token_calls) == 1  # one refused token request for the ten (shared)
    assert sh.process_calls == []
    assert store_files(tmp_path / "data") == []


async def test_a_wrong_secret_never_rides_on_anothers_token(
    make_settings: Callable[..., Settings], sh: FakeSentinelHub
) -> None:
    # Same token endpoint and client id, one right secret and one wrong: the token cache is
    # keyed on the secret too, so the wrong one asks for its own token and is refused at once.
    settings = make_settings(
        default_provider="good",
        providers={
            "good": sh.provider(),
            "bad": sh.provider(client_secret="Wr0ng+Secret/Value=="),
        },
    )
    async for api in _client(settings):
        good = await api.post("/api/images", json=body(provider="good"))
        assert good.status_code == 200, good.text
        bad = await api.post("/api/images", json=body(provider="bad", bbox=shifted(1)))
        assert bad.status_code == 502, bad.text
        assert bad.json()["code"] == "provider_auth"
        assert "Wr0ng" not in bad.text
        again = await api.post("/api/images", json=body(provider="good", bbox=shifted(2)))
        assert again.status_code == 200, again.text
    assert [c.status for c in sh.token_calls] == [200, 401]
    assert len(sh.process_calls) == 2  # the wrong secret sent no Process API call


async def test_token_endpoint_transients_are_retried(
    api: httpx.AsyncClient, sh: FakeSentinelHub
) -> None:
    sh.token_script.extend([(503, {}), (429, {"Retry-After": "0"})])
    r = await api.post("/api/images", json=body())
    assert r.status_code == 200, r.text
    assert [c.status for c in sh.token_calls] == [503, 429, 200]


async def test_token_endpoint_always_busy_is_503(
    api: httpx.AsyncClient, sh: FakeSentinelHub
) -> None:
    sh.token_script.extend([(429, {"Retry-After": "0"})] * 3)
    r = await api.post("/api/images", json=body())
    assert r.status_code == 503 and r.json()["code"] == "upstream_busy", r.text
    assert r.headers["retry-after"] == "1"
    assert len(sh.token_calls) == 3 and sh.process_calls == []


async def test_429_then_success(api: httpx.AsyncClient, sh: FakeSentinelHub) -> None:
    sh.process_script.extend([Busy(150), Busy(150)])
    r = await api.post("/api/images", json=body())
    assert r.status_code == 200, r.text
    calls = sh.process_calls
    assert [c.status for c in calls] == [429, 429, 200]
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    assert all(gap >= 0.14 for gap in gaps), gaps  # Retry-After in ms was honoured
    assert sh.issued() == 1


async def test_429_always_is_503_upstream_busy(
    api: httpx.AsyncClient, sh: FakeSentinelHub, sh_settings: Settings
) -> None:
    sh.always_busy_ms = 20
    r = await api.post("/api/images", json=body())
    assert r.status_code == 503, r.text
    doc = r.json()
    assert doc["code"] == "upstream_busy" and "429" in doc["error"]
    assert r.headers["retry-after"] == "1"
    assert len(sh.process_calls) == sh_settings.retry_attempts


async def test_429_longer_than_the_retry_budget_is_not_waited_for(
    api: httpx.AsyncClient, sh: FakeSentinelHub
) -> None:
    sh.always_busy_ms = 7000  # retry_wait_max_s is 0.5
    r = await api.post("/api/images", json=body())
    assert r.status_code == 503 and r.json()["code"] == "upstream_busy"
    assert r.headers["retry-after"] == "7"
    assert len(sh.process_calls) == 1


@pytest.mark.parametrize("wrapped", [True, False])
async def test_error_json_is_provider_error(
    api: httpx.AsyncClient, sh: FakeSentinelHub, wrapped: bool, tmp_path: Path
) -> None:
    sh.process_script.append(
        Fail(400, "RENDERER_EXCEPTION", "Script failed: B99 is not a band.", wrapped)
    )
    r = await api.post("/api/images", json=body())
    assert r.status_code == 502, r.text
    doc = r.json()
    assert doc["code"] == "provider_error" and doc["provider_code"] == "RENDERER_EXCEPTION"
    assert "B99 is not a band" in doc["error"]
    assert len(sh.process_calls) == 1  # a 400 is not retried
    assert store_files(tmp_path / "data") == []


async def test_server_errors_are_retried_then_reported(
    api: httpx.AsyncClient, sh: FakeSentinelHub
) -> None:
    sh.process_script.append(Fail(503, "COMMON_UNAVAILABLE", "Try again."))
    assert (await api.post("/api/images", json=body())).status_code == 200
    sh.process_script.extend([Fail(503, "COMMON_UNAVAILABLE", "Down.")] * 3)
    r = await api.post("/api/images", json=body(time="2024-06-02"))
    assert r.status_code == 502 and r.json()["provider_code"] == "COMMON_UNAVAILABLE"


async def test_2600_px_comes_in_two_tiles(api: httpx.AsyncClient, sh: FakeSentinelHub) -> None:
    r = await api.post("/api/images", json=body(width=2600, height=100))
    assert r.status_code == 200, r.text
    assert r.json()["image"]["area"]["tiles"] == 2
    assert sorted(c.body["output"]["width"] for c in sh.process_calls) == [1300, 1300]  # type: ignore[index]


async def test_wms_url_on_this_provider_is_refused(
    api: httpx.AsyncClient, sh: FakeSentinelHub
) -> None:
    url = f"{sh.url}/api/v1/process?REQUEST=GetMap&WIDTH=10&HEIGHT=10"
    r = await api.post("/api/images", json={"wms_url": url})
    assert r.status_code == 400 and r.json()["code"] == "url_not_allowed"
    assert sh.token_calls == [] and sh.process_calls == []


async def test_unreachable_provider_is_upstream_error(
    make_settings: Callable[..., Settings], sh: FakeSentinelHub
) -> None:
    from tests.support.fault_upstream import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(
        default_provider="sh",
        providers={"sh": sh.provider(url=dead)},
        retry_attempts=2,
    )
    async for api in _client(settings):
        r = await api.post("/api/images", json=body())
        assert r.status_code == 502 and r.json()["code"] == "upstream_error", r.text


async def test_unreachable_token_endpoint_is_upstream_error(
    make_settings: Callable[..., Settings], sh: FakeSentinelHub
) -> None:
    from tests.support.fault_upstream import free_port

    dead = f"http://127.0.0.1:{free_port()}/oauth/token"
    settings = make_settings(
        default_provider="sh", providers={"sh": sh.provider(token_url=dead)}, retry_attempts=2
    )
    async for api in _client(settings):
        r = await api.post("/api/images", json=body())
        assert r.status_code == 502 and r.json()["code"] == "upstream_error", r.text
        assert "token endpoint" in r.json()["error"]
    assert sh.process_calls == []


async def test_token_endpoint_on_its_own_internal_origin_is_trusted(
    make_settings: Callable[..., Settings], sh: FakeSentinelHub
) -> None:
    """The operator-configured token endpoint is trusted like the provider's own endpoint by the
    connect-time SSRF guard, also when it is another (here: loopback) origin."""
    settings = make_settings(
        default_provider="sh",
        providers={"sh": sh.provider(token_url=f"http://localhost:{sh.port}/oauth/token")},
    )
    async for api in _client(settings):
        r = await api.post("/api/images", json=body())
        assert r.status_code == 200, r.text
    assert sh.issued() == 1


# --- every route on this provider --------------------------------------------------------------


def sse(text: str) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    for block in text.strip().split("\n\n"):
        name, data = "message", ""
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
        if data:
            events.append((name, json.loads(data)))
    return events


async def test_vision_and_its_stream(api: httpx.AsyncClient, sh: FakeSentinelHub) -> None:
    r = await api.post(
        "/api/vision/analyze_satellite", json=body(analyzer="local", prompt="Green?")
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["image"]["provider"] == "sh"
    assert answer["analysis"]["metrics"]["vegetation_fraction"] == 1.0  # June: green
    sh.revoke_all()  # the stream's download is refused once, then repeated with a new token
    streamed = await api.post(
        "/api/vision/analyze_satellite_stream",
        json=body(analyzer="local", time="2024-01-15"),
        headers={"Accept": "text/event-stream"},
    )
    assert streamed.status_code == 200
    events = sse(streamed.text)
    names = [name for name, _ in events]
    assert "image" in names and names[-1] == "result", names
    result = events[-1][1]
    assert result["image"]["provider"] == "sh"
    assert result["analysis"]["metrics"]["bare_fraction"] == 1.0  # January: brown
    stages = [data.get("stage") for name, data in events if name == "status"]
    assert stages.count("downloading") == 1, stages
    assert sh.issued() == 2


async def test_stream_error_when_busy_says_when_to_come_back(
    api: httpx.AsyncClient, sh: FakeSentinelHub
) -> None:
    sh.always_busy_ms = 3000  # longer than retry_wait_max_s: not waited for
    streamed = await api.post(
        "/api/vision/analyze_satellite_stream",
        json=body(analyzer="local"),
        headers={"Accept": "text/event-stream"},
    )
    name, data = sse(streamed.text)[-1]
    assert name == "error" and data["code"] == "upstream_busy", (name, data)
    assert data["retry_after"] == 3 and "retry: 3000" in streamed.text


async def test_comparison(api: httpx.AsyncClient, sh: FakeSentinelHub) -> None:
    pair = {
        "bbox": BBOX,
        "width": 64,
        "height": 64,
        "before": {"time": "2024-01-15"},
        "after": {"time": "2024-06-01/2024-06-30"},
    }
    download = await api.post("/api/comparison/download", json=pair)
    assert download.status_code == 200, download.text
    images = download.json()["images"]
    assert images["before"]["provider"] == images["after"]["provider"] == "sh"
    analysed = await api.post("/api/comparison/analyze", json={**pair, "analyzer": "local"})
    assert analysed.status_code == 200, analysed.text
    gains = analysed.json()["analysis"]["metrics"]["gains"]
    assert gains["vegetation"] == 1.0  # brown January -> green June
    assert len(sh.process_calls) == 2 and sh.issued() == 1


async def test_timeseries(api: httpx.AsyncClient, sh: FakeSentinelHub) -> None:
    r = await api.post(
        "/api/timeseries",
        json={
            "bbox": BBOX,
            "width": 32,
            "height": 32,
            "start": "2024-01-01",
            "end": "2024-12-01",
            "step": "P1M",
        },
    )
    assert r.status_code == 200, r.text
    series = r.json()
    assert series["partial"] is False and len(series["points"]) == 12
    veg = [p["metrics"]["vegetation_fraction"] for p in series["points"]]
    assert veg == [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert len(sh.process_calls) == 12 and sh.issued() == 1
    csv = await api.post(
        "/api/timeseries",
        json={"bbox": BBOX, "width": 32, "height": 32, "times": ["2024-03-01", "2024-07-01"]},
        headers={"Accept": "text/csv"},
    )
    assert csv.status_code == 200 and csv.text.count("\n") == 3


async def test_tiles(api: httpx.AsyncClient, sh: FakeSentinelHub) -> None:
    r = await api.get("/api/tiles/sh/3/4/2.png", params={"time": "2024-06-01"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    [call] = sh.process_calls
    assert call.body is not None
    assert call.body["input"]["bounds"]["properties"]["crs"].endswith("/EPSG/0/3857")
    assert (call.body["output"]["width"], call.body["output"]["height"]) == (256, 256)
    again = await api.get(
        "/api/tiles/sh/3/4/2.png",
        params={"time": "2024-06-01"},
        headers={"If-None-Match": r.headers["etag"]},
    )
    assert again.status_code == 304 and len(sh.process_calls) == 1


async def test_clearest_mosaics_the_window_least_cloudy_first(
    api: httpx.AsyncClient, sh: FakeSentinelHub
) -> None:
    """No dates to list here: the whole window goes to the Process API with leastCC, and the
    selection says no date was chosen."""
    window = "2024-05-01/2024-09-30"
    r = await api.post("/api/images", json={"bbox": BBOX, "clearest": {"window": window}})
    assert r.status_code == 200, r.text
    selection = r.json()["selection"]
    assert selection["window"] == window and selection["chosen"] is None
    assert selection["candidates"] == [] and "leastCC" in selection["note"]
    [call] = sh.process_calls
    data = call.body["input"]["data"][0]  # type: ignore[index]
    assert data["dataFilter"]["mosaickingOrder"] == "leastCC"
    assert data["dataFilter"]["timeRange"] == {
        "from": "2024-05-01T00:00:00Z",
        "to": "2024-09-30T23:59:59Z",
    }
    # Stored like any image: the same selection again is a cache hit, no second call.
    again = await api.post("/api/images", json={"bbox": BBOX, "clearest": {"window": window}})
    assert again.json()["image"]["cached"] is True and len(sh.process_calls) == 1
    # A window that is no window is still refused before any call.
    bad = await api.post("/api/images", json={"bbox": BBOX, "clearest": {"window": "nope"}})
    assert bad.status_code == 422 and len(sh.process_calls) == 1


async def test_wms_providers_still_work_beside_it(
    api: httpx.AsyncClient, sh: FakeSentinelHub
) -> None:
    """A WMS interval stays refused (it is this kind's feature), by the WMS client's own check."""
    r = await api.post("/api/images", json=body(provider="gibs", time="2024-06-01/2024-06-30"))
    assert r.status_code == 422 and "interval" in r.json()["error"]


# --- no secret or token anywhere ----------------------------------------------------------------


async def test_no_secret_or_token_in_responses_logs_or_data(
    api: httpx.AsyncClient,
    sh: FakeSentinelHub,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    responses: list[httpx.Response] = []

    async def post(path: str, doc: dict[str, Any]) -> None:
        responses.append(await api.post(path, json=doc))

    await post("/api/images", body())
    image = responses[-1].json()["image"]
    responses.append(await api.get(image["url"] + "/meta"))
    responses.append(await api.get("/api/providers"))
    responses.append(await api.get("/api/providers/sh/layers"))
    sh.revoke_all()
    await post("/api/vision/analyze_satellite", body(time="2024-06-02", analyzer="local"))
    sh.process_script.append(Fail(400, "X", "bad", True))
    await post("/api/images", body(time="2024-06-03"))
    sh.always_busy_ms = 10
    await post("/api/images", body(time="2024-06-04"))
    sh.always_busy_ms = None
    sh.refuse_credentials = True
    sh.revoke_all()
    await post("/api/images", body(time="2024-06-05"))
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 200, 502, 503, 502]

    secrets = [CLIENT_SECRET, *sh.tokens]
    assert len(secrets) >= 3  # the secret and at least two tokens were really in play
    for r in responses:
        text = "\n".join(f"{k}: {v}" for k, v in r.headers.items()) + "\n" + r.text
        assert not [s for s in secrets if s in text], r.request.url
    logged = "\n".join(f"{rec.getMessage()} {rec.__dict__}" for rec in caplog.records)
    assert "provider_error" in logged and "upstream_busy" in logged  # failures were logged
    assert not [s for s in secrets if s in logged]
    for path in store_files(tmp_path / "data"):
        content = path.read_bytes().decode("latin-1")
        assert not [s for s in secrets if s in content], path


# --- as a user: `satapi serve` with the built-in cdse entry pointed at the fake -----------------


def test_real_server_with_the_builtin_cdse_entry(
    sh: FakeSentinelHub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`[providers.cdse]` with credentials (url and token_url overridden to reach the fake):
    every route works on a real `satapi serve`, and neither the secret nor a token appears in
    a response, the debug log, the stored files or `satapi check-config`."""
    import subprocess
    import sys

    from tests.support.fault_upstream import SatapiProcess

    settings = {
        "default_provider": "cdse",
        "log_level": "debug",
        "providers": {
            "cdse": {
                "url": sh.url,
                "token_url": sh.token_url,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            }
        },
    }
    texts: list[str] = []
    with (
        SatapiProcess(tmp_path_factory.mktemp("cdse"), settings) as server,
        httpx.Client(base_url=server.url, timeout=60) as c,
    ):

        def call(method: str, path: str, status: int = 200, **kw: Any) -> httpx.Response:
            r = c.request(method, path, **kw)
            assert r.status_code == status, (path, r.text)
            texts.append("\n".join(f"{k}: {v}" for k, v in r.headers.items()) + "\n" + r.text)
            return r

        providers = call("GET", "/api/providers").json()["providers"]
        assert {p["name"]: p["kind"] for p in providers}["cdse"] == "sentinelhub"
        layers = call("GET", "/api/providers/cdse/layers").json()["layers"]
        assert [layer["name"] for layer in layers] == ["sentinel-2-l2a"]
        image = call("POST", "/api/images", json=body()).json()["image"]
        assert image["provider"] == "cdse" and (image["width"], image["height"]) == (64, 48)
        call("GET", image["url"])
        call("GET", image["url"] + "/meta")
        sh.revoke_all()
        call("POST", "/api/vision/analyze_satellite", json=body(time="2024-07-01"))
        stream = call(
            "POST",
            "/api/vision/analyze_satellite_stream",
            json=body(time="2024-08-01"),
            headers={"Accept": "text/event-stream"},
        )
        assert sse(stream.text)[-1][0] == "result"
        pair = {"bbox": BBOX, "before": {"time": "2024-01-01"}, "after": {"time": "2024-06-01"}}
        call("POST", "/api/comparison/download", json=pair)
        call("POST", "/api/comparison/analyze", json={**pair, "analyzer": "local"})
        series = call(
            "POST", "/api/timeseries", json={"bbox": BBOX, "times": ["2024-02-01", "2024-05-01"]}
        ).json()
        assert series["partial"] is False
        tile = call("GET", "/api/tiles/cdse/2/2/1.png", params={"time": "2024-06-01"})
        assert tile.headers["content-type"] == "image/png"
        # wider than one Process API call: two tiles
        assert (
            call("POST", "/api/images", json=body(width=2600)).json()["image"]["area"]["tiles"] == 2
        )
        sh.process_script.append(Fail(400, "RENDERER_EXCEPTION", "bad script", False))
        failed = call("POST", "/api/images", 502, json=body(time="2024-09-01")).json()
        assert failed["provider_code"] == "RENDERER_EXCEPTION"
        metrics = call("GET", "/metrics").text
        assert (
            'satapi_oauth_token_requests_total{outcome="ok",provider="cdse",reason="new"} 1.0'
            in (metrics)
        )
        assert (
            'satapi_oauth_token_requests_total{outcome="ok",provider="cdse",reason="after_401"} 1.0'
            in metrics
        )
        last = c.get("/healthz").headers["x-request-id"]
        assert sh.issued() == 2  # one token, one refresh after the revocation
        assert server_log_has(server, last)
        log = server.log()
        files = server.files()
        checked = subprocess.run(
            [sys.executable, "-m", "satapi", "check-config"],
            capture_output=True,
            text=True,
            env={"SATAPI_CONFIG": str(server.config_path), "PATH": "/usr/bin:/bin"},
            timeout=60,
            check=False,
        )
    assert checked.returncode == 0, checked.stderr
    assert "cdse" in checked.stdout
    secrets = [CLIENT_SECRET, *sh.tokens]
    assert len(secrets) == 3
    for text in [*texts, log, checked.stdout + checked.stderr]:
        assert not [s for s in secrets if s in text]
    assert "provider_error" in log  # the failure was logged, without any secret
    assert log.count("oauth token ok") == 2 and "reason=after_401" in log
    assert any(p.suffix == ".json" for p in files)
    for path in files:
        assert not [s for s in secrets if s in path.read_bytes().decode("latin-1")], path


def server_log_has(server: Any, text: str, timeout: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in server.log():
            return True
        time.sleep(0.05)
    return False


# --- a fleet sharing one Redis (redis_url) --------------------------------------------------------


async def test_shared_token_cache_over_real_redis(redis_server: Any) -> None:
    """Five processes' coordinators on one redis-server: 100 concurrent first requests, one
    token; 50 refusals of it, one refresh; after its refresh time, one more."""
    from satapi.coordination.redis import RedisCoordinator

    coords = [RedisCoordinator(redis_server.url) for _ in range(5)]
    for coord in coords:
        await coord.start()
    try:
        fleet = [SharedTokenCache(coord) for coord in coords]
        calls = 0

        async def issue() -> Token:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.05)
            return Token.issued(f"t{calls}", 1.0)

        first = await asyncio.gather(*(fleet[i % 5].get("k", issue) for i in range(100)))
        assert calls == 1 and {t.value for t in first} == {"t1"}
        refused = await asyncio.gather(
            *(fleet[i % 5].get("k", issue, stale="t1") for i in range(50))
        )
        assert calls == 2 and {t.value for t in refused} == {"t2"}
        await asyncio.sleep(1.0)
        later = await asyncio.gather(*(fleet[i % 5].get("k", issue) for i in range(20)))
        assert calls == 3 and {t.value for t in later} == {"t3"}
    finally:
        for coord in coords:
            await coord.close()


def test_two_replicas_share_one_token_through_redis(
    sh: FakeSentinelHub, redis_server: Any, tmp_path: Path
) -> None:
    """Two `satapi serve` replicas with one redis_url: concurrent first requests on both ask
    the token endpoint once; after a revocation, refusals on both share one refresh; neither
    the secret nor a token is in the logs."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.fault_upstream import SatapiProcess

    conf = {
        "default_provider": "sh",
        "redis_url": redis_server.url,
        "providers": {"sh": sh.provider()},
    }
    sh.token_delay_s = 0.3  # both replicas' first requests arrive while the token is issued
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    replicas = [SatapiProcess(tmp_path / name, conf) for name in ("a", "b")]
    try:
        for replica in replicas:
            replica.start()

        def post(i: int, time: str) -> int:
            url = replicas[i % 2].url + "/api/images"
            return httpx.post(url, json=body(bbox=shifted(i), time=time), timeout=60).status_code

        with ThreadPoolExecutor(20) as pool:
            assert list(pool.map(lambda i: post(i, "2024-06-01"), range(20))) == [200] * 20
            assert sh.issued() == 1
            sh.revoke_all()
            sh.token_delay_s = 0.0
            sh.process_delay_s = 0.2  # the refused calls of both replicas overlap
            assert list(pool.map(lambda i: post(i, "2024-06-02"), range(20))) == [200] * 20
        assert sh.issued() == 2  # one shared refresh for the fleet
        assert {c.status for c in sh.process_calls} == {200, 401}
        logs = "".join(replica.log() for replica in replicas)
        assert "oauth token ok" in logs
        assert not [t for t in [CLIENT_SECRET, *sh.tokens] if t in logs]
    finally:
        for replica in replicas:
            replica.stop()


async def test_a_large_image_is_fetched_in_tiles_of_at_most_2500(
    api: httpx.AsyncClient, sh: FakeSentinelHub
) -> None:
    # 3000 x 600 px: wider than the Process API serves at once, so two tiles of 1500 x 600.
    r = await api.post(
        "/api/images",
        json=body(width=3000, height=600, format="image/tiff"),
    )
    assert r.status_code == 200, r.text
    image = r.json()["image"]
    assert image["area"]["tiles"] == 2 and image["content_type"] == "image/tiff"
    outputs = sorted(
        (
            c.body["output"]["width"],
            c.body["output"]["height"],
            tuple(c.body["input"]["bounds"]["bbox"]),
        )  # type: ignore[index]
        for c in sh.process_calls
    )
    assert [o[:2] for o in outputs] == [(1500, 600), (1500, 600)]
    west, south, east, north = BBOX
    middle = west + (east - west) / 2
    assert outputs[0][2] == pytest.approx((west, south, middle, north))
    assert outputs[1][2] == pytest.approx((middle, south, east, north))

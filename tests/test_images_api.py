"""POST /api/images and GET /api/images/{id} against a mocked WMS (respx): limits, cache, errors."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

from satapi.config import Settings
from tests.conftest import WMS_URL, png_bytes, store_files
from tests.support.wms_mock import mock_transport

BODY = {"bbox": [10, 45, 14, 47], "width": 64, "height": 32}


class SlowWMS:
    """A respx side effect: answers after `latency` s, counting requests in flight."""

    def __init__(
        self,
        latency: float = 0.0,
        responder: Callable[[httpx.Request, int], httpx.Response] | None = None,
    ) -> None:
        self.latency = latency
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0
        self.cancelled = 0
        self.responder = responder

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        if self.responder is not None:
            return self.responder(request, self.calls)
        w, h = int(request.url.params["WIDTH"]), int(request.url.params["HEIGHT"])
        return httpx.Response(200, content=png_bytes(w, h), headers={"content-type": "image/png"})


def permits_back(client: httpx.AsyncClient) -> bool:
    stats = client.app.state.resources.limiter.stats()  # type: ignore[attr-defined]
    return all(s.in_flight == 0 and s.waiting == 0 for s in stats.values())


async def test_fetch_stores_image_and_serves_it_with_etag(
    client: httpx.AsyncClient, wms: respx.Router, settings: Settings
) -> None:
    wms.get(WMS_URL).mock(side_effect=SlowWMS())
    r = await client.post("/api/images", json=BODY)
    assert r.status_code == 200, r.text
    image = r.json()["image"]
    assert image["width"] == 64 and image["height"] == 32 and image["cached"] is False
    assert image["content_type"] == "image/png" and image["provider"] == "test"
    got = await client.get(image["url"])
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/png"
    assert got.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert got.content == png_bytes(64, 32)
    etag = got.headers["etag"]
    not_modified = await client.get(image["url"], headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.content == b""
    # HEAD: GET's headers (type, length, ETag, caching), no body
    head = await client.head(image["url"])
    assert head.status_code == 200 and head.content == b""
    for name in ("content-type", "content-length", "etag", "cache-control"):
        assert head.headers[name] == got.headers[name], name
    assert int(head.headers["content-length"]) == len(got.content)
    assert (await client.head(image["url"], headers={"If-None-Match": etag})).status_code == 304
    assert (await client.head("/api/images/" + "0" * 64)).status_code == 404
    meta = (await client.get(image["url"] + "/meta")).json()
    assert meta["image"]["id"] == image["id"] and meta["source_url"].startswith(WMS_URL)
    # The request sent the 1.3.0 axis order and asked for XML exceptions.
    sent = wms.calls.last.request.url.params
    assert (
        sent["BBOX"] == "45,10,47,14" and sent["CRS"] == "EPSG:4326" and sent["EXCEPTIONS"] == "XML"
    )
    assert not [p for p in store_files(settings.data_dir) if p.name.startswith(".tmp-")]


async def test_identical_request_is_a_cache_hit(
    client: httpx.AsyncClient, wms: respx.Router
) -> None:
    upstream = SlowWMS()
    wms.get(WMS_URL).mock(side_effect=upstream)
    first = (await client.post("/api/images", json=BODY)).json()
    second = (await client.post("/api/images", json=BODY)).json()
    assert upstream.calls == 1
    assert second["image"]["cached"] is True and second["image"]["id"] == first["image"]["id"]


async def test_single_flight_50_identical_requests_one_upstream_call(
    client: httpx.AsyncClient, wms: respx.Router
) -> None:
    upstream = SlowWMS(latency=0.2)
    wms.get(WMS_URL).mock(side_effect=upstream)
    results = await asyncio.gather(*(client.post("/api/images", json=BODY) for _ in range(50)))
    assert {r.status_code for r in results} == {200}
    assert upstream.calls == 1
    assert len({r.json()["image"]["id"] for r in results}) == 1


@pytest.mark.parametrize("cap", [5])
async def test_cap_never_exceeded_and_batch_takes_ceil_n_over_cap_latencies(
    make_settings: Callable[..., Settings], wms: respx.Router, cap: int
) -> None:
    from tests.conftest import client as _unused  # noqa: F401  (documentation: same fixture shape)

    settings = make_settings(max_concurrent_wms=cap)
    upstream = SlowWMS(latency=0.2)
    wms.get(WMS_URL).mock(side_effect=upstream)
    async with _app_client(settings, wms=wms) as c:
        started = time.perf_counter()
        bodies = [{**BODY, "bbox": [10, 45, 14, 47 - i * 0.01]} for i in range(50)]
        results = await asyncio.gather(*(c.post("/api/images", json=b) for b in bodies))
        elapsed = time.perf_counter() - started
        assert {r.status_code for r in results} == {200}
        assert upstream.calls == 50
        assert upstream.max_in_flight == cap
        rounds = math.ceil(50 / cap)
        # About `rounds` latencies, far from 50 of them.
        assert rounds * 0.2 * 0.9 <= elapsed < rounds * 0.2 + 2.0
        assert permits_back(c)


def _app_client(settings: Settings, wms: respx.Router | None = None) -> Any:
    from contextlib import asynccontextmanager

    from asgi_lifespan import LifespanManager

    from satapi.app import create_app

    @asynccontextmanager
    async def cm() -> Any:
        app = create_app(settings, http_transport=mock_transport(wms))
        async with (
            LifespanManager(app) as m,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=m.app), base_url="http://satapi.test"
            ) as c,
        ):
            c.app = app  # type: ignore[attr-defined]
            yield c

    return cm()


SERVICE_EXCEPTION = b"""<?xml version="1.0" encoding="UTF-8"?>
<ServiceExceptionReport version="1.3.0" xmlns="http://www.opengis.net/ogc">
  <ServiceException code="LayerNotDefined">msWMSLoadGetMapParams(): WMS server error.
  Invalid layer(s) given in the LAYERS parameter.</ServiceException>
</ServiceExceptionReport>"""


def respond(
    status: int, content: bytes, ctype: str, **headers: str
) -> Callable[[httpx.Request, int], httpx.Response]:
    return lambda _req, _n: httpx.Response(
        status, content=content, headers={"content-type": ctype, **headers}
    )


@pytest.mark.parametrize(
    ("responder", "status", "code", "calls"),
    [
        (respond(200, SERVICE_EXCEPTION, "application/vnd.ogc.se_xml"), 502, "wms_exception", 1),
        (respond(200, SERVICE_EXCEPTION, "image/png"), 502, "wms_exception", 1),
        (respond(200, b"<html>oops</html>", "text/html"), 502, "not_an_image", 1),
        (respond(200, png_bytes(64, 32)[:60], "image/png"), 502, "not_an_image", 1),
        (respond(200, png_bytes(65, 32), "image/png"), 502, "not_an_image", 1),
        (respond(400, b"bad", "text/plain"), 502, "upstream_error", 1),
        (respond(500, b"boom", "text/plain"), 502, "upstream_error", 1),
        (respond(503, b"busy", "text/plain"), 502, "upstream_error", 3),
        (
            respond(302, b"", "text/plain", location="http://169.254.169.254/x"),
            502,
            "redirect_not_allowed",
            1,
        ),
    ],
)
async def test_upstream_failures_map_to_codes_and_leave_nothing(
    client: httpx.AsyncClient,
    wms: respx.Router,
    settings: Settings,
    responder: Any,
    status: int,
    code: str,
    calls: int,
) -> None:
    upstream = SlowWMS(responder=responder)
    route = wms.get(WMS_URL).mock(side_effect=upstream)
    metadata = wms.get(url__startswith="http://169.254.169.254").mock(
        return_value=httpx.Response(200)
    )
    r = await client.post("/api/images", json=BODY)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False and body["code"] == code and body["error"]
    assert body["request_id"] == r.headers["x-request-id"]
    assert route.call_count == calls
    assert not metadata.called
    assert store_files(settings.data_dir) == []
    assert permits_back(client)


async def test_service_exception_carries_server_code_and_text(
    client: httpx.AsyncClient, wms: respx.Router
) -> None:
    wms.get(WMS_URL).mock(
        return_value=httpx.Response(
            200, content=SERVICE_EXCEPTION, headers={"content-type": "text/xml"}
        )
    )
    body = (await client.post("/api/images", json=BODY)).json()
    assert body["code"] == "wms_exception" and body["wms_code"] == "LayerNotDefined"
    assert "Invalid layer(s)" in body["error"]


async def test_retry_on_503_then_success(client: httpx.AsyncClient, wms: respx.Router) -> None:
    def flaky(request: httpx.Request, n: int) -> httpx.Response:
        if n == 1:
            return httpx.Response(503, headers={"retry-after": "0"}, content=b"busy")
        return httpx.Response(200, content=png_bytes(64, 32), headers={"content-type": "image/png"})

    upstream = SlowWMS(responder=flaky)
    wms.get(WMS_URL).mock(side_effect=upstream)
    r = await client.post("/api/images", json=BODY)
    assert r.status_code == 200 and upstream.calls == 2


async def test_oversize_aborts_and_leaves_no_file(
    make_settings: Callable[..., Settings], wms: respx.Router
) -> None:
    settings = make_settings(max_image_bytes=2048)
    big = png_bytes(64, 32) + b"\0" * 5000

    async def streamed(_request: httpx.Request) -> httpx.Response:
        async def body() -> Any:
            for i in range(0, len(big), 512):
                yield big[i : i + 512]

        return httpx.Response(200, content=body(), headers={"content-type": "image/png"})

    wms.get(WMS_URL).mock(side_effect=streamed)
    async with _app_client(settings, wms=wms) as c:
        r = await c.post("/api/images", json=BODY)
        assert r.status_code == 502 and r.json()["code"] == "image_too_large"
        assert store_files(settings.data_dir) == []
        assert permits_back(c)


async def test_timeout_is_504_and_permits_come_back(
    make_settings: Callable[..., Settings], wms: respx.Router
) -> None:
    settings = make_settings(wms_total_timeout_s=0.3)
    upstream = SlowWMS(latency=5)
    wms.get(WMS_URL).mock(side_effect=upstream)
    async with _app_client(settings, wms=wms) as c:
        r = await c.post("/api/images", json=BODY)
        assert r.status_code == 504 and r.json()["code"] == "upstream_timeout"
        assert upstream.cancelled == 1
        assert permits_back(c)
        assert store_files(settings.data_dir) == []


async def test_cancelled_request_cancels_download_and_returns_permit(
    client: httpx.AsyncClient, wms: respx.Router, settings: Settings
) -> None:
    upstream = SlowWMS(latency=5)
    wms.get(WMS_URL).mock(side_effect=upstream)
    task = asyncio.create_task(client.post("/api/images", json=BODY))
    while upstream.in_flight == 0:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    images = client.app.state.resources.images  # type: ignore[attr-defined]
    for _ in range(200):
        if upstream.cancelled and images.downloads_in_progress == 0:
            break
        await asyncio.sleep(0.01)
    assert upstream.cancelled == 1
    assert permits_back(client)
    assert store_files(settings.data_dir) == []


async def test_load_shedding_beyond_waiting_limit(
    make_settings: Callable[..., Settings], wms: respx.Router
) -> None:
    settings = make_settings(max_concurrent_wms=2, max_waiting=3)
    gate = asyncio.Event()  # the upstream answers only once the excess has been shed
    upstream = SlowWMS(latency=0.0)

    async def held(request: httpx.Request) -> httpx.Response:
        await gate.wait()
        return await upstream(request)

    wms.get(WMS_URL).mock(side_effect=held)
    async with _app_client(settings, wms=wms) as c:
        bodies = [{**BODY, "bbox": [10, 45, 14, 47 - i * 0.01]} for i in range(10)]
        tasks = [asyncio.create_task(c.post("/api/images", json=b)) for b in bodies]

        # 2 in flight + 3 waiting; the other 5 are answered 503 at once, however slowly the
        # requests arrive (a timed upstream made this depend on the machine's load).
        async def shed() -> None:
            while sum(t.done() for t in tasks) < 5:
                await asyncio.sleep(0.01)

        with contextlib.suppress(TimeoutError):  # not shed at all: fails below, not hangs
            await asyncio.wait_for(shed(), 10)
        gate.set()
        results = await asyncio.gather(*tasks)
        codes = sorted(r.status_code for r in results)
        assert codes.count(200) == 5 and codes.count(503) == 5
        shed = [r for r in results if r.status_code == 503]
        assert all(r.json()["code"] == "overloaded" and r.headers["retry-after"] for r in shed)
        assert permits_back(c)


@pytest.mark.parametrize(
    "path",
    [
        "/api/images/..%2F..%2Fetc%2Fpasswd",
        "/api/images/ABC",
        "/api/images/" + "g" * 64,
        "/api/images/%2e%2e",
    ],
)
async def test_malformed_ids_refused(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code in (404, 422)
    assert r.json()["success"] is False


async def test_unknown_id_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/images/" + "a" * 64)
    assert r.status_code == 404 and r.json()["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"bbox": [1, 2, 3]}, "validation_error"),
        ({"bbox": [3, 2, 1, 4]}, "invalid_bbox"),
        ({**BODY, "width": 5000}, "invalid_request"),
        ({**BODY, "provider": "nope"}, "unknown_provider"),
        ({**BODY, "time": "yesterday"}, "validation_error"),
        ({"wms_url": "http://169.254.169.254/?REQUEST=GetMap&WIDTH=1&HEIGHT=1"}, "url_not_allowed"),
    ],
)
async def test_bad_input_envelopes(
    client: httpx.AsyncClient, wms: respx.Router, body: dict[str, Any], code: str
) -> None:
    route = wms.route().mock(return_value=httpx.Response(500))
    r = await client.post("/api/images", json=body)
    assert r.status_code in (400, 422)
    assert r.json()["code"] == code
    assert not route.called


async def test_image_removed_behind_the_service_back_is_404_then_fetched_again(
    client: httpx.AsyncClient,
    wms: respx.Router,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With several workers sharing the data directory, another worker's eviction can remove an
    # image this process still remembers: its bytes are a clean 404, and once the memory of it
    # is older than RECHECK_S the next request downloads it again.
    import satapi.stores.local as storage

    upstream = SlowWMS()
    wms.get(WMS_URL).mock(side_effect=upstream)
    image = (await client.post("/api/images", json=BODY)).json()["image"]
    for path in store_files(settings.data_dir):
        path.unlink()
    gone = await client.get(image["url"])
    assert gone.status_code == 404 and gone.json()["code"] == "not_found"
    monkeypatch.setattr(storage, "RECHECK_S", 0.0)
    again = (await client.post("/api/images", json=BODY)).json()["image"]
    assert upstream.calls == 2 and again["cached"] is False
    assert (await client.get(again["url"])).content == png_bytes(64, 32)


@pytest.mark.parametrize(("png_check", "status"), [("crc", 200), ("inflate", 502)])
async def test_png_check_inflate_also_refuses_a_broken_zlib_stream_under_right_crcs(
    make_settings: Callable[..., Settings], wms: respx.Router, png_check: str, status: int
) -> None:
    # A server bug, not damage on the way (that fails a CRC): the image data inflates to less
    # than the header says. The default check (structure and CRCs) stores the PNG as sent.
    import struct
    import zlib

    good = png_bytes(64, 32)
    ihdr_end = 8 + 8 + 13 + 4
    raw = zlib.decompress(good[ihdr_end + 8 : good.index(b"IEND") - 8])
    body = zlib.compress(raw[:-1])
    idat = struct.pack(">I", len(body)) + b"IDAT" + body
    idat += struct.pack(">I", zlib.crc32(b"IDAT" + body))
    iend = good[good.index(b"IEND") - 4 :]
    broken = good[:ihdr_end] + idat + iend
    wms.get(WMS_URL).mock(
        return_value=httpx.Response(200, content=broken, headers={"content-type": "image/png"})
    )
    async with _app_client(make_settings(png_check=png_check), wms=wms) as c:
        r = await c.post("/api/images", json=BODY)
    assert r.status_code == status, r.text
    if status == 502:
        assert r.json()["code"] == "not_an_image"
        assert "image data ends early" in r.json()["error"]

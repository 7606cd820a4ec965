"""Security: SSRF refusals, input and size limits, API keys, CORS, and secrets never leaking.

Most tests run the app in-process with the WMS mocked by respx: a catch-all route records any
request to any host, so "refused" also means "nothing was fetched". The secrets test runs a real
`satapi serve` process (its real logging set-up) against `FaultUpstream` and the fake Anthropic
API, and searches every response, log line and stored file for the configured secrets.

Limits and their answers:

====================================  ======  ==================
limit                                 status  code
====================================  ======  ==================
width/height over `max_image_px`      422     invalid_request
width/height over 16384 (schema)      422     validation_error
WIDTH in a `wms_url` over the max     422     invalid_request
image bytes over `max_image_bytes`    502     image_too_large
prompt over 4000 characters           422     validation_error
dates over `max_timeseries_dates`     422     too_many_dates
body over `max_body_bytes`            413     payload_too_large
URL not allowed (SSRF)                400     url_not_allowed
redirect to a host not allowed        502     redirect_not_allowed
missing or wrong API key              401     unauthorized
====================================  ======  ==================
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from PIL import Image

from satapi.app import create_app
from satapi.config import Settings
from tests.conftest import WMS_URL
from tests.support.fake_anthropic import FakeAnthropic, Reply
from tests.support.fault_upstream import FaultUpstream, SatapiProcess
from tests.support.wms_mock import mock_transport

BBOX = [10.0, 45.0, 14.0, 47.0]
BODY: dict[str, Any] = {"bbox": BBOX, "width": 64, "height": 32}
GETMAP_QUERY = "SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS=scene&STYLES=&CRS=EPSG:4326"
GETMAP_QUERY += "&BBOX=45,10,47,14&WIDTH=64&HEIGHT=32&FORMAT=image/png"
GOOD_URL = f"{WMS_URL}?{GETMAP_QUERY}"


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (34, 139, 34)).save(buf, "PNG")
    return buf.getvalue()


def png_for(request: httpx.Request) -> httpx.Response:
    """respx side effect: a PNG of the requested WIDTH x HEIGHT."""
    params = request.url.params
    size = int(params.get("WIDTH", 64)), int(params.get("HEIGHT", 32))
    return httpx.Response(200, content=png(*size), headers={"content-type": "image/png"})


@asynccontextmanager
async def app_client(
    settings: Settings, wms: respx.Router | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, http_transport=mock_transport(wms))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://satapi.test"
        ) as client,
    ):
        client.app = app  # type: ignore[attr-defined]
        yield client


@pytest.fixture
def anywhere(wms: respx.Router) -> respx.Route:
    """A catch-all route: every request to any host lands here (and is counted)."""
    return wms.route().mock(side_effect=png_for)


def assert_envelope(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["success"] is False and body["code"] == code, body
    assert isinstance(body["error"], str) and body["error"]
    assert body["request_id"] == r.headers["x-request-id"]
    return body


async def post_or_skip(client: httpx.AsyncClient, path: str, body: Any) -> httpx.Response:
    r = await client.post(path, json=body)
    if r.status_code in (404, 405) and r.json().get("code") in ("not_found", "method_not_allowed"):
        pytest.skip(f"{path} does not exist yet")
    return r


# --- SSRF --------------------------------------------------------------------------------------

BAD_URLS = {
    "loopback": "http://127.0.0.1/wms",
    "loopback-127.0.0.2": "http://127.0.0.2/wms",
    "localhost": "http://localhost/wms",
    "metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "private-10": "http://10.0.0.5/wms",
    "private-172.16": "http://172.16.3.4/wms",
    "private-172.31": "http://172.31.255.254/wms",
    "private-192.168": "http://192.168.1.10/wms",
    "unspecified": "http://0.0.0.0/wms",
    "ipv6-loopback": "http://[::1]/wms",
    "ipv6-mapped-v4": "http://[::ffff:127.0.0.1]/wms",
    "ipv6-ula": "http://[fd00::1]/wms",
    "userinfo-evil-host": "http://wms.test@evil.example/wms",
    "userinfo-allowed-host": "http://evil.example@wms.test/wms",
    "user-password": "http://user:secret@wms.test/wms",
    "backslash-userinfo": "http://wms.test\\@evil.example/wms",
    "odd-port": "http://wms.test:8080/wms",
    "ssh-port": "http://wms.test:22/wms",
    "https-other-port": "https://wms.test/wms",
    "suffix-domain": "http://wms.test.evil.example/wms",
    "lookalike-domain": "http://evilwms.test/wms",
    "file": "file:///etc/passwd",
    "gopher": "gopher://wms.test:70/_GET%20/",
    "ftp": "ftp://wms.test/wms",
    "dict": "dict://127.0.0.1:11211/stat",
    "decimal-ip": "http://2130706433/wms",
    "octal-ip": "http://0177.0.0.1/wms",
    "hex-ip": "http://0x7f000001/wms",
    "short-ip": "http://127.1/wms",
    "scheme-relative": "//wms.test/wms",
    "no-scheme": "wms.test/wms",
}


def with_query(url: str) -> str:
    return f"{url}?{GETMAP_QUERY}"


@pytest.mark.parametrize("url", BAD_URLS.values(), ids=BAD_URLS.keys())
async def test_images_wms_url_refused(
    client: httpx.AsyncClient, anywhere: respx.Route, url: str
) -> None:
    r = await client.post("/api/images", json={"wms_url": with_query(url)})
    assert_envelope(r, 400, "url_not_allowed")
    assert not anywhere.called


@pytest.mark.parametrize("url", BAD_URLS.values(), ids=BAD_URLS.keys())
async def test_vision_wms_url_refused(
    client: httpx.AsyncClient, anywhere: respx.Route, url: str
) -> None:
    body = {"wms_url": with_query(url), "analyzer": "local"}
    r = await post_or_skip(client, "/api/vision/analyze_satellite", body)
    assert_envelope(r, 400, "url_not_allowed")
    assert not anywhere.called


@pytest.mark.parametrize("side", ["image1_url", "image2_url"])
@pytest.mark.parametrize("url", BAD_URLS.values(), ids=BAD_URLS.keys())
async def test_comparison_urls_refused(
    client: httpx.AsyncClient, anywhere: respx.Route, url: str, side: str
) -> None:
    body = {"image1_url": GOOD_URL, "image2_url": GOOD_URL, side: with_query(url)}
    r = await post_or_skip(client, "/api/comparison/download", body)
    assert_envelope(r, 400, "url_not_allowed")
    assert not anywhere.called  # not even the allowed side was fetched


async def test_allowed_url_is_fetched(client: httpx.AsyncClient, anywhere: respx.Route) -> None:
    """The control: the provider's own origin works, so the refusals above are not vacuous."""
    r = await client.post("/api/images", json={"wms_url": GOOD_URL})
    assert r.status_code == 200, r.text
    assert anywhere.call_count == 1
    assert str(anywhere.calls.last.request.url).startswith(WMS_URL)


@pytest.mark.parametrize(
    "entry",
    ["http://127.0.0.1:8080", "http://169.254.169.254", "http://10.0.0.5", "http://[::1]"],
)
async def test_allowed_hosts_never_open_internal_addresses(
    make_settings: Callable[..., Settings], anywhere: respx.Route, entry: str, wms: respx.Router
) -> None:
    async with app_client(make_settings(allowed_hosts=[entry]), wms=wms) as client:
        r = await client.post("/api/images", json={"wms_url": with_query(entry + "/wms")})
    assert_envelope(r, 400, "url_not_allowed")
    assert not anywhere.called


REDIRECTS = {
    "metadata": "http://169.254.169.254/latest/meta-data/",
    "loopback": "http://127.0.0.1:6379/",
    "scheme-relative-metadata": "//169.254.169.254/latest/meta-data/",
    "userinfo": "http://wms.test@evil.example/x",
    "other-port": "http://wms.test:8080/wms",
    "other-host": "http://evil.example/wms",
    "file": "file:///etc/passwd",
}


@pytest.mark.parametrize("location", REDIRECTS.values(), ids=REDIRECTS.keys())
async def test_redirect_off_the_allowed_origin_refused(
    client: httpx.AsyncClient, wms: respx.Router, location: str
) -> None:
    redirect = wms.get(url__startswith=WMS_URL).mock(
        return_value=httpx.Response(302, headers={"location": location})
    )
    elsewhere = wms.route().mock(side_effect=png_for)
    r = await client.post("/api/images", json=BODY)
    assert_envelope(r, 502, "redirect_not_allowed")
    assert redirect.call_count == 1
    assert not elsewhere.called


async def test_redirect_within_the_allowed_origin_followed(
    client: httpx.AsyncClient, wms: respx.Router
) -> None:
    moved = wms.get(url__startswith=WMS_URL + "2").mock(side_effect=png_for)
    wms.get(url__startswith=WMS_URL).mock(
        return_value=httpx.Response(302, headers={"location": f"/wms2?{GETMAP_QUERY}"})
    )
    r = await client.post("/api/images", json=BODY)
    assert r.status_code == 200, r.text
    assert moved.call_count == 1


async def test_redirect_to_another_local_server_never_reaches_it(
    make_settings: Callable[..., Settings],
) -> None:
    """Over real sockets: the provider redirects to a second server; that server sees nothing."""
    with FaultUpstream() as provider, FaultUpstream() as trap:
        provider.trap_url = trap.mode_url("ok") + "?WIDTH=64&HEIGHT=32"
        settings = make_settings(
            providers={"fault": {"url": provider.wms_url, "default_layer": "redirect_trap"}},
            default_provider="fault",
        )
        async with app_client(settings) as client:
            r = await client.post("/api/images", json=BODY)
        assert_envelope(r, 502, "redirect_not_allowed")
        assert provider.requests("redirect_trap") == 1
        assert trap.requests() == 0


# --- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({**BODY, "width": 5000}, "invalid_request"),
        ({**BODY, "height": 5000}, "invalid_request"),
        ({**BODY, "width": 20000}, "invalid_request"),  # one limit: max_image_px
        ({**BODY, "height": 0}, "validation_error"),
        ({"wms_url": GOOD_URL.replace("WIDTH=64", "WIDTH=5000")}, "invalid_request"),
    ],
)
async def test_image_size_limits(
    client: httpx.AsyncClient, anywhere: respx.Route, body: dict[str, Any], code: str
) -> None:
    r = await client.post("/api/images", json=body)
    envelope = assert_envelope(r, 422, code)
    assert re.search(r"width|height", envelope["error"], re.IGNORECASE)
    assert not anywhere.called


async def test_configured_pixel_limit_named_in_the_message(
    make_settings: Callable[..., Settings], anywhere: respx.Route, wms: respx.Router
) -> None:
    async with app_client(make_settings(max_image_px=256), wms=wms) as client:
        r = await client.post("/api/images", json={**BODY, "width": 257})
    assert "256" in assert_envelope(r, 422, "invalid_request")["error"]
    assert not anywhere.called


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
async def test_image_bytes_over_the_limit(
    make_settings: Callable[..., Settings], wms: respx.Router, declared: bool
) -> None:
    big = png(64, 32) + b"\0" * 8000

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 1024):
            yield big[i : i + 1024]

    content: Any = big if declared else chunks()
    wms.get(url__startswith=WMS_URL).mock(
        return_value=httpx.Response(200, content=content, headers={"content-type": "image/png"})
    )
    settings = make_settings(max_image_bytes=2048)
    async with app_client(settings, wms=wms) as client:
        r = await client.post("/api/images", json=BODY)
    assert "2048" in assert_envelope(r, 502, "image_too_large")["error"]
    root = settings.data_dir / "images"
    assert not [p for p in root.rglob("*") if p.is_file()]


async def test_prompt_limit(client: httpx.AsyncClient, anywhere: respx.Route) -> None:
    body = {**BODY, "analyzer": "local", "prompt": "x" * 4001}
    r = await post_or_skip(client, "/api/vision/analyze_satellite", body)
    assert "prompt" in assert_envelope(r, 422, "validation_error")["error"]
    assert not anywhere.called
    r = await client.post("/api/vision/analyze_satellite", json={**body, "prompt": "x" * 4000})
    assert r.status_code == 200, r.text  # the limit itself is allowed


@pytest.mark.parametrize(
    "extra",
    [
        {"times": [f"2024-01-{d:02d}" for d in range(1, 6)]},
        {"start": "2024-01-01", "end": "2024-12-01", "step": "P1M"},
    ],
    ids=["times", "range"],
)
async def test_timeseries_date_limit(
    make_settings: Callable[..., Settings],
    anywhere: respx.Route,
    extra: dict[str, Any],
    wms: respx.Router,
) -> None:
    async with app_client(make_settings(max_timeseries_dates=4), wms=wms) as client:
        r = await post_or_skip(client, "/api/timeseries", {**BODY, **extra})
    envelope = assert_envelope(r, 422, "too_many_dates")
    assert "4" in envelope["error"]
    assert not anywhere.called


BODY_LIMIT = 2048


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    "path", ["/api/images", "/api/vision/analyze_satellite", "/api/comparison/download"]
)
async def test_request_body_limit(
    make_settings: Callable[..., Settings],
    anywhere: respx.Route,
    declared: bool,
    path: str,
    wms: respx.Router,
) -> None:
    payload = json.dumps({**BODY, "layer": "x" * (2 * BODY_LIMIT)}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 512):
            yield payload[i : i + 512]

    async with app_client(make_settings(max_body_bytes=BODY_LIMIT), wms=wms) as client:
        r = await client.post(
            path,
            content=payload if declared else chunks(),
            headers={"content-type": "application/json"},
        )
    envelope = assert_envelope(r, 413, "payload_too_large")
    assert str(BODY_LIMIT) in envelope["error"]
    assert not anywhere.called


# --- API keys ----------------------------------------------------------------------------------

KEYS = ["k1-Zq8w", "k2-Pm4t"]


def api_operations(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, concrete path) of every /api operation in the OpenAPI schema, parameters filled."""
    ops: list[tuple[str, str]] = []
    for template, item in schema["paths"].items():
        if not template.startswith("/api"):
            continue
        path = re.sub(
            r"\{(\w+)\}", lambda m: "a" * 64 if m.group(1).endswith("id") else "nope", template
        )
        ops.extend((method.upper(), path) for method in item if method != "parameters")
    return ops


@pytest.fixture
async def keyed(
    make_settings: Callable[..., Settings], wms: respx.Router
) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(make_settings(api_keys=KEYS), wms=wms) as client:
        yield client


async def call(client: httpx.AsyncClient, method: str, path: str, **headers: str) -> httpx.Response:
    return await client.request(
        method, path, json={} if method == "POST" else None, headers=headers or None
    )


async def test_every_api_route_needs_a_key(keyed: httpx.AsyncClient, anywhere: respx.Route) -> None:
    ops = api_operations((await keyed.get("/openapi.json")).json())
    paths = {p for _, p in ops}
    assert {"/api/images", "/api/providers", "/api/vision/analyze_satellite"} <= paths
    for method, path in ops:
        refused = [
            await call(keyed, method, path),
            await call(keyed, method, path, authorization="Bearer nope"),
            await call(keyed, method, path, authorization=f"Bearer {KEYS[0]}x"),
            await call(keyed, method, path, authorization=f"Basic {KEYS[0]}"),
            await call(keyed, method, path, **{"x-api-key": KEYS[1].upper()}),
            await call(keyed, method, path, **{"x-api-key": ""}),
        ]
        for r in refused:
            assert_envelope(r, 401, "unauthorized")
        accepted = [
            await call(keyed, method, path, authorization=f"Bearer {KEYS[0]}"),
            await call(keyed, method, path, **{"x-api-key": KEYS[1]}),
        ]
        for r in accepted:
            assert r.status_code != 401, (method, path, r.text)
    assert not anywhere.called


async def test_key_is_checked_before_the_body(keyed: httpx.AsyncClient) -> None:
    """Without a key, even a malformed or oversized body gets 401: nothing is parsed first."""
    for content in (b"{not json", b"[]", b'{"bbox": "x"}'):
        r = await keyed.post(
            "/api/images", content=content, headers={"content-type": "application/json"}
        )
        assert_envelope(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"


async def test_probes_need_no_key(keyed: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz"):
        r = await keyed.get(path)
        assert r.status_code == 200, (path, r.text)


async def test_keys_are_not_echoed(keyed: httpx.AsyncClient) -> None:
    r = await keyed.get("/api/providers", headers={"authorization": "Bearer almost-k1-Zq8w"})
    assert_envelope(r, 401, "unauthorized")
    assert "k1-Zq8w" not in r.text and "almost" not in r.text


# --- CORS --------------------------------------------------------------------------------------

ORIGIN = "https://app.example"


@pytest.fixture
async def cors(
    make_settings: Callable[..., Settings], wms: respx.Router
) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(make_settings(cors_origins=[ORIGIN], api_keys=KEYS), wms=wms) as client:
        yield client


def preflight(origin: str) -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }


async def test_cors_preflight_from_an_allowed_origin(cors: httpx.AsyncClient) -> None:
    r = await cors.options("/api/images", headers=preflight(ORIGIN))  # no key needed
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    simple = await cors.get("/healthz", headers={"origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "https://app.example.evil.example", "null"]
)
async def test_cors_preflight_from_another_origin(cors: httpx.AsyncClient, origin: str) -> None:
    r = await cors.options("/api/images", headers=preflight(origin))
    assert r.status_code >= 400
    assert "access-control-allow-origin" not in r.headers
    simple = await cors.get("/healthz", headers={"origin": origin})
    assert "access-control-allow-origin" not in simple.headers


async def test_no_cors_headers_without_cors_origins(client: httpx.AsyncClient) -> None:
    r = await client.options("/api/images", headers=preflight(ORIGIN))
    assert "access-control-allow-origin" not in r.headers


# --- secrets (real server) ----------------------------------------------------------------------

WMS_SECRET = "wmsTok-7Rk2+Vb/9Q=="  # base64-like: also checked in its URL-encoded forms
AI_SECRET = "sk-ant-api03-LEAKCHECK-c41f9e0d2b"
API_SECRET = "apikey-LEAKCHECK-58d1e7"
SECRETS = {"wms": WMS_SECRET, "anthropic": AI_SECRET, "api_key": API_SECRET}


def forms(secret: str) -> set[str]:
    """The ways a secret could appear: raw, URL-encoded (both styles), JSON-escaped."""
    return {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}


def leaks(text: str) -> list[str]:
    return [f"{name}: {form!r}" for name, s in SECRETS.items() for form in forms(s) if form in text]


@pytest.fixture(scope="module")
def secret_upstream() -> Iterator[FaultUpstream]:
    with FaultUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def secret_server(
    secret_upstream: FaultUpstream,
    _fake_anthropic_server: FakeAnthropic,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SatapiProcess]:
    settings = {
        "default_provider": "fault",
        "api_keys": [API_SECRET],
        "anthropic_api_key": AI_SECRET,
        "anthropic_base_url": _fake_anthropic_server.base_url,
        "anthropic_max_retries": 0,
        "log_level": "debug",
        "max_body_bytes": 8192,
        "wms_total_timeout_s": 2.0,
        "wms_read_timeout_s": 0.5,
        "retry_wait_initial_s": 0.01,
        "providers": {
            "fault": {
                "url": secret_upstream.wms_url,
                "default_layer": "ok",
                "secret_params": {"token": WMS_SECRET},
            }
        },
    }
    with SatapiProcess(tmp_path_factory.mktemp("secrets"), settings) as server:
        yield server


def test_secrets_never_leak(
    secret_server: SatapiProcess,
    secret_upstream: FaultUpstream,
    _fake_anthropic_server: FakeAnthropic,
) -> None:
    fake = _fake_anthropic_server
    fake.reset()
    auth = {"authorization": f"Bearer {API_SECRET}"}
    responses: list[httpx.Response] = []
    with httpx.Client(base_url=secret_server.url, timeout=30, headers=auth) as client:

        def post(path: str, body: Any, status: int) -> httpx.Response:
            r = client.post(path, json=body)
            assert r.status_code == status, (path, body, r.text)
            responses.append(r)
            return r

        def get(path: str, status: int = 200) -> httpx.Response:
            r = client.get(path)
            assert r.status_code == status, (path, r.text)
            responses.append(r)
            return r

        ok = post("/api/images", {**BODY, "layer": "ok"}, 200).json()["image"]
        get(ok["url"])
        get(ok["url"] + "/meta")
        get("/api/providers")
        get("/api/providers/fault/layers", 502)
        post("/api/images", {**BODY, "layer": "xml200"}, 502)  # the exception echoes the key
        post("/api/images", {**BODY, "layer": "html200"}, 502)
        post("/api/images", {**BODY, "layer": "500"}, 502)
        post("/api/images", {**BODY, "layer": "reset"}, 502)
        post("/api/images", {**BODY, "layer": "hang"}, 504)
        url = f"{secret_upstream.wms_url}?{GETMAP_QUERY.replace('scene', 'xml200')}&token=guess"
        post("/api/images", {"wms_url": url}, 502)
        post("/api/images", {"bbox": [1, 2, 3]}, 422)
        post("/api/images", {**BODY, "layer": "x" * 9000}, 413)
        vision = {**BODY, "layer": "ok", "analyzer": "claude"}
        post("/api/vision/analyze_satellite", {**vision, "prompt": "Any water?"}, 200)
        fake.script(Reply.error(401, "authentication_error", f"invalid x-api-key: {AI_SECRET}"))
        post("/api/vision/analyze_satellite", {**vision, "prompt": "Any roads?"}, 502)
        fake.script(Reply.error(500, "api_error", f"internal error for key {AI_SECRET}"))
        post("/api/vision/analyze_satellite", {**vision, "prompt": "Any fields?"}, 502)
        r = client.get("/api/providers", headers={"authorization": f"Bearer {API_SECRET}-x"})
        assert r.status_code == 401
        responses.append(r)
        responses.append(client.get("/metrics"))
        last = responses[-1].headers["x-request-id"]

    # The secrets were really in play: the WMS got its token and the AI API got its key.
    sent = [s.query.get("TOKEN") for s in secret_upstream.seen()]
    assert WMS_SECRET in sent and "guess" not in sent
    assert any(
        AI_SECRET in (req.headers.get("x-api-key"), req.headers.get("authorization", "")[7:])
        for req in fake.requests
    )
    fake.reset()

    for r in responses:
        head = "\n".join(f"{k}: {v}" for k, v in r.headers.items())
        assert not leaks(head + "\n" + r.text), (r.request.url, leaks(head + r.text))
    # Every log line is written by the time the last request's access line is.
    assert secret_upstream.wait_for(lambda: last in secret_server.log(), timeout=5)
    log = secret_server.log()
    assert "wms_exception" in log and "analyzer=claude" in log  # the failures were logged...
    assert not leaks(log), leaks(log)  # ...without the secrets
    files = secret_server.files()
    assert any(p.suffix == ".json" for p in files)
    for path in files:
        assert not leaks(path.read_bytes().decode("latin-1")), path


def test_check_config_hides_secrets(secret_server: SatapiProcess) -> None:
    env = {"SATAPI_CONFIG": str(secret_server.config_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "satapi", "check-config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "token" in result.stdout  # the secret parameter's name is shown...
    assert not leaks(result.stdout + result.stderr)  # ...its value is not


def test_body_limit_on_a_real_server(secret_server: SatapiProcess) -> None:
    """Over a real socket (h11/httptools framing): declared and chunked bodies over the limit."""
    payload = json.dumps({**BODY, "layer": "x" * 20_000}).encode()
    auth = {"authorization": f"Bearer {API_SECRET}", "content-type": "application/json"}

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 4096):
            yield payload[i : i + 4096]

    with httpx.Client(base_url=secret_server.url, timeout=30, headers=auth) as client:
        for content in (payload, chunks()):
            r = client.post("/api/images", content=content)
            assert "8192" in assert_envelope(r, 413, "payload_too_large")["error"]
        assert client.get("/healthz").status_code == 200

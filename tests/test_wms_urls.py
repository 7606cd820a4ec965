"""GetMap URL building for both WMS versions and several CRSs (asymmetric bboxes show swaps)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from satapi.config import ProviderConfig
from satapi.errors import InvalidBBox, UrlNotAllowed
from satapi.providers.wms import build_target, target_from_url
from satapi.urlpolicy import UrlPolicy
from satapi.wms_client import GetMapRequest, validate_bbox


def provider(version: str, **kw: object) -> ProviderConfig:
    return ProviderConfig(url="http://wms.test/wms", version=version, default_layer="l", **kw)  # type: ignore[arg-type]


CASES = [
    # version, crs, bbox (API order), expected SRS/CRS key, expected BBOX
    ("1.1.1", "EPSG:4326", (10, 45, 14, 47), "SRS", "10,45,14,47"),
    ("1.3.0", "EPSG:4326", (10, 45, 14, 47), "CRS", "45,10,47,14"),
    ("1.3.0", "CRS:84", (10, 45, 14, 47), "CRS", "10,45,14,47"),
    ("1.1.1", "EPSG:3857", (1000, 2000, 3000, 5000), "SRS", "1000,2000,3000,5000"),
    ("1.3.0", "EPSG:3857", (1000, 2000, 3000, 5000), "CRS", "1000,2000,3000,5000"),
    ("1.3.0", "EPSG:4258", (-3.5, 50.25, 1.75, 53), "CRS", "50.25,-3.5,53,1.75"),
]


@pytest.mark.parametrize(("version", "crs", "bbox", "key", "expected"), CASES)
def test_getmap_axis_order_and_crs_key(
    version: str, crs: str, bbox: tuple[float, ...], key: str, expected: str
) -> None:
    req = GetMapRequest(layer="scene", bbox=bbox, crs=crs, width=300, height=200)  # type: ignore[arg-type]
    target = build_target("p", provider(version), req)
    params = dict(target.params)
    assert params[key] == crs
    assert ("CRS" if key == "SRS" else "SRS") not in params
    assert params["BBOX"] == expected
    assert params["VERSION"] == version
    assert params["REQUEST"] == "GetMap"
    assert params["WIDTH"] == "300" and params["HEIGHT"] == "200"
    assert params["EXCEPTIONS"] == ("application/vnd.ogc.se_xml" if version == "1.1.1" else "XML")
    assert target.expected_size == (300, 200)


def test_time_style_and_extra_params_and_secrets_redacted() -> None:
    p = provider("1.3.0", params={"MAP": "x"}, secret_params={"key": "s3cret"})
    req = GetMapRequest(layer="scene", bbox=(1, 2, 3, 4), width=10, height=10, time="2024-06-01")
    target = build_target("p", p, req)
    assert dict(target.params)["TIME"] == "2024-06-01"
    assert dict(target.params)["MAP"] == "x"
    assert "s3cret" not in target.url()
    assert "key=%2A%2A%2A" in target.url()
    assert ("key", "s3cret") in target.query
    assert "s3cret" not in target.image_id


def test_image_id_is_canonical() -> None:
    req = GetMapRequest(layer="scene", bbox=(1, 2, 3, 4), width=10, height=10)
    a = build_target("p", provider("1.3.0"), req)
    b = build_target("p", provider("1.3.0"), req)
    c = build_target(
        "p", provider("1.3.0"), GetMapRequest(layer="scene", bbox=(1, 2, 3, 5), width=10, height=10)
    )
    assert a.image_id == b.image_id != c.image_id
    assert len(a.image_id) == 64


@pytest.mark.parametrize(
    ("bbox", "crs"),
    [
        ((1, 2, 1, 3), "EPSG:4326"),
        ((2, 2, 1, 3), "EPSG:4326"),
        ((float("nan"), 2, 3, 4), "EPSG:4326"),
        ((float("inf"), 2, 3, 4), "EPSG:4326"),
        ((-181, 0, 10, 10), "EPSG:4326"),
        ((0, -91, 10, 10), "CRS:84"),
        ((0, 0, 10, 95), "EPSG:4326"),
        ((0, 0, 3e7, 10), "EPSG:3857"),
    ],
)
def test_bad_bbox_refused(bbox: tuple[float, ...], crs: str) -> None:
    with pytest.raises(InvalidBBox):
        validate_bbox(bbox, crs)


def test_target_from_allowed_url_keeps_query_and_adds_exceptions() -> None:
    policy = UrlPolicy({"p": provider("1.1.1", secret_params={"key": "s3cret"})}, [])
    url = "http://wms.test/wms?SERVICE=WMS&REQUEST=GetMap&VERSION=1.1.1&LAYERS=a&WIDTH=64&HEIGHT=32&key=leak"
    target = target_from_url(url, policy, max_px=4096)
    assert target.source == "p"
    assert target.expected_size == (64, 32)
    q = dict(parse_qsl(urlsplit(target.url(redacted=False)).query))
    assert q["EXCEPTIONS"] == "application/vnd.ogc.se_xml"
    assert q["key"] == "s3cret"  # the configured secret replaces the client's value


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/wms?REQUEST=GetMap&WIDTH=1&HEIGHT=1",
        "http://169.254.169.254/latest/meta-data?REQUEST=GetMap&WIDTH=1&HEIGHT=1",
        "http://10.0.0.1/wms?REQUEST=GetMap&WIDTH=1&HEIGHT=1",
        "http://[::1]/wms?REQUEST=GetMap&WIDTH=1&HEIGHT=1",
        "http://wms.test@evil.example/wms?REQUEST=GetMap&WIDTH=1&HEIGHT=1",
        "http://wms.test:8081/wms?REQUEST=GetMap&WIDTH=1&HEIGHT=1",
        "https://wms.test/wms?REQUEST=GetMap&WIDTH=1&HEIGHT=1",
        "file:///etc/passwd",
        "gopher://wms.test/x",
        "http://evil.example/wms?REQUEST=GetMap&WIDTH=1&HEIGHT=1",
    ],
)
def test_disallowed_urls(url: str) -> None:
    policy = UrlPolicy({"p": provider("1.1.1")}, ["allowed.example"])
    with pytest.raises(UrlNotAllowed):
        target_from_url(url, policy, max_px=4096)


def test_allowed_hosts_never_admit_internal_addresses() -> None:
    policy = UrlPolicy({}, ["127.0.0.1", "https://allowed.example"])
    assert not policy.is_allowed("https://127.0.0.1/x")
    assert policy.is_allowed("https://allowed.example/x")
    assert not policy.is_allowed("http://allowed.example/x")  # scheme must match too


def test_an_allowed_host_on_another_scheme_or_port_says_what_is_allowed() -> None:
    # A bare entry means https on 443; the message names that, so the slip is easy to see.
    policy = UrlPolicy({}, ["allowed.example", "http://allowed.example:8080", "127.0.0.1"])
    with pytest.raises(UrlNotAllowed) as refused:
        policy.check("http://allowed.example/wms")
    assert str(refused.value) == (
        "The host 'allowed.example' is allowed only as http://allowed.example:8080, "
        "https://allowed.example:443, not as http://allowed.example:80."
    )
    # Internal addresses are never admitted, and the message does not hint otherwise.
    with pytest.raises(UrlNotAllowed, match="not a configured provider or an allowed host"):
        policy.check("http://127.0.0.1/wms")
    with pytest.raises(UrlNotAllowed, match="not a configured provider or an allowed host"):
        policy.check("https://other.example/wms")


@pytest.mark.parametrize(
    ("fmt", "sent"),
    [("image/png", {"TRANSPARENT": "TRUE"}), ("image/jpeg", {"BGCOLOR": "0x000000"})],
)
def test_the_servers_background_is_no_data(fmt: str, sent: dict[str, str]) -> None:
    # Where the layer has no data, a PNG is transparent and a JPEG black: both are no data to
    # the local metrics (never white "cloud").
    req = GetMapRequest(layer="l", bbox=(10, 45, 12, 46), width=4, height=2, format=fmt)
    params = dict(build_target("p", provider("1.3.0"), req).params)
    assert {k: params[k] for k in sent} == sent
    assert not {"TRANSPARENT", "BGCOLOR"} - set(sent) & set(params)
    # A provider's own params win.
    own = ProviderConfig(
        url="http://wms.example/wms", default_layer="l", params={"TRANSPARENT": "FALSE"}
    )
    assert dict(build_target("p", own, req).params).get("TRANSPARENT", "FALSE") == "FALSE"

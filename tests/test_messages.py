"""Sentences users read: articles, singular and plural, no reference to what is not there."""

from __future__ import annotations

import httpx
import pytest

from satapi.analyzers.pixels import summarize
from satapi.config import Settings
from satapi.errors import InvalidBBox
from satapi.wms_client import validate_bbox


@pytest.mark.parametrize(
    ("crs", "article"),
    [("EPSG:4326", "An EPSG:4326"), ("CRS:84", "A CRS:84"), ("OGC:CRS84", "An OGC:CRS84")],
)
def test_the_article_fits_the_crs(crs: str, article: str) -> None:
    with pytest.raises(InvalidBBox) as raised:
        validate_bbox([0, 0, 200, 10], crs)
    assert raised.value.message.startswith(f"{article} bbox is lon/lat")


def _metrics(cloud: float, vegetation: float) -> dict[str, float]:
    return {
        "nodata_fraction": 0.0,
        "cloud_fraction": cloud,
        "vegetation_fraction": vegetation,
        "water_fraction": 0.0,
        "bare_fraction": 0.0,
        "built_fraction": 0.0,
        "mean_brightness": 0.8,
    }


def test_a_cloud_caveat_names_figures_only_when_there_are_some() -> None:
    some = summarize(_metrics(cloud=0.6, vegetation=0.3))
    assert "most of the ground is hidden and the figures above are unreliable." in some
    none = summarize(_metrics(cloud=1.0, vegetation=0.0))
    assert "figures above" not in none
    assert "Clouds or snow cover 100 %, so most of the ground is hidden." in none


# --- validation errors say what is expected, in words ----------------------------------------

BBOX = [10, 45, 14, 47]


@pytest.mark.parametrize(
    ("body", "where", "words"),
    [
        ({"time": "2024-13-45"}, "time", "2024-13-45 is not a real date: month 13 does not exist"),
        ({"time": "2024-02-30"}, "time", "2024-02 has no day 30"),
        ({"time": "2024-06-01T24:61"}, "time", "its time of day does not exist"),
        (
            {"time": "June 2024"},
            "time",
            "must be an ISO 8601 date, date-time or interval, e.g. 2024-06-01 or "
            "2024-06-01/2024-06-30",
        ),
        ({"layer": "a;b"}, "layer", "must be a layer name"),
        (
            {"clearest": {"window": "May to June"}},
            "clearest.window",
            "must be START/END: two ISO 8601 dates or date-times, e.g. 2024-05-01/2024-09-30",
        ),
        ({"clearest": {"window": "2024-05-01/2024-06-31"}}, "clearest.window", "has no day 31"),
    ],
)
async def test_a_bad_field_is_said_in_words(
    client: httpx.AsyncClient, body: dict[str, object], where: str, words: str
) -> None:
    r = await client.post("/api/images", json={"bbox": BBOX, **body})
    assert r.status_code == 422, r.text
    answer = r.json()
    assert answer["code"] == "validation_error"
    assert f"{where}: " in answer["error"] and words in answer["error"]
    assert "\\d" not in answer["error"] and "^" not in answer["error"]  # no regular expression
    assert answer["details"][0]["loc"][:2] == ["body", where.split(".")[0]]
    assert "\\d" not in answer["details"][0]["msg"]  # the details say it in words too


async def test_a_series_and_a_tile_check_their_dates_too(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/timeseries", json={"bbox": BBOX, "times": ["2024-04-31"]})
    assert r.status_code == 422 and "2024-04 has no day 31" in r.json()["error"]
    r = await client.get("/api/tiles/test/3/4/2.png", params={"time": "2024-13-01"})
    assert r.status_code == 422 and "month 13 does not exist" in r.json()["error"]


async def test_a_body_not_sent_as_json_says_so(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/images", content=b'{"bbox": [10, 45, 14, 47]}')
    assert r.status_code == 422
    assert r.json()["error"] == (
        "The body must be a JSON object sent with Content-Type: application/json; "
        "this one had no Content-Type."
    )
    r = await client.post(
        "/api/images",
        data={"bbox": "10,45,14,47"},  # a form, as curl -d sends without -H
    )
    assert "this one was sent as 'application/x-www-form-urlencoded'" in r.json()["error"]
    r = await client.post("/api/images", json=[10, 45, 14, 47])
    assert r.json()["error"] == "The body must be a JSON object ({...}), not another JSON value."


async def test_invalid_json_says_where(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/images",
        content=b'{"bbox": [10, 45, 14, 47],\n "width": 64 "height": 32}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422
    assert r.json()["error"] == (
        "The body is not valid JSON: Expecting ',' delimiter at line 2, column 14."
    )


async def test_one_size_limit_stated_as_enforced(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """`max_image_px` is the schema's maximum and the limit a request meets, named alike."""
    limit = settings.max_image_px
    schema = (await client.get("/openapi.json")).json()
    fields = schema["components"]["schemas"]["ImageRequest"]["properties"]
    assert fields["width"]["maximum"] == fields["height"]["maximum"] == limit
    stream = schema["paths"]["/api/vision/analyze_satellite_stream"]["get"]["parameters"]
    assert {p["name"]: p["schema"].get("maximum") for p in stream if p["name"] == "width"} == {
        "width": limit
    }
    r = await client.post("/api/images", json={"bbox": BBOX, "width": limit + 1})
    assert r.status_code == 422
    assert r.json()["error"] == (
        f"width must be between 1 and {limit} pixels (the service's max_image_px)."
    )

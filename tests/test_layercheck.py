"""Checking requests against a layer's capabilities (layers, CRSs, dates, extent), without a server.

The same checks run end to end against the real MapServer in tests/test_mapserver_layer_checks.py.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from satapi.analyzers.base import DataWindow, ImageInput
from satapi.analyzers.prompts import single_image_text
from satapi.config import ProviderConfig
from satapi.errors import (
    InvalidBBox,
    OutsideLayer,
    TimeNotAvailable,
    UnknownLayer,
    UnsupportedCRS,
    UpstreamError,
)
from satapi.layercheck import check_request, check_time, data_window
from satapi.wms_client import GetMapRequest, LayerInfo, validate_bbox

SCENE = LayerInfo(
    name="scene",
    title=None,
    crs=["CRS:84", "EPSG:3857", "EPSG:4326"],
    bbox=[10.0, 45.0, 14.0, 47.0],
    times=["2024-01-01,2024-06-01"],
)
WMS = ProviderConfig(url="http://wms.test/wms", default_layer="scene")


class Caps:
    """An `ImageClient` stand-in whose only part used here is `layers()`."""

    def __init__(self, layers: list[LayerInfo] | Exception) -> None:
        self._layers = layers
        self.calls = 0

    async def layers(self, name: str, *, refresh: bool = False) -> list[LayerInfo]:
        self.calls += 1
        if isinstance(self._layers, Exception):
            raise self._layers
        return self._layers


def req(**over: Any) -> GetMapRequest:
    fields: dict[str, Any] = {"layer": "scene", "bbox": (10, 45, 14, 47), "width": 4, "height": 2}
    return GetMapRequest(**{**fields, **over})


async def check(client: Caps, provider: ProviderConfig = WMS, **over: Any) -> DataWindow | None:
    return await check_request(client, "ms", provider, req(**over))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "time", "nearest"),
    [
        (["2024-01-01,2024-06-01"], "2031-01-01", {"before": "2024-06-01", "after": None}),
        (["2024-01-01,2024-06-01"], "2023-01-01", {"before": None, "after": "2024-01-01"}),
        (
            ["2024-01-01/2024-12-31/P1M"],
            "2024-03-15",
            {"before": "2024-03-01", "after": "2024-04-01"},
        ),
        (
            ["2020-01-06/2025-12-29/P7D"],  # Mondays: a Wednesday between two of them
            "2024-06-05",
            {"before": "2024-06-03", "after": "2024-06-10"},
        ),
        (
            ["2024-01-01,2024-06-01"],
            "2024-02-01/2024-05-01",
            {"before": "2024-01-01", "after": "2024-06-01"},
        ),
    ],
)
def test_missing_times_name_the_nearest(
    values: list[str], time: str, nearest: dict[str, str | None]
) -> None:
    info = LayerInfo(name="scene", title=None, crs=[], bbox=None, times=values)
    with pytest.raises(TimeNotAvailable) as refused:
        check_time(info, time)
    assert refused.value.extra["nearest"] == nearest
    assert time in refused.value.message


@pytest.mark.parametrize(
    ("values", "time"),
    [
        (["2024-01-01,2024-06-01"], "2024-06-01"),
        (["2024-01-01,2024-06-01"], "2024-06-01T10:30:00Z"),  # any time on an offered day
        (["2024-01-01/2024-12-31/P1M"], "2024-05-01"),
        (["2020-01-01/2025-12-31/P1D"], "2024-06-01"),  # daily for years
        (["2020-01-06/2025-12-29/P7D"], "2024-06-03T12:00:00Z"),  # weekly, a time that day
        (["2020-01-01/2025-12-31/P2D"], "2025-12-30"),  # the last step
        (["2024-01-01/2024-12-31"], "2024-05-17"),  # continuous interval
        (["2024-01-01,2024-06-01"], "2024-05-01/2024-07-01"),  # an interval holding a date
        (["current"], "2031-01-01"),  # nothing comparable: the server decides
    ],
)
def test_offered_times_pass(values: list[str], time: str) -> None:
    check_time(LayerInfo(name="scene", title=None, crs=[], bbox=None, times=values), time)


def test_no_time_dimension_says_leave_time_out() -> None:
    info = LayerInfo(name="static", title=None, crs=[], bbox=None)
    with pytest.raises(TimeNotAvailable, match="layer 'static' has no time dimension; leave"):
        check_time(info, "2024-06-01")


async def test_unknown_layer_lists_twenty_and_points_to_the_rest() -> None:
    many = [LayerInfo(name=f"layer{i:02d}", title=None, crs=[], bbox=None) for i in range(30)]
    with pytest.raises(UnknownLayer) as refused:
        await check(Caps(many), layer="nope")
    assert refused.value.extra["layers"] == [f"layer{i:02d}" for i in range(20)]
    assert refused.value.extra["layer_count"] == 30
    assert "GET /api/providers/ms/layers" in refused.value.message


async def test_unsupported_crs_lists_the_layers_crss() -> None:
    with pytest.raises(UnsupportedCRS) as refused:
        await check(Caps([SCENE]), crs="EPSG:2154", bbox=(600000, 6000000, 700000, 6100000))
    assert refused.value.extra["supported"] == SCENE.crs
    # CRS:84 and OGC:CRS84 name the same thing.
    assert await check(Caps([SCENE]), crs="OGC:CRS84") is not None


async def test_capabilities_unavailable_proceed_and_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="satapi.layercheck"):
        assert await check(Caps(UpstreamError("no caps")), time="2031-01-01", layer="x") is None
    assert "capabilities of ms unavailable" in caplog.text


async def test_check_time_false_and_process_api_providers_skip() -> None:
    no_time = WMS.model_copy(update={"check_time": False})
    assert await check(Caps([SCENE]), no_time, time="2031-01-01") is not None
    oauth = ProviderConfig(
        kind="sentinelhub",
        url="http://sh.test",
        token_url="http://sh.test/oauth/token",
        client_id="id",
        client_secret="secret",  # type: ignore[arg-type]
    )
    client = Caps([SCENE])
    assert await check(client, oauth, layer="sentinel-2-l2a", time="2031-01-01") is None
    assert client.calls == 0


@pytest.mark.parametrize(
    ("bbox", "window"),
    [
        ((10, 45, 14, 47), DataWindow(0.0, 0.0, 1.0, 1.0)),
        ((8, 45, 12, 47), DataWindow(0.5, 0.0, 1.0, 1.0)),  # west half outside
        ((12, 46, 16, 48), DataWindow(0.0, 0.5, 0.5, 1.0)),  # north and east outside
    ],
)
def test_data_window(bbox: tuple[float, ...], window: DataWindow) -> None:
    assert data_window(SCENE, req(bbox=bbox)) == window


def test_no_overlap_names_the_extent() -> None:
    with pytest.raises(OutsideLayer, match=r"covers lon 10\.\.14, lat 45\.\.47"):
        data_window(SCENE, req(bbox=(100, 45, 104, 47)))
    # Touching edges share no pixel.
    with pytest.raises(OutsideLayer):
        data_window(SCENE, req(bbox=(14, 45, 16, 47)))


def test_unknown_extent_or_crs_gives_no_window() -> None:
    assert data_window(SCENE, req(crs="EPSG:999999", bbox=(6e5, 5e6, 7e5, 5.1e6))) is None
    no_bbox = LayerInfo(name="scene", title=None, crs=[], bbox=None)
    assert data_window(no_bbox, req()) is None


@pytest.mark.parametrize("crs", ["EPSG:3857", "EPSG:32632", "EPSG:2154", "epsg:3035"])
def test_degrees_in_a_metre_crs_are_refused(crs: str) -> None:
    with pytest.raises(InvalidBBox, match=r"looks like degrees.*EPSG:4326"):
        validate_bbox([10, 45, 14, 47], crs)
    validate_bbox([1113194.9, 5621521.5, 1558472.9, 5942074.1], crs)


def test_claude_is_told_the_covered_part() -> None:
    image = ImageInput(
        data=b"",
        content_type="image/png",
        bbox=(8, 45, 12, 47),
        crs="EPSG:4326",
        data_window=DataWindow(0.5, 0.0, 1.0, 1.0),
    )
    text = single_image_text(image, None)
    assert "Coverage: only 50 % of the image lies inside the layer's extent" in text
    assert "left edge" in text
    whole = ImageInput(data=b"", content_type="image/png", data_window=DataWindow(0, 0, 1, 1))
    assert "Coverage" not in single_image_text(whole, None)


def test_the_extent_is_projected_into_any_crs_proj_knows() -> None:
    utm = LayerInfo(name="scene", title=None, crs=["EPSG:32632"], bbox=[10.0, 45.0, 14.0, 47.0])
    from pyproj import Transformer

    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    x0, y0 = to_utm.transform(8.0, 45.5)
    x1, y1 = to_utm.transform(12.0, 46.5)
    window = data_window(utm, req(crs="EPSG:32632", bbox=(x0, y0, x1, y1)))
    assert window is not None
    # lon 8..10 of the box lies west of the layer: about half of it, give or take the grid's tilt
    assert window.left == pytest.approx(0.5, abs=0.06)
    assert window.right == 1.0
    far = to_utm.transform(-20.0, 10.0) + to_utm.transform(-19.0, 11.0)
    with pytest.raises(OutsideLayer):
        data_window(utm, req(crs="EPSG:32632", bbox=(far[0], far[1], far[2], far[3])))
    # A CRS PROJ does not know: the extent is not compared.
    assert data_window(utm, req(crs="EPSG:999999", bbox=(x0, y0, x1, y1))) is None

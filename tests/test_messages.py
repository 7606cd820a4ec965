"""Sentences users read: articles, singular and plural, no reference to what is not there."""

from __future__ import annotations

import pytest

from satapi.analyzers.pixels import summarize
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

"""GET /api/tiles/{provider}/{z}/{x}/{y}.png: any WMS layer as cached Web Mercator XYZ tiles."""

from __future__ import annotations

import time as clock
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response, StreamingResponse

from satapi.deps import ImagesDep, ResourcesDep
from satapi.layercheck import check_tile
from satapi.models import LAYER_PATTERN, Time
from satapi.routers.headonly import without_body
from satapi.tiles import MAX_ZOOM, tile_plan, warp_rows

router = APIRouter(prefix="/api/tiles", tags=["tiles"])

# Dated imagery does not change once published; a day keeps browsers from asking again while
# the service's store keeps the tile itself (and answers If-None-Match with 304).
DATED_MAX_AGE_S = 86400


@router.head("/{provider}/{z}/{x}/{y}.png", include_in_schema=False)
@router.get(
    "/{provider}/{z}/{x}/{y}.png",
    summary="A Web Mercator XYZ tile (256 px PNG) of a provider's layer",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"image/png": {}}, "description": "The tile."},
        304: {"description": "Not modified (If-None-Match matched the ETag)."},
    },
)
async def get_tile(
    request: Request,
    provider: Annotated[str, Path(max_length=64, description="A configured provider.")],
    z: Annotated[int, Path(ge=0, le=MAX_ZOOM, description="Zoom level.")],
    x: Annotated[int, Path(ge=0, description="Column, from the west.")],
    y: Annotated[int, Path(ge=0, description="Row, from the north.")],
    images: ImagesDep,
    resources: ResourcesDep,
    layer: Annotated[
        str | None,
        Query(pattern=LAYER_PATTERN, description="WMS layer; the provider's default if omitted."),
    ] = None,
    time: Annotated[Time | None, Query(description="The WMS TIME value, if any.")] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """A 256 x 256 GetMap in EPSG:3857, fetched through the image store like any image: stored,
    shared by concurrent requests, under the same limits. Usable as an XYZ layer in Leaflet,
    OpenLayers or QGIS: `/api/tiles/{provider}/{z}/{x}/{y}.png?layer=...&time=...`.

    A layer whose capabilities offer only EPSG:4326 or CRS:84 is fetched for the tile's lon/lat
    box (stored the same way) and re-projected to Web Mercator row by row.
    """
    config = images.client.provider(provider)
    name = layer or config.layer
    offered = await check_tile(images.client, provider, config, name, time)
    plan = tile_plan(z, x, y, layer=name, time=time, offered=offered)
    fetched = await images.fetch(images.target(provider, plan.request))
    record = fetched.record
    # The id names the request; fetched_at tells a re-download of undated imagery apart.
    etag = f'"{record.id}.{int(record.fetched_at)}"'
    if record.expires_at is not None:
        max_age = max(0, int(record.expires_at - clock.time()))
    else:
        max_age = DATED_MAX_AGE_S
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={max_age}"}
    if if_none_match is not None and etag in {t.strip() for t in if_none_match.split(",")} | {"*"}:
        return Response(status_code=304, headers=headers)
    if plan.rows is not None:
        source = b"".join([chunk async for chunk in images.store.iter_bytes(record)])
        body = await resources.cpu.run(warp_rows, source, plan.rows)
        response: Response = Response(body, media_type="image/png", headers=headers)
    else:
        headers["Content-Length"] = str(record.bytes)
        response = StreamingResponse(
            images.store.iter_bytes(record), media_type=record.content_type, headers=headers
        )
    # HEAD: the same headers (a warped tile's length needs its body made), no bytes.
    return await without_body(response) if request.method == "HEAD" else response

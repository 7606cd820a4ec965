"""POST /api/images (fetch or reuse a map image); GET /api/images/{id} (bytes, metadata)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import Response, StreamingResponse

from satapi.analyzers.base import DataWindow
from satapi.deps import ImagesDep, SelectorDep, StoreDep
from satapi.errors import NotFound
from satapi.imagery import FetchedImage, ImageService
from satapi.models import (
    ImageMeta,
    ImageRequest,
    ImageResponse,
    ImageTimings,
    SelectionOut,
    StoredImageMeta,
)
from satapi.routers.headonly import without_body
from satapi.selection import Plan, Selector
from satapi.storage import ID_PATTERN, ImageRecord, ImageStore
from satapi.wms_client import FetchTarget

router = APIRouter(prefix="/api/images", tags=["images"])

ImageId = Annotated[
    str, Path(pattern=ID_PATTERN, description="Image id: 64 lower-case hex characters.")
]
IMMUTABLE = "public, max-age=31536000, immutable"


def target_for(images: ImageService, body: ImageRequest) -> FetchTarget:
    """The download an image request stands for (fields or an allowed `wms_url`)."""
    if body.wms_url is not None:
        return images.target_for_url(body.wms_url)
    provider = images.client.provider(body.provider or images.default_provider)
    return images.target(body.provider, body.getmap(provider.layer, time=body.time))


async def window_for(images: ImageService, body: ImageRequest) -> DataWindow | None:
    """Check the request against its layer's capabilities (layer, CRS, time, extent) before
    any GetMap; the part of the image that will hold data. An old client's `wms_url` is not
    checked."""
    if body.wms_url is not None:
        return None
    provider = images.client.provider(body.provider or images.default_provider)
    return await images.check(body.provider, body.getmap(provider.layer, time=body.time))


async def plan_for(selector: Selector, body: ImageRequest) -> Plan | None:
    """With `clearest`: the validated selection (candidate dates listed, nothing fetched)."""
    if body.clearest is None:
        return None
    provider = selector.images.client.provider(body.provider or selector.images.default_provider)
    return await selector.plan(body.provider, body.getmap(provider.layer), body.clearest.spec())


def image_meta(fetched: FetchedImage) -> ImageMeta:
    """The public metadata of a fetched image."""
    return ImageMeta.from_fetched(fetched)


@router.post(
    "", summary="Fetch a map image (or reuse the stored one)", response_model=ImageResponse
)
async def fetch_image(
    body: ImageRequest, images: ImagesDep, selector: SelectorDep
) -> ImageResponse:
    """Download the GetMap image once, store it by the request's hash, and return its metadata.

    An identical request is served from the store; identical concurrent requests share one
    download. With `clearest` instead of `time`, small previews of the window's dates are
    scored for cloud and no-data first, and the clearest date is fetched (`selection` says how).
    """
    started = time.perf_counter()
    target = target_for(images, body) if body.clearest is None else None
    window = await window_for(images, body)
    plan = await plan_for(selector, body)
    selection = None
    if plan is not None:
        chosen = await selector.run(plan)
        target, selection = chosen.target, SelectionOut.of(chosen.selection)
    assert target is not None
    fetched = await images.fetch(target, data_window=window)
    return ImageResponse(
        image=image_meta(fetched),
        timings=ImageTimings(
            queue_wait_s=round(fetched.queue_wait_s, 4),
            download_s=round(fetched.download_s, 4),
            total_s=round(time.perf_counter() - started, 4),
        ),
        selection=selection,
    )


async def _record(store: ImageStore, image_id: str) -> ImageRecord:
    record = await store.get(image_id, check=True)
    if record is None:
        raise NotFound(f"No stored image has the id {image_id}.")
    return record


@router.head("/{image_id}", include_in_schema=False)
@router.get(
    "/{image_id}",
    summary="Get a stored image's bytes",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"image/png": {}, "image/jpeg": {}, "image/tiff": {}},
            "description": "The image (a GeoTIFF for `format: image/tiff`).",
        },
        304: {"description": "Not modified (If-None-Match matched the ETag)."},
    },
)
async def get_image(
    request: Request,
    image_id: ImageId,
    store: StoreDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Stream the image with an ETag; it never changes, so caches may keep it for a year.
    HEAD answers the same headers without the bytes."""
    record = await _record(store, image_id)
    etag = f'"{record.id}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    if if_none_match is not None and etag in {t.strip() for t in if_none_match.split(",")} | {"*"}:
        return Response(status_code=304, headers=headers)
    headers["Content-Length"] = str(record.bytes)
    if request.method == "HEAD":
        return await without_body(Response(media_type=record.content_type, headers=headers))
    # Read the first chunk before answering, so a vanished image or a store that fails
    # becomes an error envelope rather than a response cut off after its headers.
    chunks = store.iter_bytes(record)
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = b""
    return StreamingResponse(
        _prepend(first, chunks), media_type=record.content_type, headers=headers
    )


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        # A client that leaves mid-stream: close the store's reader now, not at collection.
        close = getattr(rest, "aclose", None)
        if close is not None:
            await close()


@router.get(
    "/{image_id}/meta", summary="Get a stored image's metadata", response_model=StoredImageMeta
)
async def get_image_meta(image_id: ImageId, store: StoreDep) -> StoredImageMeta:
    """The stored record: size, source (secrets redacted), when it was fetched and expires."""
    record = await _record(store, image_id)
    return StoredImageMeta(
        image=ImageMeta.from_record(record, cached=True),
        fetched_at=record.fetched_at,
        expires_at=record.expires_at,
        crs=record.crs,
        source_url=record.source_url,
        kind=record.kind,
    )

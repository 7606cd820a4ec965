"""The old Flask design, faithfully: WMS downloads on a 5-thread pool that every request blocks on.

Run it with gunicorn (see ``bench/baseline/run.py``)::

    BASELINE_WMS_URL=http://127.0.0.1:PORT/wms BASELINE_DATA_DIR=bench/out/baseline-data \\
        .venv/bin/gunicorn -w 2 -k sync -b 127.0.0.1:8001 bench.baseline.app:app

Environment
-----------
``BASELINE_WMS_URL``   WMS endpoint that GetMap requests go to (required for the image routes).
``BASELINE_DATA_DIR``  where downloaded images are written (default: ``$TMPDIR/satapi-baseline``).

Routes (same paths and JSON bodies as satapi)
---------------------------------------------
``POST /api/images``
    ``{"provider"?, "layer", "bbox": [minx, miny, maxx, maxy], "crs": "EPSG:4326", "time"?,
    "width", "height", "format": "image/png"}`` -> 201 ``{"id", "path", "bytes", "content_type",
    "url"}``.
``POST /api/vision/analyze_satellite``
    Same body plus ``"analyzer": "local"``; downloads, then a numpy pixel pass in the request
    thread -> 200 ``{"id", "bytes", "analyzer": "local", "metrics": {"mean_rgb", "green_fraction",
    "water_fraction", "brightness"}}``.
    With ``"analyzer": "claude"``: downloads, then calls the ``anthropic`` SDK synchronously in
    the request thread (``messages.create`` with the image as base64 and the prompt, as the old
    app did) -> 200 ``{"id", "bytes", "analyzer": "claude", "model", "text"}``. The API is
    ``BASELINE_ANTHROPIC_BASE_URL`` with ``BASELINE_ANTHROPIC_API_KEY`` (the benchmark points it
    at ``bench.fake_ai``); an API failure is 502.
``POST /api/comparison/download``
    Same body plus ``"before": {"time"}, "after": {"time"}``; downloads before, then after
    (sequentially through the pool) -> 201 ``{"before": {...}, "after": {...}}``.
``GET /healthz`` -> ``{"ok": true}``.

Errors: 422 ``{"error": ...}`` for a bad body, 502 when the WMS answers non-200 or a non-image
(e.g. a ServiceExceptionReport), 504 when the download or the wait for the pool times out.

The design, on purpose: a module-level ``ThreadPoolExecutor(max_workers=5)`` per worker process;
each download is ``requests.get(url, timeout=30)`` submitted to it, and the route blocks on
``future.result(timeout=120)``; the whole body is then written with ``open(path, "wb").write``.
Under gunicorn ``-k sync`` a worker therefore serves one request at a time; under ``gthread``
at most 5 downloads per worker run at once whatever ``--threads`` says.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
from flask import Flask, jsonify, request
from PIL import Image

EXECUTOR = ThreadPoolExecutor(max_workers=5)
FORMATS = {"image/png": ".png", "image/jpeg": ".jpg"}

app = Flask(__name__)


class InvalidBody(Exception):
    """The request body is invalid (422)."""


class UpstreamError(Exception):
    """The WMS failed or timed out (502 / 504)."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ImageRequest:
    layer: str
    bbox: tuple[float, float, float, float]
    crs: str
    width: int
    height: int
    format: str
    time: str | None = None
    provider: str | None = None


# --------------------------------------------------------------------------- helpers


def data_dir() -> Path:
    default = Path(tempfile.gettempdir()) / "satapi-baseline"
    path = Path(os.environ.get("BASELINE_DATA_DIR") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def parse_image_request(body: Any, time_override: str | None = None) -> ImageRequest:
    """Validate the satapi image body (the old app's hand-written checks)."""
    if not isinstance(body, dict):
        raise InvalidBody("body must be a JSON object")
    try:
        bbox = tuple(float(v) for v in body["bbox"])
        req = ImageRequest(
            layer=str(body["layer"]),
            bbox=bbox,  # type: ignore[arg-type]
            crs=str(body.get("crs", "EPSG:4326")),
            width=int(body.get("width", 512)),
            height=int(body.get("height", 512)),
            format=str(body.get("format", "image/png")),
            time=time_override or body.get("time"),
            provider=body.get("provider"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidBody(f"invalid body: {exc!r}") from exc
    if len(req.bbox) != 4 or req.format not in FORMATS:
        raise InvalidBody("bbox needs 4 numbers and format image/png or image/jpeg")
    if not (0 < req.width <= 4096 and 0 < req.height <= 4096):
        raise InvalidBody("width/height out of range")
    return req


def getmap_url(req: ImageRequest) -> str:
    """GetMap URL (WMS 1.3.0: EPSG:4326 axis order is lat,lon)."""
    base = os.environ.get("BASELINE_WMS_URL")
    if not base:
        raise UpstreamError("BASELINE_WMS_URL is not set")
    minx, miny, maxx, maxy = req.bbox
    bbox = (miny, minx, maxy, maxx) if req.crs.upper() == "EPSG:4326" else req.bbox
    params = {
        "SERVICE": "WMS",
        "VERSION": "1.3.0",
        "REQUEST": "GetMap",
        "LAYERS": req.layer,
        "STYLES": "",
        "CRS": req.crs,
        "BBOX": ",".join(repr(v) for v in bbox),
        "WIDTH": str(req.width),
        "HEIGHT": str(req.height),
        "FORMAT": req.format,
    }
    if req.time:
        params["TIME"] = req.time
    return requests.Request("GET", base, params=params).prepare().url or base


def _fetch(url: str) -> requests.Response:
    return requests.get(url, timeout=30)


def download(req: ImageRequest) -> dict[str, Any]:
    """Download through the pool, block for the result, write the file; the image record."""
    url = getmap_url(req)
    future = EXECUTOR.submit(_fetch, url)
    try:
        resp = future.result(timeout=120)
    except (FutureTimeout, requests.Timeout) as exc:
        raise UpstreamError(f"WMS timed out: {exc!r}", status=504) from exc
    except requests.RequestException as exc:
        raise UpstreamError(f"WMS request failed: {exc!r}") from exc
    content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
    if resp.status_code != 200 or not content_type.startswith("image/"):
        raise UpstreamError(f"WMS answered {resp.status_code} {content_type}: {resp.text[:200]}")
    image_id = uuid.uuid4().hex
    path = data_dir() / f"{image_id}{FORMATS.get(content_type, '.bin')}"
    open(path, "wb").write(resp.content)  # noqa: SIM115 - the old app's way, kept on purpose
    return {
        "id": image_id,
        "path": str(path),
        "bytes": len(resp.content),
        "content_type": content_type,
        "url": url,
        "_content": resp.content,
    }


def public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def pixel_metrics(data: bytes) -> dict[str, Any]:
    """The old app's local fallback analysis: mean colour, green and water fractions."""
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    green = (g > r * 1.05) & (g > b * 1.05)
    water = (b > r * 1.2) & (b > g * 1.05)
    return {
        "mean_rgb": [round(float(c), 2) for c in rgb.reshape(-1, 3).mean(axis=0)],
        "green_fraction": round(float(green.mean()), 4),
        "water_fraction": round(float(water.mean()), 4),
        "brightness": round(float(rgb.mean() / 255.0), 4),
    }


# --------------------------------------------------------------------------- routes


@app.errorhandler(InvalidBody)
def _invalid_body(exc: InvalidBody) -> tuple[Any, int]:
    return jsonify(error=str(exc)), 422


@app.errorhandler(UpstreamError)
def _upstream_error(exc: UpstreamError) -> tuple[Any, int]:
    return jsonify(error=str(exc)), exc.status


@app.get("/healthz")
def healthz() -> Any:
    return jsonify(ok=True)


@app.post("/api/images")
def images() -> tuple[Any, int]:
    req = parse_image_request(request.get_json(silent=True))
    return jsonify(public(download(req))), 201


_claude_client: Any = None


def claude_client() -> Any:
    """The module's one synchronous SDK client (thread-safe), made on first use."""
    global _claude_client
    if _claude_client is None:
        import anthropic

        _claude_client = anthropic.Anthropic(
            api_key=os.environ.get("BASELINE_ANTHROPIC_API_KEY", ""),
            base_url=os.environ.get("BASELINE_ANTHROPIC_BASE_URL") or None,
            max_retries=0,
            timeout=120.0,
        )
    return _claude_client


def claude_describe(data: bytes, content_type: str, prompt: str | None) -> tuple[str, str]:
    """The old app's Claude call: blocks the request thread until the whole answer is in."""
    import anthropic

    try:
        message = claude_client().messages.create(
            model=os.environ.get("BASELINE_ANTHROPIC_MODEL", "claude-sonnet-5-5"),
            max_tokens=1500,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": content_type,
                                "data": base64.b64encode(data).decode(),
                            },
                        },
                        {"type": "text", "text": prompt or "Describe this satellite image."},
                    ],
                }
            ],
        )
    except anthropic.AnthropicError as exc:
        raise UpstreamError(f"Claude failed: {type(exc).__name__}") from exc
    text = "".join(block.text for block in message.content if block.type == "text")
    return message.model, text


if os.environ.get("BASELINE_ANTHROPIC_BASE_URL"):
    claude_client()  # the old app built its client at import (the SDK takes ~2 s to import)


@app.post("/api/vision/analyze_satellite")
def analyze_satellite() -> Any:
    body: Any = request.get_json(silent=True)
    req = parse_image_request(body)
    analyzer = body.get("analyzer", "local")
    if analyzer not in ("local", "claude"):
        raise InvalidBody("the baseline has the local and the claude analyzers")
    record = download(req)
    if analyzer == "claude":
        data, content_type = record["_content"], record["content_type"]
        model, text = claude_describe(data, content_type, body.get("prompt"))
        return jsonify(
            id=record["id"], bytes=record["bytes"], analyzer="claude", model=model, text=text
        )
    return jsonify(
        id=record["id"],
        bytes=record["bytes"],
        analyzer="local",
        metrics=pixel_metrics(record["_content"]),
    )


@app.post("/api/comparison/download")
def comparison_download() -> tuple[Any, int]:
    body: Any = request.get_json(silent=True)
    try:
        before_time, after_time = body["before"]["time"], body["after"]["time"]
    except (KeyError, TypeError) as exc:
        raise InvalidBody("before.time and after.time are required") from exc
    before = download(parse_image_request(body, before_time))
    after = download(parse_image_request(body, after_time))
    return jsonify(before=public(before), after=public(after)), 201

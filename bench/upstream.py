"""A fast asyncio HTTP/1.1 "slow WMS" upstream on 127.0.0.1 that delays every GetMap by a latency.

Public API
----------
``SlowWMS(latency=1.0, host="127.0.0.1", port=0, max_size=4096)``
    In-process server (asyncio.Protocol, HTTP/1.1 keep-alive, no framework)::

        async with SlowWMS(latency=1.0) as up:
            up.url          # "http://127.0.0.1:PORT/wms"  (the WMS endpoint)
            up.base_url     # "http://127.0.0.1:PORT"
            up.stats()      # {"in_flight": 0, "max_in_flight": 0, "served": 0}
            up.reset()      # zero max_in_flight / served (in_flight is live, kept)
            up.latency = 0.2  # may be changed at any time; applies to later GetMaps

``python -m bench.upstream --port N --latency 1.0 [--loop auto|asyncio|uvloop] [--cache-dir D]``
    The same server as its own process (what the benchmark uses, so that it does not share an
    event loop or a core with the load driver). Prints one ``SlowWMS listening on URL ...`` line.
    ``upstream_command(port, latency)`` builds that command line for ``bench.procs``.

``fetch_stats(base_url)`` / ``reset_stats(base_url)``
    Blocking helpers for the HTTP endpoints below (for a subprocess upstream).

``render_scene(width, height)`` / ``encode_image(width, height, fmt)``
    The deterministic synthetic "satellite" scene (fields, water, soil) as an RGB array, and its
    PNG/JPEG bytes (cached in memory per (size, format); scenes of 1024x1024 pixels or more
    also on disk in ``--cache-dir`` / ``set_disk_cache(dir)``, as the 4096x4096 PNG takes ~27 s).

HTTP endpoints
--------------
``GET /wms?SERVICE=WMS&REQUEST=GetMap&WIDTH=..&HEIGHT=..&FORMAT=image/png|image/jpeg&...``
    Sleeps ``latency`` seconds, then returns the cached image of that size and format. Other
    GetMap parameters (LAYERS, CRS, BBOX, TIME...) are accepted and ignored. Parameter names are
    case-insensitive, as WMS requires. Bad requests get a WMS 1.3.0 ``ServiceExceptionReport``
    with HTTP 200 and ``Content-Type: text/xml``, as MapServer and GeoServer answer.
``GET /wms?SERVICE=WMS&REQUEST=GetCapabilities``
    Minimal valid WMS 1.3.0 capabilities: one layer ``bench`` (EPSG:4326, CRS:84, a TIME
    dimension), formats image/png and image/jpeg. Answered at once (no latency).
``GET /_stats`` -> ``{"in_flight", "max_in_flight", "served"}``; ``POST /_reset`` resets them;
``GET /healthz`` -> ``{"ok": true}``.

Speed: 64x64 PNG GetMaps at latency 0 cost the upstream ~70 us of CPU each (~14,000 req/s on
one core, asyncio or uvloop alike; a raw-socket client got 22,000-29,000 req/s out of it); the
selfcheck's aiohttp driver reaches 2,000-5,500 req/s against it, limited by the driver.

``in_flight`` counts GetMaps between request parsed and response written (the sleep included);
``served`` counts GetMaps answered with an image. Capabilities and the underscore endpoints are
not counted. A client that disconnects mid-sleep cancels its request (not served).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import os
import signal
import sys
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG"}
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
MAX_QUEUED = 64  # pipelined requests per connection before reading pauses
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
LAYER_NAME = "bench"
TIME_EXTENT = "2020-01-01/2025-12-31/P1D"
TIME_DEFAULT = "2024-06-01"


# --------------------------------------------------------------------------- synthetic scene


def _parcel_palette(n: int) -> np.ndarray:
    """A fixed colour per field parcel: crops, forest, soil, stubble."""
    kinds = np.array(
        [
            (74, 128, 52),  # green crop
            (96, 150, 64),  # young crop
            (44, 86, 40),  # forest
            (139, 111, 78),  # brown soil
            (166, 140, 98),  # dry soil
            (182, 170, 102),  # stubble / ripe crop
        ],
        dtype=np.float32,
    )
    weights = np.array([0.28, 0.18, 0.14, 0.18, 0.12, 0.10])
    rng = np.random.default_rng(1955)
    picks = rng.choice(len(kinds), size=n, p=weights)
    jitter = rng.normal(0.0, 7.0, size=(n, 3)).astype(np.float32)
    return np.asarray(kinds[picks] + jitter, dtype=np.float32)


def render_scene(width: int, height: int) -> np.ndarray:
    """Deterministic synthetic satellite scene as a (height, width, 3) uint8 RGB array.

    Geometry is defined in normalized coordinates, so every size shows the same landscape:
    a patchwork of fields, a forest edge, a meandering river, a lake and field tracks.
    """
    nx, ny = 11, 8
    u = (np.arange(width, dtype=np.float32) + 0.5) / width
    v = (np.arange(height, dtype=np.float32) + 0.5) / height
    uu = u[None, :] + 0.025 * np.sin(v[:, None] * 7.0)  # gently warped parcel grid
    vv = v[:, None] + 0.02 * np.sin(u[None, :] * 5.0)
    ix = np.clip((uu * nx).astype(np.int32), 0, nx - 1)
    iy = np.clip((vv * ny).astype(np.int32), 0, ny - 1)
    img = _parcel_palette(nx * ny)[iy * nx + ix]  # (h, w, 3) float32

    track = (np.modf(uu * nx)[0] < 0.012) | (np.modf(vv * ny)[0] < 0.015)
    img[track] = (150, 138, 112)

    river = np.abs(vv - (0.58 + 0.07 * np.sin(uu * 9.0 + 0.6))) < 0.018 + 0.006 * np.sin(uu * 3.0)
    lake = ((uu - 0.22) / 0.11) ** 2 + ((vv - 0.26) / 0.075) ** 2 < 1.0
    img[river | lake] = (38, 78, 122)

    noise = np.random.default_rng(width * 100_003 + height).normal(0.0, 5.0, (height, width, 1))
    return np.asarray(np.clip(img + noise.astype(np.float32), 0, 255), dtype=np.uint8)


# Encoded scenes of at least this many pixels are also kept on disk (``set_disk_cache``): the
# 4096x4096 PNG takes ~27 s to render and encode on one core, and it never changes.
DISK_CACHE_MIN_PIXELS = 1024 * 1024
_disk_cache: Path | None = None


def set_disk_cache(directory: Path | str | None) -> None:
    """Keep big encoded scenes in ``directory`` (None: memory only); ``--cache-dir`` sets it."""
    global _disk_cache
    _disk_cache = Path(directory) if directory is not None else None


@functools.lru_cache(maxsize=64)
def encode_image(width: int, height: int, fmt: str) -> bytes:
    """The scene of that size encoded as ``fmt`` (image/png or image/jpeg); cached."""
    cached: Path | None = None
    if _disk_cache is not None and width * height >= DISK_CACHE_MIN_PIXELS:
        ext = "png" if FORMATS[fmt] == "PNG" else "jpg"
        cached = _disk_cache / f"scene-{width}x{height}.{ext}"
        if cached.is_file():
            return cached.read_bytes()
    buf = io.BytesIO()
    pil = Image.fromarray(render_scene(width, height), mode="RGB")
    if FORMATS[fmt] == "PNG":
        pil.save(buf, "PNG", compress_level=6)
    else:
        pil.save(buf, "JPEG", quality=85)
    data = buf.getvalue()
    if cached is not None:  # written under a temporary name, renamed into place
        cached.parent.mkdir(parents=True, exist_ok=True)
        temp = cached.with_name(f".{cached.name}.{os.getpid()}")
        temp.write_bytes(data)
        temp.replace(cached)
    return data


# --------------------------------------------------------------------------- WMS documents


def _xml_escape(text: str) -> str:
    return escape(text, {'"': "&quot;"})


def service_exception(code: str, message: str) -> bytes:
    """A WMS 1.3.0 ServiceExceptionReport document."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ServiceExceptionReport version="1.3.0" xmlns="http://www.opengis.net/ogc">\n'
        f'  <ServiceException code="{code}">{_xml_escape(message)}</ServiceException>\n'
        "</ServiceExceptionReport>\n"
    ).encode()


def capabilities_xml(url: str, max_size: int) -> bytes:
    """Minimal valid WMS 1.3.0 capabilities with the single layer ``bench``."""
    href = _xml_escape(url + "?")
    dcp = (
        '<DCPType><HTTP><Get><OnlineResource xlink:type="simple" '
        f'xlink:href="{href}"/></Get></HTTP></DCPType>'
    )
    geo = (
        "<EX_GeographicBoundingBox><westBoundLongitude>-180</westBoundLongitude>"
        "<eastBoundLongitude>180</eastBoundLongitude><southBoundLatitude>-90</southBoundLatitude>"
        "<northBoundLatitude>90</northBoundLatitude></EX_GeographicBoundingBox>"
        '<BoundingBox CRS="CRS:84" minx="-180" miny="-90" maxx="180" maxy="90"/>'
        '<BoundingBox CRS="EPSG:4326" minx="-90" miny="-180" maxx="90" maxy="180"/>'
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<WMS_Capabilities version="1.3.0" xmlns="http://www.opengis.net/wms"
 xmlns:xlink="http://www.w3.org/1999/xlink"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
 xsi:schemaLocation="http://www.opengis.net/wms http://schemas.opengis.net/wms/1.3.0/capabilities_1_3_0.xsd">
<Service>
<Name>WMS</Name><Title>satapi bench slow WMS</Title>
<OnlineResource xlink:type="simple" xlink:href="{href}"/>
<MaxWidth>{max_size}</MaxWidth><MaxHeight>{max_size}</MaxHeight>
</Service>
<Capability>
<Request>
<GetCapabilities><Format>text/xml</Format>{dcp}</GetCapabilities>
<GetMap><Format>image/png</Format><Format>image/jpeg</Format>{dcp}</GetMap>
</Request>
<Exception><Format>XML</Format></Exception>
<Layer>
<Title>satapi bench</Title><CRS>EPSG:4326</CRS><CRS>CRS:84</CRS>{geo}
<Layer queryable="0" opaque="1">
<Name>{LAYER_NAME}</Name><Title>Synthetic satellite scene</Title>
<CRS>EPSG:4326</CRS><CRS>CRS:84</CRS>{geo}
<Dimension name="time" units="ISO8601" default="{TIME_DEFAULT}">{TIME_EXTENT}</Dimension>
</Layer>
</Layer>
</Capability>
</WMS_Capabilities>
""".encode()


# --------------------------------------------------------------------------- HTTP plumbing


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    query: str
    keep_alive: bool


@dataclass(slots=True)
class _Response:
    status: int
    content_type: str
    body: bytes


def _json(obj: Any, status: int = 200) -> _Response:
    return _Response(status, "application/json", json.dumps(obj).encode())


def _parse_head(head: bytes) -> tuple[_Request, int] | None:
    """Parse request line + headers; returns (request, body length), None if malformed."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    method, target, version = parts
    keep_alive = version == "HTTP/1.1"
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            if not value.strip().isdigit():
                return None
            length = int(value)
        elif name == "connection":
            token = value.strip().lower()
            keep_alive = token == "keep-alive" or (keep_alive and token != "close")
        elif name == "transfer-encoding":
            return None  # chunked uploads are not supported
    path, _, query = target.partition("?")
    return _Request(method, path, query, keep_alive), length


class _HttpProtocol(asyncio.Protocol):
    """One client connection: parses pipelined requests, answers them in order."""

    def __init__(self, server: SlowWMS) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._pending_body = 0  # bytes of a request body still to discard
        self._queue: deque[_Request] = deque()
        self._broken = False
        self._worker: asyncio.Task[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._server._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._conns.discard(self)
        self._writable.set()
        if self._worker is not None:
            self._worker.cancel()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        self._buf += data
        while self._parse_one():
            pass
        if len(self._queue) >= MAX_QUEUED and self._transport is not None:
            self._transport.pause_reading()  # a client pipelining too far ahead waits
        if self._queue and self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._drain())

    def _parse_one(self) -> bool:
        if self._pending_body:
            skip = min(self._pending_body, len(self._buf))
            del self._buf[:skip]
            self._pending_body -= skip
            if self._pending_body:
                return False
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEADER_BYTES:
                self._fail()
            return False
        parsed = _parse_head(bytes(self._buf[:end]))
        del self._buf[: end + 4]
        if parsed is None or parsed[1] > MAX_BODY_BYTES:
            self._fail()
            return False
        request, self._pending_body = parsed
        self._queue.append(request)
        return True

    def _fail(self) -> None:
        """Answer 400 after the requests already queued, then close; ignore further input."""
        self._buf.clear()
        self._broken = True
        self._queue.append(_Request("", "", "", keep_alive=False))

    def _write(self, response: _Response, *, keep_alive: bool) -> None:
        assert self._transport is not None
        if self._transport.is_closing():
            return
        status = response.status
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        ).encode()
        if len(response.body) <= 16384:
            self._transport.write(head + response.body)
        else:
            self._transport.writelines((head, response.body))

    async def _drain(self) -> None:
        try:
            while self._queue:
                request = self._queue.popleft()
                if len(self._queue) == MAX_QUEUED // 2 and self._transport is not None:
                    self._transport.resume_reading()
                response = await self._server._handle(request)
                self._write(response, keep_alive=request.keep_alive)
                if not request.keep_alive:
                    self.close()
                    return
                await self._writable.wait()
        finally:
            self._worker = None


# --------------------------------------------------------------------------- the server


class SlowWMS:
    """The slow WMS upstream; see the module docstring."""

    def __init__(
        self,
        latency: float = 1.0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_size: int = 4096,
    ) -> None:
        self.latency = latency
        self.host = host
        self.port = port
        self.max_size = max_size
        self.in_flight = 0
        self.max_in_flight = 0
        self.served = 0
        self._server: asyncio.Server | None = None
        self._conns: set[_HttpProtocol] = set()
        self._rendering: dict[tuple[int, int, str], asyncio.Future[bytes]] = {}
        self._images: dict[tuple[int, int, str], bytes] = {}
        self._capabilities = b""

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The WMS endpoint, to be used as a GetMap/GetCapabilities base URL."""
        return f"{self.base_url}/wms"

    def stats(self) -> dict[str, int]:
        return {
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "served": self.served,
        }

    def reset(self) -> None:
        self.max_in_flight = self.in_flight
        self.served = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _HttpProtocol(self), self.host, self.port, backlog=4096, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._capabilities = capabilities_xml(self.url, self.max_size)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._conns):
            conn.close()
        await self._server.wait_closed()
        self._server = None

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> SlowWMS:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- request handling

    async def _handle(self, request: _Request) -> _Response:
        if not request.method:  # the marker queued for a malformed request
            return _Response(400, "text/plain", b"bad request\n")
        if request.path == "/wms" and request.method == "GET":
            return await self._wms(request.query)
        if request.path == "/_stats" and request.method == "GET":
            return _json(self.stats())
        if request.path == "/_reset" and request.method == "POST":
            self.reset()
            return _json(self.stats())
        if request.path == "/healthz" and request.method == "GET":
            return _json({"ok": True})
        if request.path in {"/wms", "/_stats", "/_reset", "/healthz"}:
            return _Response(405, "text/plain", b"method not allowed\n")
        return _Response(404, "text/plain", b"not found\n")

    async def _wms(self, query: str) -> _Response:
        params = {k.upper(): v for k, v in parse_qsl(query, keep_blank_values=True)}
        kind = params.get("REQUEST", "").lower()
        if kind == "getcapabilities":
            return _Response(200, "text/xml", self._capabilities)
        if kind != "getmap":
            return self._exception("OperationNotSupported", f"REQUEST={params.get('REQUEST')!r}")
        key_or_error = self._getmap_key(params)
        if isinstance(key_or_error, _Response):
            return key_or_error
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            body = await self._image(key_or_error)
        finally:
            self.in_flight -= 1
        self.served += 1
        return _Response(200, key_or_error[2], body)

    def _getmap_key(self, params: dict[str, str]) -> tuple[int, int, str] | _Response:
        fmt = params.get("FORMAT", "")
        if fmt not in FORMATS:
            return self._exception("InvalidFormat", f"FORMAT={fmt!r}")
        try:
            width, height = int(params["WIDTH"]), int(params["HEIGHT"])
        except (KeyError, ValueError):
            return self._exception("MissingParameterValue", "WIDTH and HEIGHT must be integers")
        if not (0 < width <= self.max_size and 0 < height <= self.max_size):
            return self._exception("InvalidDimensionValue", f"size {width}x{height}")
        return width, height, "image/jpeg" if FORMATS[fmt] == "JPEG" else "image/png"

    @staticmethod
    def _exception(code: str, message: str) -> _Response:
        return _Response(200, "text/xml", service_exception(code, message))

    async def _image(self, key: tuple[int, int, str]) -> bytes:
        """Image bytes; the first render of a (size, format) runs in a thread, shared by waiters."""
        body = self._images.get(key)
        if body is not None:
            return body
        future = self._rendering.get(key)
        if future is None:
            future = asyncio.ensure_future(asyncio.to_thread(encode_image, *key))
            self._rendering[key] = future
        body = await asyncio.shield(future)
        self._images[key] = body
        self._rendering.pop(key, None)
        return body


# --------------------------------------------------------------------------- helpers + CLI


def upstream_command(
    port: int, latency: float, *, loop: str = "auto", cache_dir: Path | str | None = None
) -> list[str]:
    """Command line that runs the upstream as its own process (cwd: the repository root)."""
    cmd = [
        sys.executable,
        "-m",
        "bench.upstream",
        "--port",
        str(port),
        "--latency",
        str(latency),
        "--loop",
        loop,
    ]
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    return cmd


def fetch_stats(base_url: str, timeout: float = 5.0) -> dict[str, int]:
    """GET {base_url}/_stats of a running upstream."""
    with urllib.request.urlopen(f"{base_url}/_stats", timeout=timeout) as resp:
        return dict(json.load(resp))


def reset_stats(base_url: str, timeout: float = 5.0) -> dict[str, int]:
    """POST {base_url}/_reset of a running upstream."""
    req = urllib.request.Request(f"{base_url}/_reset", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return dict(json.load(resp))


async def _serve(args: argparse.Namespace, loop_name: str) -> None:
    server = SlowWMS(latency=args.latency, host=args.host, port=args.port, max_size=args.max_size)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"SlowWMS listening on {server.url} latency={server.latency}s loop={loop_name}",
        flush=True,
    )
    await stop.wait()
    await server.stop()


def _loop_factory(name: str) -> tuple[Any, str]:
    if name in {"auto", "uvloop"}:
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise
        else:
            return uvloop.new_event_loop, "uvloop"
    return asyncio.new_event_loop, "asyncio"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per GetMap")
    parser.add_argument("--max-size", type=int, default=4096)
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    parser.add_argument(
        "--cache-dir", default=None, help="keep big encoded scenes here (e.g. bench/out/scenes)"
    )
    args = parser.parse_args(argv)
    set_disk_cache(args.cache_dir)
    factory, loop_name = _loop_factory(args.loop)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(args, loop_name))


if __name__ == "__main__":
    main()

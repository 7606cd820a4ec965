"""A large area: 64 tiles fetched, stitched and analysed; time and the server's peak RSS.

    python -m bench.areas [--tile 512] [--grid 8]

Starts the test suite's MapServer (tests/support/mapserver.py) with MAXSIZE `--tile`, so its
capabilities say MaxWidth/MaxHeight `--tile`, and `satapi serve` (one process, default caps:
`max_concurrent_wms` 20, the provider's `max_concurrency` 8) in its own process. Then a
(`--grid` x `--tile`)² image of the scene (64 tiles of 512² by default: 4096 x 4096 = 16.8 MP)
through `POST /api/images`: first as a GeoTIFF on a fresh store (64 GetMaps), then its local
analysis (`POST /api/vision/analyze_satellite`, tile by tile), then as PNG (the stored tiles
stitched on one canvas), then the PNG again (all stored: no GetMap). Prints wall time per step
and the satapi process's peak RSS (`VmHWM`) after each, and writes them as JSON to
bench/out/areas.json. Needs the Debian packages in .ci/apt-packages.txt.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from tests.support.fault_upstream import SatapiProcess  # noqa: E402
from tests.support.mapserver import SCENE_BBOX, STATIC_LAYER, MapServerWMS  # noqa: E402


def _post(url: str, body: dict[str, Any], timeout: float = 600) -> tuple[float, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    return time.perf_counter() - started, answer


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(tile: int, grid: int) -> dict[str, Any]:
    size = tile * grid
    steps: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="satapi-bench-areas-") as tmp,
        MapServerWMS(Path(tmp) / "wms", max_size=tile) as wms,
    ):
        settings = {
            "default_provider": "ms",
            "providers": {"ms": {"url": wms.url, "default_layer": STATIC_LAYER}},
            "max_area_pixels": size * size,
        }
        server = SatapiProcess(Path(tmp), settings).start()
        try:
            assert server.proc is not None
            pid = server.proc.pid
            base = {"bbox": list(SCENE_BBOX), "width": size, "height": size}
            plan = [
                (
                    "warm-up: local analysis of a 64² image (builds the class lookup table)",
                    "/api/vision/analyze_satellite",
                    {"bbox": list(SCENE_BBOX), "width": 64, "height": 64, "analyzer": "local"},
                ),
                (
                    "tiff: 64 GetMaps, GeoTIFF written window by window",
                    "/api/images",
                    {**base, "format": "image/tiff"},
                ),
                (
                    "local analysis of the GeoTIFF, tile by tile",
                    "/api/vision/analyze_satellite",
                    {**base, "format": "image/tiff", "analyzer": "local"},
                ),
                ("png: the stored tiles stitched on one canvas", "/api/images", {**base}),
                ("png again: all stored", "/api/images", {**base}),
            ]
            print(f"rss after start: {_peak_rss_mb(pid):.0f} MB", flush=True)
            for label, path, body in plan:
                seconds, answer = _post(server.url + path, body)
                image = answer["image"]
                step = {
                    "step": label,
                    "seconds": round(seconds, 2),
                    "tiles": image["area"]["tiles"] if "area" in image else 1,
                    "cached": image["cached"],
                    "bytes": image["bytes"],
                    "peak_rss_mb": round(_peak_rss_mb(pid), 1),
                }
                steps.append(step)
                print(json.dumps(step), flush=True)
        finally:
            server.stop()
    return {
        "tile": tile,
        "grid": grid,
        "size": size,
        "machine": report.machine_info(),
        "steps": steps,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=512, help="the server's MAXSIZE")
    parser.add_argument("--grid", type=int, default=8, help="tiles per side")
    args = parser.parse_args()
    result = run(args.tile, args.grid)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "areas.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

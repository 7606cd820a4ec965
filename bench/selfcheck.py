"""Self-check of the benchmark pieces: upstream throughput, then the Flask baseline under load.

``python -m bench.selfcheck [--json bench/out/selfcheck.json]`` (about 25 s, bounded under 60 s):

1. starts ``bench.upstream`` as a subprocess with latency 0, checks its capabilities with
   OWSLib, and drives small GetMaps (64x64 PNG) at C=32 for N=10,000 (10 s cap): the driver's
   req/s must exceed 1,000; the upstream's CPU time per request is printed too (its capacity
   on one core, independent of how fast the driver is);
2. starts a second upstream with latency 1.0 s and the baseline under gunicorn ``-w 2 -k sync``,
   runs C=10, N=20 ``POST /api/images`` (256x256 PNG) and prints the driver's report and the
   upstream's ``max_in_flight`` (the baseline's download concurrency).

Exit status 0 when the upstream check passes and every baseline request succeeded, else 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench.baseline.run import start_baseline
from bench.driver import LoadResult, RequestSpec, run_load_sync
from bench.procs import OUT_DIR, ServerProcess, free_port
from bench.upstream import fetch_stats, reset_stats, upstream_command

MIN_UPSTREAM_RPS = 1000.0
GETMAP = {
    "SERVICE": "WMS",
    "VERSION": "1.3.0",
    "REQUEST": "GetMap",
    "LAYERS": "bench",
    "STYLES": "",
    "CRS": "EPSG:4326",
    "BBOX": "40,-10,50,10",
    "WIDTH": "64",
    "HEIGHT": "64",
    "FORMAT": "image/png",
}
IMAGE_BODY = {
    "layer": "bench",
    "bbox": [-10.0, 40.0, 10.0, 50.0],
    "crs": "EPSG:4326",
    "time": "2024-06-01",
    "width": 256,
    "height": 256,
    "format": "image/png",
}


def start_upstream(latency: float) -> ServerProcess:
    port = free_port()
    name = f"upstream-{port}"
    return ServerProcess(
        name, upstream_command(port, latency), f"http://127.0.0.1:{port}/healthz"
    ).start()


def base_of(proc: ServerProcess) -> str:
    return proc.ready_url.removesuffix("/healthz")


def check_capabilities(wms_url: str) -> str:
    """Parse the capabilities with OWSLib (what satapi uses): layer, CRSs, formats."""
    from owslib.wms import WebMapService

    wms = WebMapService(wms_url, version="1.3.0", timeout=5)
    layer = wms["bench"]
    formats = wms.getOperationByName("GetMap").formatOptions
    assert {"EPSG:4326", "CRS:84"} <= set(layer.crsOptions), layer.crsOptions
    assert {"image/png", "image/jpeg"} <= set(formats), formats
    return f"layers={list(wms.contents)} crs={sorted(layer.crsOptions)} formats={formats}"


def upstream_throughput() -> tuple[LoadResult, bool]:
    with start_upstream(0.0) as up:
        base = base_of(up)
        print("capabilities:", check_capabilities(f"{base}/wms"))
        spec = RequestSpec("GET", "/wms", params=GETMAP)
        run_load_sync(base, lambda _i: spec, concurrency=32, total=500, health_path=None)
        result = run_load_sync(
            base,
            lambda _i: spec,
            concurrency=32,
            total=10_000,
            time_limit=10.0,
            label="upstream latency=0 64x64 png",
            rss_pid=up.pid,
        )
    print(result.summary())
    cpu = result.server_cpu_s or 0.0
    if cpu > 0:
        per_req_us = cpu / max(result.completed, 1) * 1e6
        print(
            f"  upstream CPU {per_req_us:.0f} us/request -> "
            f"~{result.completed / cpu:,.0f} req/s on one core (driver-independent)"
        )
    ok = result.ok_rps > MIN_UPSTREAM_RPS and not result.errors
    print(f"  upstream > {MIN_UPSTREAM_RPS:,.0f} req/s: {'PASS' if ok else 'FAIL'}")
    if not ok and result.client == "httpx2":
        print("  (driver fell back to httpx2, which is too slow here: pip install aiohttp)")
    return result, ok


def baseline_under_load() -> tuple[LoadResult, dict[str, int], bool]:
    with start_upstream(1.0) as up, start_baseline("sync", f"{base_of(up)}/wms") as app:
        reset_stats(base_of(up))
        spec = RequestSpec("POST", "/api/images", json=IMAGE_BODY)
        result = run_load_sync(
            base_of(app),
            lambda _i: spec,
            concurrency=10,
            total=20,
            time_limit=30.0,
            label="baseline gunicorn -w 2 -k sync, upstream latency=1s",
            rss_pid=app.pid,
        )
        stats = fetch_stats(base_of(up))
    print(result.summary())
    print(f"  upstream stats: {stats}")
    ok = result.ok == result.total
    return result, stats, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(OUT_DIR / "selfcheck.json"))
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    up_result, up_ok = upstream_throughput()
    bl_result, bl_stats, bl_ok = baseline_under_load()
    report: dict[str, Any] = {
        "upstream": up_result.to_dict(),
        "baseline_sync": bl_result.to_dict(),
        "baseline_upstream_stats": bl_stats,
        "passed": up_ok and bl_ok,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"selfcheck {'passed' if report['passed'] else 'FAILED'} in {report['elapsed_s']}s")
    print(f"report: {args.json}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

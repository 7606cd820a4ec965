"""CPU per image of the local analyzer's steps (verify, decode, classify, metrics), in-process.

    .venv/bin/python -m bench.analyzercost [--sizes 64,512,2048] [--rounds 5] [--min-time 0.3]
    .venv/bin/python -m bench.analyzercost --json    # the figures as one JSON object

The images are the benchmark upstream's synthetic scene (`bench.upstream.render_scene`, PNG at
compression level 6), the same bytes scenario 2 downloads. Each step is timed with
`time.process_time` (CPU of this process, so other work on a shared machine hardly moves it):
every figure is the best of `--rounds` rounds, each round repeating the step until it has used
`--min-time` CPU-seconds. `verify` is the download path's check (`imaging.verify_image` on a
file), `decode` Pillow to a pixel array, `classify` the per-pixel classes with brightness and
colour counts, `metrics` the fractions, mean brightness and dominant colours; `vision` is what
one local-analyzer request runs in worker threads (verify, then decode + classify + metrics +
summary). Each size is measured twice: the former code path (RGBA decode and the
rule-by-rule scan, still in `pixels._scan_by_rules` as the reference) and today's (RGB decode
and the 2^24-entry class table); the run first checks that both give the same metrics.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.upstream import encode_image
from satapi.analyzers import local, pixels
from satapi.analyzers.base import ImageInput
from satapi.imaging import verify_image

DEFAULT_SIZES = (64, 512, 2048)


def _cpu_ms(fn: Callable[[], object], rounds: int, min_time: float) -> float:
    """Best-of-`rounds` CPU milliseconds per call of `fn`."""
    fn()  # warm-up: imports, lookup tables, allocator
    best = float("inf")
    for _ in range(rounds):
        calls = 0
        started = time.process_time()
        elapsed = 0.0
        while elapsed < min_time or calls == 0:
            fn()
            calls += 1
            elapsed = time.process_time() - started
        best = min(best, elapsed / calls)
    return best * 1000


def _analyse_before(data: bytes, max_px: int) -> tuple[dict[str, Any], str]:
    """The former analyzer: RGBA decode, then the rule-by-rule scan."""
    metrics = pixels._metrics(pixels._scan_by_rules(pixels.decode_rgba(data, max_px)))
    return metrics, pixels.summarize(metrics)


def measure_size(size: int, rounds: int, min_time: float, workdir: Path) -> list[dict[str, Any]]:
    """CPU ms per step for one `size`² PNG: the old code path, then today's."""
    data = encode_image(size, size, "image/png")
    path = workdir / f"scene-{size}.png"
    path.write_bytes(data)
    max_px = 64_000_000
    rgba = pixels.decode_rgba(data, max_px)
    rgb = pixels.decode_pixels(data, max_px)
    old_scan = pixels._scan_by_rules(rgba)
    new_scan = pixels._scan(rgb)
    if pixels._metrics(old_scan) != pixels._metrics(new_scan):
        raise AssertionError(f"the two code paths disagree on the {size}² scene")

    def verify() -> object:
        return verify_image(path, expected_size=(size, size), max_pixels=max_px)

    image = ImageInput(data=data, content_type="image/png")
    variants: dict[str, dict[str, Callable[[], object]]] = {
        "before (RGBA decode, rule-by-rule scan)": {
            "decode": lambda: pixels.decode_rgba(data, max_px),
            "classify": lambda: pixels._scan_by_rules(rgba),
            "metrics": lambda: pixels._metrics(old_scan),
            "analyse": lambda: _analyse_before(data, max_px),
        },
        "after (RGB decode, lookup-table scan)": {
            "decode": lambda: pixels.decode_pixels(data, max_px),
            "classify": lambda: pixels._scan(rgb),
            "metrics": lambda: pixels._metrics(new_scan),
            "analyse": lambda: local._analyse_one(image, max_px),
        },
    }
    verify_ms = round(_cpu_ms(verify, rounds, min_time), 3)
    rows = []
    for variant, steps in variants.items():
        row: dict[str, Any] = {
            "size": size,
            "variant": variant,
            "png_bytes": len(data),
            "verify_ms": verify_ms,
        }
        for name, fn in steps.items():
            row[f"{name}_ms"] = round(_cpu_ms(fn, rounds, min_time), 3)
        row["vision_ms"] = round(verify_ms + row["analyse_ms"], 3)
        rows.append(row)
    return rows


def run(sizes: tuple[int, ...], rounds: int, min_time: float) -> list[dict[str, Any]]:
    """Figures for every size, smallest first."""
    with tempfile.TemporaryDirectory(prefix="satapi-analyzercost-") as tmp:
        pixels.class_table()  # built once per process (~0.3-0.5 s), not part of any request
        return [
            row for size in sorted(sizes) for row in measure_size(size, rounds, min_time, Path(tmp))
        ]


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of `run()`'s rows."""
    lines = [
        "| image | code | verify | decode | classify | metrics | analyse (decode + classify + "
        "metrics + text) | vision request (verify + analyse) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['size']}² ({row['png_bytes']:,} B) | {row['variant']} | "
            f"{row['verify_ms']:.2f} | {row['decode_ms']:.2f} | {row['classify_ms']:.2f} | "
            f"{row['metrics_ms']:.2f} | "
            f"{row['analyse_ms']:.2f} | **{row['vision_ms']:.2f}** |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print CPU ms per step and image size (a Markdown table, or JSON with `--json`)."""
    parser = argparse.ArgumentParser(prog="python -m bench.analyzercost", description=__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
    rows = run(sizes, args.rounds, args.min_time)
    if args.json:
        print(json.dumps({"rows": rows}))
    else:
        print("CPU ms per image (best of rounds, time.process_time)")
        print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

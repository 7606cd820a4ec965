"""CPU by stage from a py-spy profile of the whole satapi process (every thread).

    python -m bench.stages bench/out/profile-<name>.folded [--requests N] [--cpu-s S]

`python -m bench --only 6 --py-spy` writes such a profile (py-spy `record --format raw`, 100
Hz, active samples only: a thread waiting in a syscall is not sampled, so samples are CPU).
Each sample's stack is put in the first stage below whose marker it contains, most specific
first; with `--requests` and `--cpu-s` (the server's CPU seconds over the run, which the bench
logs) the shares become milliseconds of CPU per request.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

# A sample whose innermost frame is one of these is a thread waiting (py-spy does not always
# see a futex or epoll wait as idle): counted apart, not as CPU.
IDLE = (
    "EpollSelector.select (selectors.py",
    "Condition.wait (threading.py",
    "_worker (concurrent/futures/thread.py",
    "Queue.get (queue.py",
)
# Stages that own everything under them, wherever they are on the stack (checked first).
OWNERS: list[tuple[str, tuple[str, ...]]] = [
    ("Claude: image preparation", ("satapi/analyzers/imageprep.py",)),
    ("WMS: image check (PNG inflate, ISA-L)", ("satapi/imaging.py",)),
    ("Claude: SDK stream and SSE parsing", ("anthropic/_streaming", "anthropic/lib/streaming")),
    ("Claude: SDK request building", ("anthropic/",)),
    ("store writes and reads (aiofiles, threads)", ("satapi/stores/", "aiofiles/")),
]
# The rest: the innermost frame that matches one of these names the stage.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("Claude: HTTP (httpx2 over aiohttp)", ("httpx2/", "httpx_aiohttp", "httpcore2/")),
    ("WMS: download (aiohttp transport)", ("satapi/providers/", "aiohttp/", "satapi/wms_client")),
    ("logs and metrics", ("satapi/observability/", "logging/", "prometheus_client/")),
    (
        "SSE events and answers (satapi routers)",
        ("satapi/routers/", "fastapi/sse", "sse_starlette"),
    ),
    ("validation and JSON (pydantic)", ("pydantic/", "pydantic_core", "json/")),
    ("middleware and routing (starlette, fastapi)", ("satapi/web/", "starlette/", "fastapi/")),
    ("HTTP server (uvicorn, httptools)", ("uvicorn/", "httptools")),
    ("event loop (asyncio, selectors)", ("asyncio/", "selectors.py", "uvloop")),
]
OTHER = "other"
WAITING = "waiting (idle threads)"


def stage_of(stack: str) -> str:
    """The stage a sample's `;`-joined stack belongs to."""
    frames = stack.split(";")
    if frames[-1].startswith(IDLE):
        return WAITING
    for name, markers in OWNERS:
        if any(marker in stack for marker in markers):
            return name
    for frame in reversed(frames):
        for name, markers in STAGES:
            if any(marker in frame for marker in markers):
                return name
    return OTHER


def read_folded(path: Path) -> Iterator[tuple[str, int]]:
    """(stack, samples) for each line of a py-spy raw (folded) profile."""
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            yield stack, int(count_text)


def by_stage(path: Path) -> tuple[dict[str, int], int]:
    """Samples per stage in a py-spy raw (folded) profile, and the total."""
    counts: dict[str, int] = {}
    total = 0
    for stack, count in read_folded(path):
        total += count
        stage = stage_of(stack)
        counts[stage] = counts.get(stage, 0) + count
    return counts, total


def table(path: Path, requests: int | None = None, cpu_s: float | None = None) -> str:
    """A Markdown table of the stages: share of samples, and CPU ms per request when known."""
    counts, total = by_stage(path)
    waiting = counts.pop(WAITING, 0)
    total -= waiting
    per_request = requests is not None and cpu_s is not None and requests > 0
    head = "| stage | share of CPU samples |" + (" CPU per request |" if per_request else "")
    rule = "| --- | --- |" + (" --- |" if per_request else "")
    lines = [head, rule]
    for stage, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        share = n / total if total else 0.0
        row = f"| {stage} | {100 * share:.1f} % |"
        if per_request:
            assert requests is not None and cpu_s is not None
            row += f" {1000 * cpu_s * share / requests:.2f} ms |"
        lines.append(row)
    if per_request:
        assert requests is not None and cpu_s is not None
        lines.append(f"| **all** | {total} samples | **{1000 * cpu_s / requests:.2f} ms** |")
    lines.append(f"\n({waiting} samples of threads waiting left out.)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--cpu-s", type=float, default=None, help="server CPU seconds")
    args = parser.parse_args()
    print(table(args.profile, args.requests, args.cpu_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

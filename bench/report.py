"""RESULTS.md and the throughput chart from a run's results (``bench.__main__`` calls ``write``).

``machine_info()`` describes the machine and the package versions; ``write(run, md_path,
chart_path)`` renders the markdown (a table per scenario, both systems and their ratio, the
PASS/FAIL list) and ``plot_throughput(scenario1, chart_path)`` the PNG (matplotlib, Agg).
``bench/findings.md``, hand-written, is copied into RESULTS.md as its last section.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.procs import REPO_ROOT

FINDINGS = REPO_ROOT / "bench" / "findings.md"
SATAPI_DEPS = (
    "fastapi",
    "starlette",
    "uvicorn",
    "httptools",
    "httpx2",
    "httpcore2",
    "pydantic",
    "anyio",
    "aiofiles",
    "pillow",
    "numpy",
)
BASELINE_DEPS = ("flask", "werkzeug", "gunicorn", "requests", "urllib3")
BENCH_DEPS = ("aiohttp", "uvloop", "httpx", "matplotlib")
LABELS = {
    "satapi": "satapi (1 uvicorn process)",
    "satapi-2w": "satapi --workers 2",
    "baseline-sync": "baseline gunicorn sync -w 2",
    "baseline-gthread": "baseline gunicorn gthread -w 2 --threads 8",
}
COLORS = {
    "satapi": "tab:blue",
    "satapi-2w": "tab:cyan",
    "baseline-sync": "tab:red",
    "baseline-gthread": "tab:orange",
}


# --------------------------------------------------------------------------- machine


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def filesystem_of(path: Path) -> str:
    """The filesystem `path` is on, from /proc/mounts: "ext4 on /" (or "unknown")."""
    best: tuple[str, str] = ("", "unknown")
    resolved = str(Path(path).resolve())
    for line in _read("/proc/mounts").splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1]
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[0]):
            best = (mount, fields[2])
    return f"{best[1]} on {best[0]}" if best[0] else "unknown"


def machine_info() -> dict[str, Any]:
    """Cores, CPU, RAM, Python, OS, load average, git commit and package versions."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kb = next(
        (
            int(line.split()[1])
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    os_name = next(
        (
            line.split("=", 1)[1].strip().strip('"')
            for line in _read("/etc/os-release").splitlines()
            if line.startswith("PRETTY_NAME=")
        ),
        platform.system(),
    )
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(mem_kb / 1024**2, 1),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{os_name}, kernel {platform.release()}",
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "commit": _git("rev-parse", "--short", "HEAD") + (" (work tree modified)" if dirty else ""),
        "satapi": {name: _version(name) for name in ("satapi", *SATAPI_DEPS)},
        "baseline": {name: _version(name) for name in BASELINE_DEPS},
        "bench": {name: _version(name) for name in BENCH_DEPS},
    }


# --------------------------------------------------------------------------- formatting


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}x"


def _table(headers: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _note(pt: dict[str, Any]) -> str:
    parts = []
    if pt.get("cpu_limit_rps"):
        share = (pt["rps"] or 0.0) / pt["cpu_limit_rps"]
        parts.append(
            f"{pt['cpu_ms_per_request']:g} ms CPU/request: CPU limit {_num(pt['cpu_limit_rps'])} "
            f"req/s, reached {share:.0%}"
        )
    first, later = pt.get("first_wave_ms"), pt.get("later_ms")
    if first and later and first.get("p50") is not None and later.get("p50") is not None:
        parts.append(
            f"latency p50 / max of the first {first['n']} (sent at once): "
            f"{_num(first['p50'], 0)} / {_num(first['max'], 0)} ms, of the {later['n']} after "
            f"them: {_num(later['p50'], 0)} / {_num(later['max'], 0)} ms"
        )
    if pt.get("hit_time_limit"):
        unfinished = pt["cancelled"] + pt["not_started"]
        parts.append(f"time limit {pt['time_limit_s']:g} s: {unfinished} unfinished")
    if pt.get("errors"):
        parts.append("errors " + ", ".join(f"{k} ×{v}" for k, v in pt["errors"].items()))
    if pt.get("health_errors"):
        parts.append(
            "/healthz errors " + ", ".join(f"{k} ×{v}" for k, v in pt["health_errors"].items())
        )
    if pt.get("health_n", 0) == 0 and pt.get("health_max_ms") is not None:
        parts.append(f"no /healthz answered (waited {pt['health_max_ms'] / 1000:.1f} s)")
    return "; ".join(parts)


def _health(pt: dict[str, Any]) -> str:
    if not pt.get("health_n"):
        return f"none answered in {_num(pt.get('health_max_ms'))}"
    waiting = " + 1 unanswered" if pt.get("health_unanswered_ms") else ""
    return (
        f"{_num(pt['health_p50_ms'])} / {_num(pt['health_p99_ms'])} "
        f"({_num(pt['health_max_ms'])}), n={pt['health_n']}{waiting}"
    )


def _lag(pt: dict[str, Any]) -> str:
    """satapi's event-loop lag during the load (bucket upper bounds), for one process."""
    lag = pt.get("loop_lag")
    if not lag or not lag.get("n"):
        return "–"

    def bound(ms: float | None) -> str:
        return "> 5,000" if ms is None else f"≤ {_num(ms)}"

    return f"{bound(lag['p50_ms'])} / {bound(lag['p99_ms'])} ({bound(lag['max_ms'])}), n={lag['n']}"


def _point_row(pt: dict[str, Any], ratios: str) -> list[str]:
    up = pt.get("upstream") or {}
    return [
        LABELS.get(pt["system"], pt["system"]),
        f"{pt['ok']} / {pt['total']}",
        f"**{_num(pt['rps'])}**",
        ratios,
        f"{_num(pt['latency_p50_ms'], 0)} / {_num(pt['latency_p99_ms'], 0)}",
        _health(pt),
        _lag(pt),
        str(up.get("max_in_flight", "–")),
        _num(pt.get("server_cpu_s"), 2),
        _note(pt),
    ]


POINT_HEADERS = [
    "system",
    "ok / N",
    "req/s",
    "satapi ÷ system",
    "latency p50 / p99 ms",
    "/healthz p50 / p99 (max) ms, probes",
    "event-loop lag p50 / p99 (max) ms",
    "upstream max in flight",
    "server CPU s",
    "notes",
]


def _points_table(points: list[dict[str, Any]], reference: str = "satapi") -> list[str]:
    """Rows grouped by concurrency; the ratio column is reference req/s ÷ that row's."""
    lines: list[str] = []
    by_c: dict[int, list[dict[str, Any]]] = {}
    for pt in points:
        by_c.setdefault(pt["concurrency"], []).append(pt)
    for c, group in by_c.items():
        ref = next((p for p in group if p["system"] == reference), None)
        rows = []
        for pt in group:
            if ref is None or pt is ref or not pt["rps"]:
                ratios = "–" if pt is not ref else "1x"
            else:
                ratios = _x(ref["rps"] / pt["rps"])
            rows.append(_point_row(pt, ratios))
        lines += [f"**C = {c}**", "", *_table(POINT_HEADERS, rows), ""]
    return lines


# --------------------------------------------------------------------------- sections


def _scenario0(sc: dict[str, Any]) -> list[str]:
    p = sc["params"]
    rows = []
    for r in sc["clients"]:
        up = r.get("upstream") or {}
        rows.append(
            [
                r["client"],
                r.get("version", "?"),
                f"{r.get('ok', 0)} / {p['total']}",
                f"**{_num(r.get('rps'))}**",
                f"{r.get('of_ideal', 0):.0%}",
                _num(r.get("wall_s"), 2),
                _num(r.get("cpu_s"), 2),
                f"{1000 * r['cpu_s'] / max(r.get('ok') or 1, 1):.2f}" if r.get("cpu_s") else "–",
                str(up.get("max_in_flight", "–")),
                r.get("error", "")
                or ", ".join(f"{k} ×{v}" for k, v in r.get("errors", {}).items()),
            ]
        )
    ideal = min(p["concurrency"], p["total"]) / p["latency_s"]
    return [
        f"{p['total']} GETs ({p['request']}) at C = {p['concurrency']} against an upstream with "
        f"{p['latency_s']:g} s latency; each client in its own process on the {p['loop']} loop, "
        f"one pooled client with C connections. Ideal: {ideal:g} req/s.",
        "",
        *_table(
            [
                "client",
                "version",
                "ok / N",
                "req/s",
                "of ideal",
                "wall s",
                "client CPU s",
                "CPU ms / request",
                "upstream max in flight",
                "errors",
            ],
            rows,
        ),
        "",
    ]


def _scenario4(sc: dict[str, Any]) -> list[str]:
    p = sc["params"]
    rows = []
    for r in sc["rows"]:
        first, second = r["first"], r["second"]
        calls1 = (first.get("upstream") or {}).get("served", "–")
        calls2 = (second.get("upstream") or {}).get("served", "–")
        hits, health = r.get("hits"), r.get("healthz")
        rows.append(
            [
                LABELS.get(r["system"], r["system"]),
                f"**{calls1}**, {first['ok']} / {first['total']} ok in {first['wall_s']:.2f} s",
                f"{calls2}, {second['ok']} / {second['total']} ok in {second['wall_s']:.2f} s",
                _num(hits["rps"]) if hits else "– (no cache)",
                _num(health["rps"]) if health else "–",
                f"**{r['hit_vs_healthz']:.2f}**" if r.get("hit_vs_healthz") is not None else "–",
                _health(hits) if hits else _health(first),
                "; ".join(
                    f"batch {i}: {n}" for i, n in ((1, _note(first)), (2, _note(second))) if n
                ),
            ]
        )
    return [
        f"{p['concurrency']} identical concurrent `POST /api/images` (one 64x64 image, upstream "
        f"latency {p['latency_s']:g} s), then the same {p['concurrency']} again. For satapi, "
        f"then {p['hit_total']} more cache hits at C = {p['concurrency']} against "
        f"{p['hit_total']} bare `GET /healthz` in the same process (after a short warm-up of "
        "each).",
        "",
        *_table(
            [
                "system",
                "batch 1: upstream calls, ok",
                "batch 2: upstream calls, ok",
                "cache hits req/s",
                "/healthz req/s",
                "hits ÷ /healthz",
                "/healthz p50 / p99 (max) ms, probes",
                "notes",
            ],
            rows,
        ),
        "",
    ]


def _scenario5(sc: dict[str, Any]) -> list[str]:
    p = sc["params"]
    rows = []
    ref = next((pt for pt in sc["points"] if pt["system"] == "satapi"), None)
    for pt in sc["points"]:
        rows.append(
            [
                LABELS.get(pt["system"], pt["system"]),
                f"{pt['ok']} / {pt['total']}",
                _num(pt["wall_s"], 1),
                f"**{_num(pt['peak_rss_mb'])}** ({pt['peak_processes']} proc.)",
                _x(pt["peak_rss_mb"] / ref["peak_rss_mb"])
                if ref and ref["peak_rss_mb"] and pt["peak_rss_mb"]
                else "–",
                _num(pt["rps"], 2),
                _health(pt),
                f"{pt.get('upstream_busy', 0):.2f}",
                _num(pt.get("server_cpu_s"), 1),
                _note(pt),
            ]
        )
    return [
        f"{p['concurrency']} concurrent `POST /api/images` of distinct {p['size']}x{p['size']} "
        f"PNGs ({p.get('image_mb', '?')} MB each; upstream latency {p['latency_s']:g} s, its "
        "scene rendered before the timed run). RSS summed over the server's process tree, "
        "sampled every 50 ms. "
        "`upstream busy` is the upstream's CPU seconds per wall second (≈ 1 would mean it was "
        "the bottleneck).",
        "",
        *_table(
            [
                "system",
                "ok / N",
                "wall s",
                "peak RSS MB",
                "RSS ÷ satapi",
                "req/s",
                "/healthz p50 / p99 (max) ms, probes",
                "upstream busy",
                "server CPU s",
                "notes",
            ],
            rows,
        ),
        "",
    ]


def _scenario6(sc: dict[str, Any]) -> list[str]:
    p = sc["params"]
    request_s = p["wms_latency_s"] + p["ai_latency_s"]
    lines = [
        f"Distinct {p['size']}x{p['size']} PNGs, WMS upstream latency {p['wms_latency_s']:g} s, "
        f"then `analyzer: claude` against a fake Messages API in its own process "
        f"(`bench/fake_ai.py`) that streams {p['ai_chunks']} text deltas over "
        f"{p['ai_latency_s']:g} s (the baseline's non-streamed call gets the whole answer after "
        f"the same time). satapi prepares the image, holds an AI permit "
        f"(`max_concurrent_ai` = {p['ai_cap']}, and {p['capped_cap']} in the last row, "
        f"N = {p['capped_total']}; the default is 16) and streams the call with the async "
        "SDK; the baseline downloads through its pool, then calls the `anthropic` SDK "
        f"synchronously in the request thread. Ideal: min(C, cap) / {request_s:g} s. "
        f"N = 2 × C. Baseline loads stop after {p['baseline_time_limit_s']:g} s. "
        "`AI max in flight` is what the fake API saw.",
        "",
    ]
    by_c: dict[int, list[dict[str, Any]]] = {}
    for pt in sc["points"]:
        by_c.setdefault(pt["concurrency"], []).append(pt)
    headers = [*POINT_HEADERS[:-2], "AI max in flight", "server CPU s", "notes"]
    headers[0] = "system (AI cap)"
    for c, group in by_c.items():
        ref = next((pt for pt in group if pt["system"] == "satapi"), None)
        rows = []
        for pt in group:
            if ref is None or pt is ref or not pt["rps"]:
                ratios = "1x" if pt is ref else "–"
            else:
                ratios = _x(ref["rps"] / pt["rps"])
            row = _point_row(pt, ratios)
            if pt.get("ai_cap"):
                row[0] += f" ({pt['ai_cap']})"
            row.insert(-2, str((pt.get("ai") or {}).get("max_in_flight", "–")))
            rows.append(row)
        lines += [f"**C = {c}**", "", *_table(headers, rows), ""]
    return lines


def _describe(sc: dict[str, Any]) -> list[str]:
    p = sc["params"]
    if sc["id"] == 1:
        n = ", ".join(f"C={c}: {v}" for c, v in p["total_per_c"].items())
        return [
            f"Distinct {p['size']}x{p['size']} PNGs, upstream latency {p['latency_s']:g} s, satapi "
            f"cap {p['cap']}. N per point: {n}. Baseline loads stop after "
            f"{p['baseline_time_limit_s']:g} s and report what finished by then.",
            "",
        ]
    if sc["id"] == 2:
        return [
            f"Distinct {p['size']}x{p['size']} PNGs, upstream latency {p['latency_s']:g} s, "
            "`analyzer: local` (download, verify, decode, pixel statistics, save the result). "
            "N = 2 × C. Baseline loads stop after "
            f"{p['baseline_time_limit_s']:g} s. For satapi the notes give its CPU limit: the "
            "cores ÷ the server's CPU seconds per request (an upper bound: the driver and the "
            "upstream share the cores).",
            "",
        ]
    if sc["id"] == 3:
        return [
            f"Distinct {p['size']}x{p['size']} pairs (before 2024-01-15, after 2024-07-15), "
            f"upstream latency {p['latency_s']:g} s, C = {p['concurrency']}, N = {p['total']}. "
            "satapi downloads both sides at once; the baseline one after the other. Baseline "
            f"loads stop after {p['baseline_time_limit_s']:g} s.",
            "",
        ]
    if sc["id"] == 7:
        return [
            f"Scenario 1's load at C = {p['concurrency']}, N = {p['total']}, upstream latency "
            f"{p['latency_s']:g} s, cap {p['cap']}: `satapi serve --workers 2` sharing one Redis "
            "(fleet-wide limiter and single flight) next to one process (in-process limiter). "
            "CPU per download counts satapi's process tree plus redis-server.",
            "",
        ]
    return []


def _targets(scenarios: list[dict[str, Any]]) -> list[str]:
    lines = []
    for sc in scenarios:
        for t in sc.get("targets", []):
            mark = "PASS" if t["passed"] else "FAIL"
            lines.append(f"- **{mark}** {t['name']}: {t['value']} (goal {t['goal']})")
        if sc.get("error"):
            lines.append(f"- **FAIL** scenario {sc['id']} did not complete: {sc['error']}")
    return lines


def render(run: dict[str, Any], chart_name: str | None) -> str:
    """The whole RESULTS.md text."""
    m = run["machine"]
    lines = [
        "# satapi benchmark results",
        "",
        f"Generated by `python -m bench{' --smoke' if run['profile'] == 'smoke' else ''}` "
        f"on {run['date']} in {run['elapsed_s']:.0f} s (profile `{run['profile']}`). "
        "Every number below comes from that one run: satapi and the old Flask design "
        "(`bench/baseline/`) measured back to back on the same machine, against the same slow "
        "WMS upstream (`bench/upstream.py`, its own process), driven by the same async load "
        "driver (`bench/driver.py`, aiohttp) that samples `GET /healthz` every 50 ms. "
        "All traffic is on 127.0.0.1.",
        "",
        "## Machine",
        "",
        f"- {m['cores']} cores, {m['cpu']}, {m['ram_gb']} GB RAM",
        f"- {m['python']}, {m['os']}",
        f"- load average before the run: {' / '.join(map(str, m['loadavg']))}"
        + (
            f"; after: {' / '.join(map(str, run['loadavg_after']))}"
            if run.get("loadavg_after")
            else ""
        ),
        (
            f"- CPUs busy with other work just before the run: {m['busy_before']:.0%}"
            if m.get("busy_before") is not None
            else "- (the run did not wait for a quiet machine)"
        ),
        f"- commit {m['commit']}",
        *(
            [
                f"- data directories on {m.get('data_fs', 'an unknown filesystem')}: creating a "
                f"small file there cost {m['file_create_us']:g} µs of CPU before the run"
                + (
                    f" and {m['file_create_us_after']:g} µs after it"
                    if m.get("file_create_us_after") is not None
                    else ""
                )
                + " (each scenario's figure is under its heading; a store write creates two "
                "or three files)"
            ]
            if m.get("file_create_us") is not None
            else []
        ),
        "- satapi (uvicorn on the asyncio loop): "
        + ", ".join(f"{k} {v}" for k, v in m["satapi"].items()),
        "- baseline: " + ", ".join(f"{k} {v}" for k, v in m["baseline"].items()),
        "- driver (aiohttp on uvloop) and clients: "
        + ", ".join(f"{k} {v}" for k, v in m["bench"].items()),
        "",
        "The server, the upstream and the load driver share these cores, so CPU-bound numbers "
        "are lower bounds for a dedicated server.",
        "",
        "## Targets",
        "",
        "Goals from the benchmark issue, not CI gates.",
        "",
        *_targets(run["scenarios"]),
        "",
    ]
    for sc in run["scenarios"]:
        lines += [f"## Scenario {sc['id']}: {sc.get('title', '')}", ""]
        cpu = sc.get("cpu")
        if cpu:
            lines += [
                f"_{sc.get('elapsed_s', 0):.0f} s; the benchmark's processes used "
                f"{cpu['own_cpu_s']:g} CPU-seconds, other processes on the machine "
                f"{cpu['other_cpu_s']:g} ({cpu['other_share']:.0%} of its capacity)"
                + (
                    f"; creating a file cost {sc['file_create_us']:g} µs of CPU at its start"
                    if sc.get("file_create_us") is not None
                    else ""
                )
                + "._",
                "",
            ]
        if sc.get("error"):
            lines += ["Did not complete:", "", "```", sc.get("traceback", sc["error"]), "```", ""]
            continue
        if sc["id"] == 0:
            lines += _scenario0(sc)
        elif sc["id"] == 4:
            lines += _scenario4(sc)
        elif sc["id"] == 5:
            lines += _scenario5(sc)
        elif sc["id"] == 6:
            lines += _scenario6(sc)
        else:
            lines += _describe(sc)
            lines += _points_table(sc["points"])
        if sc["id"] == 1 and chart_name:
            lines += [f"![throughput and /healthz p99 vs concurrency]({chart_name})", ""]
    if FINDINGS.exists():
        lines += ["## Profiling and findings", "", FINDINGS.read_text().strip(), ""]
    lines += [
        "## Reproduce",
        "",
        "```sh",
        "python3 dev.py bench            # or: .venv/bin/python -m bench",
        ".venv/bin/python -m bench --smoke   # every scenario, tiny, < 30 s, into bench/out/",
        ".venv/bin/python -m bench --only 2 --py-spy   # py-spy profiles into bench/out/",
        ".venv/bin/python -m bench.hitcost   # in-process CPU of /healthz and a cache hit",
        ".venv/bin/python -m bench.analyzercost   # in-process CPU of the local analyzer's steps",
        ".venv/bin/python -m bench.clientab   # A/B of the WMS transport (--all: + httpx-aiohttp)",
        "```",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- chart


def plot_throughput(sc1: dict[str, Any], path: Path) -> None:
    """Scenario 1: req/s and /healthz p99 vs concurrency, satapi and both baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = sc1["params"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
    systems = [s for s in LABELS if any(pt["system"] == s for pt in sc1["points"])]
    cs = sorted({pt["concurrency"] for pt in sc1["points"]})
    ideal = [min(c, p["cap"]) / p["latency_s"] for c in cs]
    ax1.plot(cs, ideal, ls="--", color="grey", lw=1, label="ideal min(C, cap) / latency")
    ax1.plot(cs, [0.9 * v for v in ideal], ls=":", color="grey", lw=1, label="target 0.9 × ideal")
    for system in systems:
        pts = sorted(
            (pt for pt in sc1["points"] if pt["system"] == system), key=lambda pt: pt["concurrency"]
        )
        xs = [pt["concurrency"] for pt in pts]
        ax1.plot(
            xs, [pt["rps"] for pt in pts], marker="o", color=COLORS[system], label=LABELS[system]
        )
        for pt in pts:
            ax1.annotate(
                _num(pt["rps"]),
                (pt["concurrency"], pt["rps"]),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=8,
                color=COLORS[system],
            )
        answered = [(pt["concurrency"], pt["health_p99_ms"]) for pt in pts if pt["health_n"]]
        if answered:
            ax2.plot(
                *zip(*answered, strict=True), marker="o", color=COLORS[system], label=LABELS[system]
            )
        silent = [(pt["concurrency"], pt["health_max_ms"]) for pt in pts if not pt["health_n"]]
        if silent:
            ax2.scatter(
                *zip(*silent, strict=True),
                marker="x",
                s=60,
                color=COLORS[system],
                label=f"{LABELS[system]}: no probe answered (time waited)",
            )
    ax2.axhline(25, ls="--", color="grey", lw=1, label="target 25 ms (satapi)")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(cs)
        ax.set_xticklabels([str(c) for c in cs])
        ax.set_xlabel("concurrent clients C")
        ax.grid(True, which="major", alpha=0.3)
    ax1.set_yscale("log")
    ax1.set_ylabel("successful requests / s (log)")
    ax1.set_title(f"POST /api/images, upstream latency {p['latency_s']:g} s, cap {p['cap']}")
    ax1.legend(fontsize=7, loc="upper left")
    ax2.set_yscale("log")
    ax2.set_ylabel("ms (log)")
    ax2.set_title("GET /healthz p99 during the load (probe every 50 ms)")
    ax2.text(
        0.99,
        0.01,
        "a probe still unanswered at the end counts with the time it had waited",
        transform=ax2.transAxes,
        ha="right",
        fontsize=7,
        color="dimgrey",
    )
    ax2.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(run: dict[str, Any], md_path: Path, chart_path: Path) -> None:
    """RESULTS.md at ``md_path``, the chart at ``chart_path`` (same directory) if scenario 1 ran."""
    sc1 = next((s for s in run["scenarios"] if s["id"] == 1 and not s.get("error")), None)
    chart_name = None
    if sc1 is not None:
        plot_throughput(sc1, chart_path)
        chart_name = os.path.relpath(chart_path, md_path.parent)
    md_path.write_text(render(run, chart_name))

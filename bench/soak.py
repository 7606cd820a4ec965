"""``python -m bench --soak``: a bounded soak of one real satapi server against the fault upstream.

Runs 20 minutes or 100,000 requests, whichever comes first (``--soak-smoke``: 60 s or 3,000),
mixing cache hits, distinct downloads, SSE streams (some read to the end, some whose client
disconnects after the first event), comparisons and requests that meet every fault mode of
``tests/support/fault_upstream.py`` (errors, resets, timeouts, bad images, redirects).

It samples the server's RSS, open file descriptors, event-loop tasks and WMS permits, then
checks (after warm-up = the first 10 % of the time budget, at least 10 s):

* RSS growth from the end of warm-up to the end of the load ≤ 10 %;
* open file descriptors and asyncio tasks back to their idle level before the load;
* no temporary file left in the data directory;
* no response with a status the live OpenAPI schema does not document for its operation;
* every WMS permit returned (none in use, none waiting) once the load stops;
* a clean exit on SIGTERM with no traceback in the log.

and writes ``RESULTS.md``, ``memory.png`` and ``soak.json`` to ``bench/soak/`` (a full run) or
``<out>/soak/`` (a smoke run, ``bench/out/`` by default).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from bench import report
from bench.procs import REPO_ROOT
from tests.support.fault_upstream import FaultUpstream, SatapiProcess

# Every fault mode that ends (hang/stall/drip end at the read or total timeout).
FAULT_MODES = (
    "500",
    "503",
    "429",
    "reset",
    "xml200",
    "html200",
    "truncated",
    "corrupt",
    "wrongsize",
    "huge",
    "hugechunked",
    "bomb",
    "redirect",
    "stall",
    "hang",
    "drip",
)
# (kind, weight): what one request of the mix is.
MIX = (
    ("hit", 38),
    ("download", 20),
    ("stream_cut", 8),
    ("stream", 4),
    ("compare", 10),
    ("fault", 20),
)
HOT_SET = 24  # distinct images the cache hits (and full streams) are drawn from
SIDE = 64


@dataclass(frozen=True)
class SoakProfile:
    """How long and how hard."""

    name: str
    max_seconds: float
    max_requests: int
    concurrency: int
    sample_every_s: float


FULL = SoakProfile("full", 20 * 60, 100_000, 16, 5.0)
SMOKE = SoakProfile("smoke", 60, 3_000, 8, 1.0)


@dataclass
class Sample:
    """The server's state at one moment."""

    t: float
    rss_mb: float
    fds: int
    tasks: int
    permits_in_use: int
    waiting: int
    requests: int


@dataclass
class Tally:
    """What the load saw."""

    sent: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)  # "kind status"
    undocumented: list[str] = field(default_factory=list)
    transport_errors: Counter[str] = field(default_factory=Counter)
    stream_events: Counter[str] = field(default_factory=Counter)


def _log(text: str) -> None:
    print(text, flush=True)


# -- the server's side ----------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _gauges(text: str) -> dict[str, float]:
    wanted = (
        "satapi_event_loop_tasks",
        "satapi_wms_global_permits_in_use",
        "satapi_wms_global_permits_waiting",
        "satapi_wms_downloads_in_progress",
    )
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[name] = float(value)
    return out


async def _state(client: httpx2.AsyncClient) -> dict[str, float]:
    return _gauges((await client.get("/metrics")).text)


def _documented(schema: dict[str, Any]) -> dict[tuple[str, str], set[int]]:
    out: dict[tuple[str, str], set[int]] = {}
    for path, item in schema["paths"].items():
        for method, op in item.items():
            out[(method.upper(), path)] = {int(s) for s in op.get("responses", {}) if s.isdigit()}
    return out


# -- the load -------------------------------------------------------------------------------


class Load:
    """The request mix, sent by `concurrency` workers until the time or request budget ends."""

    def __init__(
        self, client: httpx2.AsyncClient, documented: dict[tuple[str, str], set[int]]
    ) -> None:
        self.client = client
        self.documented = documented
        self.tally = Tally()
        self._distinct = 0
        self._kinds = [k for k, _ in MIX]
        self._weights = [w for _, w in MIX]
        self._rng = random.Random(16)

    def _bbox(self, n: int) -> list[float]:
        # Distinct, valid lon/lat boxes for every n (3000 x 1600 of them).
        x, y = -150 + (n % 3000) * 0.1, -80 + (n // 3000) * 0.1
        return [round(x, 4), round(y, 4), round(x + 0.05, 4), round(y + 0.05, 4)]

    def _image(self, layer: str, n: int) -> dict[str, Any]:
        return {"layer": layer, "bbox": self._bbox(n), "width": SIDE, "height": SIDE}

    def _fresh(self) -> int:
        self._distinct += 1
        return HOT_SET + self._distinct

    def _check(self, kind: str, method: str, path: str, status: int) -> None:
        self.tally.statuses[f"{kind} {status}"] += 1
        if status not in self.documented.get((method, path), set()):
            if len(self.tally.undocumented) < 50:
                self.tally.undocumented.append(f"{kind}: {method} {path} -> {status}")
            else:
                self.tally.undocumented.append("...")

    async def one(self) -> None:
        kind = self._rng.choices(self._kinds, self._weights)[0]
        self.tally.by_kind[kind] += 1
        try:
            await getattr(self, f"_{kind}")()
        except httpx2.TransportError as exc:
            self.tally.transport_errors[f"{kind} {type(exc).__name__}"] += 1

    async def _post(self, kind: str, path: str, body: dict[str, Any]) -> None:
        r = await self.client.post(path, json=body)
        self._check(kind, "POST", path, r.status_code)

    async def _hit(self) -> None:
        await self._post("hit", "/api/images", self._image("ok", self._rng.randrange(HOT_SET)))

    async def _download(self) -> None:
        await self._post("download", "/api/images", self._image("ok", self._fresh()))

    async def _fault(self) -> None:
        mode = self._rng.choice(FAULT_MODES)
        await self._post("fault", "/api/images", self._image(mode, self._fresh()))

    async def _compare(self) -> None:
        n = self._rng.randrange(HOT_SET * 2) if self._rng.random() < 0.5 else self._fresh()
        body = {
            **self._image("ok", n),
            "before": {"time": "2024-01-15"},
            "after": {"time": "2024-07-15"},
        }
        await self._post("compare", "/api/comparison/download", body)

    async def _stream(self) -> None:
        body = {**self._image("ok", self._rng.randrange(HOT_SET)), "analyzer": "local"}
        await self._sse("stream", body, cut=False)

    async def _stream_cut(self) -> None:
        # A slow download, so the client leaves while it is in flight.
        body = {**self._image("ok:0.3", self._fresh()), "analyzer": "local"}
        await self._sse("stream_cut", body, cut=True)

    async def _sse(self, kind: str, body: dict[str, Any], *, cut: bool) -> None:
        path = "/api/vision/analyze_satellite_stream"
        async with self.client.stream("POST", path, json=body) as r:
            self._check(kind, "POST", path, r.status_code)
            last = ""
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    last = line.split(":", 1)[1].strip()
                    self.tally.stream_events[f"{kind} {last}"] += 1
                    if cut:
                        return  # leaving the block closes the connection mid-stream
            if not cut and last not in ("result", "error"):
                self.tally.stream_events[f"{kind} ended after {last or 'nothing'}"] += 1

    async def run(self, deadline: float, budget: int, concurrency: int) -> None:
        async def worker() -> None:
            while time.monotonic() < deadline and self.tally.sent < budget:
                self.tally.sent += 1
                await self.one()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


# -- the run --------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


async def _settle(
    client: httpx2.AsyncClient, pid: int, fds0: int, tasks0: int, limit_s: float = 20.0
) -> dict[str, float]:
    """Wait (up to `limit_s`) for the server to be idle again; its state then."""
    end = time.monotonic() + limit_s
    while True:
        state = await _state(client)
        idle = (
            state.get("satapi_wms_global_permits_in_use", 0) == 0
            and state.get("satapi_wms_global_permits_waiting", 0) == 0
            and state.get("satapi_wms_downloads_in_progress", 0) == 0
            and _fds(pid) <= fds0
            and state.get("satapi_event_loop_tasks", 0) <= tasks0
        )
        if idle or time.monotonic() > end:
            return {
                **state,
                "fds": _fds(pid),
                "seconds_to_settle": limit_s - (end - time.monotonic()),
            }
        await asyncio.sleep(0.5)


async def _soak(
    profile: SoakProfile, server: SatapiProcess, samples: list[Sample]
) -> dict[str, Any]:
    assert server.proc is not None
    pid = server.proc.pid
    limits = httpx2.Limits(max_connections=profile.concurrency + 4)
    timeout = httpx2.Timeout(60.0)
    async with (
        httpx2.AsyncClient(base_url=server.url, limits=limits, timeout=timeout) as client,
        httpx2.AsyncClient(base_url=server.url, timeout=timeout) as probe,
    ):
        documented = _documented((await probe.get("/openapi.json")).json())
        idle = await _state(probe)
        fds0, tasks0 = _fds(pid), int(idle.get("satapi_event_loop_tasks", 0))
        rss0 = _rss_mb(pid)
        load = Load(client, documented)
        started = time.monotonic()
        deadline = started + profile.max_seconds

        async def sample_loop() -> None:
            while True:
                state = await _state(probe)
                samples.append(
                    Sample(
                        t=round(time.monotonic() - started, 2),
                        rss_mb=round(_rss_mb(pid), 1),
                        fds=_fds(pid),
                        tasks=int(state.get("satapi_event_loop_tasks", 0)),
                        permits_in_use=int(state.get("satapi_wms_global_permits_in_use", 0)),
                        waiting=int(state.get("satapi_wms_global_permits_waiting", 0)),
                        requests=load.tally.sent,
                    )
                )
                await asyncio.sleep(profile.sample_every_s)

        sampler = asyncio.create_task(sample_loop())
        try:
            await load.run(deadline, profile.max_requests, profile.concurrency)
        finally:
            sampler.cancel()
        elapsed = time.monotonic() - started
        # The load client's connections go before the idle state is measured.
        await client.aclose()
        settled = await _settle(probe, pid, fds0, tasks0)
    return {
        "elapsed_s": round(elapsed, 1),
        "rss_idle_mb": round(rss0, 1),
        "fds_idle": fds0,
        "tasks_idle": tasks0,
        "settled": settled,
        "tally": load.tally,
    }


def _checks(run: dict[str, Any], samples: list[Sample], warmup_s: float) -> list[dict[str, Any]]:
    after = [s for s in samples if s.t >= warmup_s]
    start_rss = _median([s.rss_mb for s in after[:3]])
    end_rss = _median([s.rss_mb for s in after[-3:]])
    growth = (end_rss - start_rss) / start_rss if start_rss else 0.0
    settled = run["settled"]
    tally: Tally = run["tally"]
    checks = [
        ("RSS growth after warm-up", f"{growth:+.1%} ({start_rss:.0f} -> {end_rss:.0f} MB)",
         "<= +10 %", len(after) >= 6 and growth <= 0.10),
        ("open fds after the load", f"{settled['fds']} (idle before: {run['fds_idle']})",
         "<= idle", settled["fds"] <= run["fds_idle"]),
        ("event-loop tasks after the load",
         f"{int(settled.get('satapi_event_loop_tasks', -1))} (idle before: {run['tasks_idle']})",
         "<= idle", settled.get("satapi_event_loop_tasks", 1e9) <= run["tasks_idle"]),
        ("temp files left", str(run["temp_files"]), "0", run["temp_files"] == 0),
        ("undocumented statuses", str(len(tally.undocumented)), "0", not tally.undocumented),
        ("WMS permits in use / waiting after the load",
         f"{int(settled.get('satapi_wms_global_permits_in_use', -1))} / "
         f"{int(settled.get('satapi_wms_global_permits_waiting', -1))}", "0 / 0",
         settled.get("satapi_wms_global_permits_in_use") == 0
         and settled.get("satapi_wms_global_permits_waiting") == 0),
        ("exit on SIGTERM", str(run["exit_code"]), "0, no traceback",
         run["exit_code"] == 0 and not run["tracebacks"]),
    ]  # fmt: skip
    return [{"name": n, "value": v, "goal": g, "passed": bool(p)} for n, v, g, p in checks]


def _chart(samples: list[Sample], warmup_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    t = [s.t / 60 for s in samples]
    top.plot(t, [s.rss_mb for s in samples], color="tab:blue", label="RSS (MB)")
    after = [s.rss_mb for s in samples if s.t >= warmup_s][:3]
    if after:
        limit = _median(after) * 1.10
        top.axhline(limit, color="tab:red", linestyle=":", label="end of warm-up + 10 %")
    top.axvline(warmup_s / 60, color="grey", linestyle="--", label="end of warm-up")
    top.set_ylabel("RSS (MB)")
    top.set_ylim(bottom=0)
    top.legend(loc="lower right")
    top.set_title("satapi soak: memory over time")
    bottom.plot(t, [s.fds for s in samples], label="open fds")
    bottom.plot(t, [s.tasks for s in samples], label="event-loop tasks")
    bottom.plot(t, [s.permits_in_use for s in samples], label="WMS permits in use")
    bottom.set_xlabel("minutes")
    bottom.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(result: dict[str, Any], profile: SoakProfile, command: str) -> str:
    tally = result["tally"]
    lines = [
        "# Soak results",
        "",
        f"`{command}` — profile **{profile.name}** ({profile.max_seconds:g} s or "
        f"{profile.max_requests} requests, {profile.concurrency} concurrent clients), "
        f"{result['date']}, commit {result['machine'].get('commit', '?')}, "
        f"{result['machine'].get('cores', '?')} cores, load average "
        f"{result['machine'].get('loadavg', '?')} before.",
        "",
        f"{tally['sent']} requests in {result['elapsed_s']} s "
        f"({tally['sent'] / max(result['elapsed_s'], 1e-9):.0f}/s); warm-up "
        f"{result['warmup_s']:g} s. Generated by `bench/soak.py`; the full run's command is "
        "`python -m bench --soak` (20 min or 100,000 requests).",
        "",
        "| check | value | goal | |",
        "|---|---|---|---|",
    ]
    if profile.name != "full" or profile.max_seconds < FULL.max_seconds:
        lines[6:6] = [
            "**A short run**: it shows the harness and the checks work; memory stability over "
            "20 minutes is shown only by the full run.",
            "",
        ]
    for c in result["checks"]:
        lines.append(
            f"| {c['name']} | {c['value']} | {c['goal']} | {'PASS' if c['passed'] else 'FAIL'} |"
        )
    lines += ["", "![memory over time](memory.png)", "", "## The mix", ""]
    lines += ["| kind | requests |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(tally["by_kind"].items())]
    lines += ["", "| kind and status | responses |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(tally["statuses"].items())]
    if tally["stream_events"]:
        lines += ["", "| stream and event | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(tally["stream_events"].items())]
    if tally["transport_errors"]:
        lines += ["", "Transport errors seen by the load client:", ""]
        lines += [f"- {k}: {v}" for k, v in sorted(tally["transport_errors"].items())]
    if tally["undocumented"]:
        lines += ["", "Undocumented statuses (first 50):", ""]
        lines += [f"- {u}" for u in tally["undocumented"]]
    lines += [
        "",
        "Faults injected (uniformly among the `fault` requests): "
        + ", ".join(f"`{m}`" for m in FAULT_MODES)
        + ". Streams marked `stream_cut` disconnect after their first event.",
        "",
    ]
    return "\n".join(lines)


def run(*, smoke: bool, out_dir: Path, seconds: float | None = None) -> int:
    """Run the soak; returns 0 when every check passed."""
    profile = SMOKE if smoke else FULL
    if seconds is not None:
        profile = SoakProfile(
            profile.name, seconds, profile.max_requests, profile.concurrency,
            profile.sample_every_s,
        )  # fmt: skip
    target = out_dir / "soak" if smoke or seconds is not None else REPO_ROOT / "bench" / "soak"
    target.mkdir(parents=True, exist_ok=True)
    warmup_s = max(10.0, profile.max_seconds * 0.10)
    machine = report.machine_info()
    _log(f"soak: profile {profile.name}, up to {profile.max_seconds:g} s / {profile.max_requests}")
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="satapi-soak-") as tmp:
        upstream = FaultUpstream(huge_bytes=256 * 1024, drip_interval_s=0.25).start()
        settings: dict[str, object] = {
            "default_provider": "fault",
            "providers": {
                "fault": {"url": upstream.wms_url, "default_layer": "ok", "max_concurrency": 16}
            },
            "max_concurrent_wms": 16,
            "max_waiting": 500,
            "wms_read_timeout_s": 1.0,
            "wms_total_timeout_s": 3.0,
            "retry_attempts": 2,
            "retry_wait_initial_s": 0.05,
            "retry_wait_max_s": 1.0,
            "max_image_bytes": 128 * 1024,
            "store_max_bytes": 8 * 1024 * 1024,  # small: eviction runs throughout
            "log_level": "warning",
        }
        server = SatapiProcess(Path(tmp), settings, graceful_timeout=10.0)
        try:
            server.start()
            result = asyncio.run(_soak(profile, server, samples))
            result["temp_files"] = len(server.temp_files())
            server.terminate()
            result["exit_code"] = server.wait(30)
            log = server.log()
            result["tracebacks"] = log.count("Traceback")
        finally:
            server.stop()
            upstream.stop()
    tally: Tally = result.pop("tally")
    result["tally"] = {
        "sent": tally.sent,
        "by_kind": dict(tally.by_kind),
        "statuses": dict(tally.statuses),
        "undocumented": tally.undocumented,
        "transport_errors": dict(tally.transport_errors),
        "stream_events": dict(tally.stream_events),
    }
    result["checks"] = _checks({**result, "tally": tally}, samples, warmup_s)
    result.update(
        profile=asdict(profile),
        warmup_s=warmup_s,
        date=time.strftime("%Y-%m-%d %H:%M %Z"),
        machine=machine,
        samples=[asdict(s) for s in samples],
    )
    command = "python -m bench --soak" + (" --smoke" if smoke else "")
    if seconds is not None:
        command += f" --soak-seconds {seconds:g}"
    (target / "soak.json").write_text(json.dumps(result, indent=1, default=str))
    _chart(samples, warmup_s, target / "memory.png")
    (target / "RESULTS.md").write_text(_markdown(result, profile, command))
    for c in result["checks"]:
        _log(f"  {'PASS' if c['passed'] else 'FAIL'} {c['name']}: {c['value']} (goal {c['goal']})")
    _log(f"soak: {result['tally']['sent']} requests in {result['elapsed_s']} s; {target}")
    return 0 if all(c["passed"] for c in result["checks"]) else 1

"""The benchmark issue's scenarios: satapi against the Flask baseline, in one run.

Each ``scenarioN(env)`` returns a JSON-ready dict ``{"id", "title", "params", "points" (or
"clients" / "rows"), "targets": [...]}``; ``bench.report`` turns the run into RESULTS.md and the
chart. Systems (``SYSTEMS``):

``satapi``            one ``satapi serve`` process (uvicorn, uvloop, httptools)
``satapi-2w``         ``satapi serve --workers 2`` (= cores, the CPUs the baseline gets)
``satapi-2w-redis``   ``satapi serve --workers 2`` sharing one Redis (scenario 7)
``baseline-sync``     Flask under ``gunicorn -k sync -w 2``
``baseline-gthread``  Flask under ``gunicorn -k gthread -w 2 --threads 8``

Every server, and the slow WMS upstream, is its own process on 127.0.0.1; the load driver
(``bench.driver``, aiohttp on uvloop) runs in this process and samples ``/healthz`` every 50 ms
and the server's process-tree RSS. satapi's default provider is the upstream (TOML file in
``SATAPI_CONFIG``, data in a temporary directory). In the full profile every point gets a fresh
server with an empty data directory (cold, and no left-over work from a time-limited point);
the smoke profile shares one server per system across scenarios to stay under 30 s. Every
request of a throughput point asks for a distinct image (its own bbox), so no cache helps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.baseline.run import start_baseline
from bench.driver import LoadResult, RequestSpec, percentiles, run_load_sync, tree_cpu_seconds
from bench.fake_ai import command as fake_ai_command
from bench.fake_ai import fetch_stats as fetch_ai_stats
from bench.fake_ai import reset_stats as reset_ai_stats
from bench.procs import OUT_DIR, REPO_ROOT, ServerProcess, free_port
from bench.report import filesystem_of
from bench.stages import read_folded
from bench.upstream import fetch_stats, reset_stats, upstream_command

SYSTEMS = ("satapi", "satapi-2w", "satapi-2w-redis", "baseline-sync", "baseline-gthread")
BASELINES = ("baseline-sync", "baseline-gthread")
SCENE_CACHE = OUT_DIR / "scenes"
HEALTH_P99_GOAL_MS = 25.0
CLIENTS = ("httpx", "httpx2", "aiohttp")
Log = Callable[[str], None]


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Profile:
    """Every size, latency and time limit of a run."""

    name: str
    fresh_servers: bool  # a new server (and empty data dir) for every point
    cap: int = 200  # satapi max_concurrent_wms and the provider's max_concurrency
    baseline_time_limit: float = 8.0  # seconds per baseline load
    baseline_workers: int | None = None  # gunicorn -w for the baseline; None: one per core
    # 0: client micro-benchmark
    s0_latency: float = 1.0
    s0_concurrency: int = 200
    s0_total: int = 400
    s0_time_limit: float = 45.0
    # 1: POST /api/images, tiny distinct images
    s1_latency: float = 1.0
    s1_concurrency: tuple[int, ...] = (10, 50, 200, 1000)
    s1_size: int = 64
    s1_n_per_c: int = 3  # N = clamp(n_per_c * C, n_min, n_max)
    s1_n_min: int = 30
    s1_n_max: int = 2000
    # 2: POST /api/vision/analyze_satellite, local analyzer
    s2_latency: float = 0.5
    s2_concurrency: tuple[int, ...] = (50, 200)
    s2_size: int = 512
    s2_n_per_c: int = 2
    # 3: POST /api/comparison/download
    s3_latency: float = 1.0
    s3_concurrency: int = 50
    s3_total: int = 150
    s3_size: int = 64
    # 4: single flight and cache hits
    s4_latency: float = 1.0
    s4_concurrency: int = 100
    s4_hit_total: int = 4000
    s4_hit_time_limit: float = 15.0
    # 5: memory, 100 concurrent big downloads
    s5_latency: float = 1.0
    s5_size: int = 4096
    s5_concurrency: int = 100
    s5_time_limit: float = 150.0
    s5_baseline_time_limit: float = 25.0
    rss_goal_mb: float = 250.0
    # 6: download + Claude (fake Messages API in its own process)
    s6_wms_latency: float = 0.5
    s6_ai_latency: float = 3.0  # first to last streamed text delta
    s6_ai_chunks: int = 10
    s6_concurrency: tuple[int, ...] = (50, 200)
    s6_size: int = 512
    s6_n_per_c: int = 2
    s6_capped_cap: int = 16  # the default max_concurrent_ai, shown at the highest C
    s6_capped_total: int = 64
    s6_baseline_time_limit: float = 15.0

    def s1_total(self, concurrency: int) -> int:
        return min(max(self.s1_n_per_c * concurrency, self.s1_n_min), self.s1_n_max)

    def satapi_limit(self, total: int, concurrency: int, latency: float) -> float:
        """A generous time limit for a satapi load: twice the ideal time, plus 10 s."""
        waves = -(-total // max(1, min(concurrency, self.cap)))
        return 2.0 * waves * latency + 10.0


FULL = Profile(name="full", fresh_servers=True)
SMOKE = Profile(
    name="smoke",
    fresh_servers=False,
    baseline_time_limit=2.0,
    baseline_workers=1,  # the smoke checks that the baseline runs, not how fast
    s0_latency=0.05,
    s0_concurrency=10,
    s0_total=20,
    s0_time_limit=10.0,
    s1_latency=0.05,
    s1_concurrency=(4, 16),
    s1_n_per_c=2,
    s1_n_min=8,
    s1_n_max=32,
    s2_latency=0.05,
    s2_concurrency=(4,),
    s2_size=128,
    s3_latency=0.05,
    s3_concurrency=4,
    s3_total=8,
    s4_latency=0.05,
    s4_concurrency=10,
    s4_hit_total=100,
    s4_hit_time_limit=5.0,
    s5_latency=0.05,
    s5_size=512,
    s5_concurrency=4,
    s5_time_limit=20.0,
    s5_baseline_time_limit=5.0,
    s6_wms_latency=0.05,
    s6_ai_latency=0.2,
    s6_ai_chunks=3,
    s6_concurrency=(4,),
    s6_size=64,
    s6_capped_cap=2,
    s6_capped_total=8,
    s6_baseline_time_limit=3.0,
)


# --------------------------------------------------------------------------- servers


def base_of(proc: ServerProcess) -> str:
    return proc.ready_url.removesuffix("/healthz")


@dataclass(frozen=True)
class AiSetup:
    """Scenario 6: the servers call Claude at ``base_url`` (``bench.fake_ai``), at most ``cap``
    calls at once (satapi's ``max_concurrent_ai``; the baseline has no such cap)."""

    base_url: str
    cap: int

    def toml(self) -> str:
        return (
            f'anthropic_api_key = "{FAKE_AI_KEY}"\n'
            f'anthropic_base_url = "{self.base_url}"\n'
            "anthropic_max_retries = 0\n"
            f"max_concurrent_ai = {self.cap}\n"
            "max_ai_waiting = 100000\n"
        )

    def baseline_env(self) -> dict[str, str]:
        return {
            "BASELINE_ANTHROPIC_BASE_URL": self.base_url,
            "BASELINE_ANTHROPIC_API_KEY": FAKE_AI_KEY,
        }


FAKE_AI_KEY = "sk-ant-bench-fake-key"


def satapi_toml(upstream_url: str, data_dir: Path, cap: int, ai: AiSetup | None = None) -> str:
    """satapi settings: the upstream as the only (default) provider, limits at ``cap``."""
    return f"""# written by bench.scenarios
{ai.toml() if ai else ""}data_dir = "{data_dir}"
default_provider = "bench"
max_concurrent_wms = {cap}
max_waiting = 100000
cache_ttl_s = 3600
store_max_bytes = {16 * 1024**3}

[providers.bench]
url = "{upstream_url}"
version = "1.3.0"
default_layer = "bench"
title = "bench slow WMS"
max_concurrency = {cap}

[providers.gibs]
enabled = false

[providers.eox]
enabled = false
"""


# Room for the biggest server's data: scenario 5 stores 100 4096² PNGs (~2.4 GB) per system.
TMPFS_FREE_MIN = 6 * 1024**3


def data_root(requested: Path | None = None) -> Path | None:
    """Where a run's data directories go: `requested`, else /dev/shm when it is a tmpfs with
    room for a full run, else None (the temp directory).

    A tmpfs keeps the filesystem out of the figures. This VM's root filesystem is ext4 without
    a journal: there, creating a file scans past every inode deleted in the last one to six
    minutes, so what the run itself, an earlier run or a test suite had just deleted set what
    a store write cost: 49 to 964 µs of CPU per file between the scenarios of three pairs of
    runs (a scenario 6 request creates three). ext4 does that scan only without a journal;
    a tmpfs charged 18-31 µs.
    """
    if requested is not None:
        requested.mkdir(parents=True, exist_ok=True)
        return requested
    shm = Path("/dev/shm")
    if filesystem_of(shm).startswith("tmpfs ") and shutil.disk_usage(shm).free >= TMPFS_FREE_MIN:
        return shm
    return None


class Fleet:
    """Starts and stops the upstreams and servers of a run; owns its temporary directory."""

    def __init__(self, profile: Profile, log: Log, data_dir: Path | None = None) -> None:
        self.profile = profile
        self.log = log
        self.root = Path(tempfile.mkdtemp(prefix="satapi-bench-", dir=data_root(data_dir)))
        self.data_fs = filesystem_of(self.root)  # e.g. "tmpfs on /dev/shm", for the report
        # On a tmpfs a server's data goes when it stops (it is memory); elsewhere at the end.
        self._wipe_at_stop = self.data_fs.startswith("tmpfs ")
        self._upstreams: dict[float, ServerProcess] = {}
        self._fake_ais: dict[float, ServerProcess] = {}
        self._shared: dict[tuple[str, str, AiSetup | None], ServerProcess] = {}
        self._data: dict[int, Path] = {}
        self._dirty: set[int] = set()
        self.redis_url: str | None = None  # scenario 7: where `*-redis` systems coordinate

    def upstream(self, latency: float) -> ServerProcess:
        """The upstream with this latency (one per latency, alive for the whole run)."""
        if latency not in self._upstreams:
            port = free_port()
            cmd = upstream_command(port, latency, cache_dir=SCENE_CACHE)
            proc = ServerProcess(f"upstream-{port}", cmd, f"http://127.0.0.1:{port}/healthz")
            self._upstreams[latency] = proc.start()
        return self._upstreams[latency]

    def fake_ai(self, latency: float, chunks: int) -> ServerProcess:
        """The fake Messages API answering in ``latency`` s (one per latency, alive all run)."""
        if latency not in self._fake_ais:
            port = free_port()
            cmd = fake_ai_command(port, latency, chunks)
            proc = ServerProcess(f"fake-ai-{port}", cmd, f"http://127.0.0.1:{port}/healthz")
            self._fake_ais[latency] = proc.start()
        return self._fake_ais[latency]

    def _start(
        self, system: str, upstream: ServerProcess, ai: AiSetup | None = None
    ) -> ServerProcess:
        wms_url = f"{base_of(upstream)}/wms"
        port = free_port()
        data = self.root / f"{system}-{port}"
        data.mkdir(parents=True)
        if system.startswith("baseline-"):
            kind = system.removeprefix("baseline-")
            workers = self.profile.baseline_workers or os.cpu_count() or 2
            extra = ai.baseline_env() if ai else None
            proc = start_baseline(
                kind, wms_url, port=port, data_dir=data, workers=workers, extra_env=extra
            )
        else:
            workers = 2 if system.startswith("satapi-2w") else 1
            config = data / "satapi.toml"
            toml = satapi_toml(wms_url, data / "data", self.profile.cap, ai)
            if system.endswith("-redis"):
                assert self.redis_url is not None, "start Redis first (bench.scaleout)"
                toml = f'redis_url = "{self.redis_url}"\n' + toml
            config.write_text(toml)
            cmd = [sys.executable, "-m", "satapi", "serve", "--host", "127.0.0.1"]
            cmd += ["--port", str(port), "--workers", str(workers), "--graceful-timeout", "2"]
            cmd += os.environ.get("BENCH_SATAPI_ARGS", "").split()  # e.g. "--loop uvloop"
            proc = ServerProcess(
                f"{system}-{port}",
                cmd,
                f"http://127.0.0.1:{port}/healthz",
                env={"SATAPI_CONFIG": str(config)},
                ready_timeout=90.0,
            ).start()
        self._data[proc.pid] = data
        return proc

    def _stop(self, proc: ServerProcess) -> None:
        # The next server gets a new, empty data directory. Off a tmpfs the old ones are removed
        # at the end of the run (`close`), not now: on ext4 without a journal (this VM's root
        # filesystem), creating a file scans past every inode deleted in the last minutes, so
        # wiping a server's thousands of files here made the next scenarios' file creations cost
        # up to 20x more CPU (`file_create_us`, see `data_root`).
        proc.stop(grace=5.0)
        self._dirty.discard(proc.pid)
        data = self._data.pop(proc.pid, None)
        if data is not None and self._wipe_at_stop:
            shutil.rmtree(data, ignore_errors=True)

    def file_create_us(self, files: int = 200) -> float:
        """CPU microseconds (user + system, this thread) to create and write one small file in
        the run's directory: what the filesystem charges every store write at the moment. The
        probe's files stay until `close` (deleting them could raise the cost it measures)."""
        probe = Path(tempfile.mkdtemp(prefix="probe-", dir=self.root))
        started = time.thread_time()
        for i in range(files):
            (probe / f"{i}.bin").write_bytes(b"x" * 512)
        return round((time.thread_time() - started) / files * 1e6, 1)

    def prestart(
        self, systems: tuple[str, ...], upstream: ServerProcess, ai: AiSetup | None = None
    ) -> None:
        """Shared mode: start these servers now, in parallel (the smoke run's start-up time)."""
        if self.profile.fresh_servers:
            return
        missing = [s for s in systems if (s, upstream.ready_url, ai) not in self._shared]
        if not missing:
            return
        with ThreadPoolExecutor(max_workers=len(missing)) as pool:
            started = list(pool.map(lambda s: self._start(s, upstream, ai), missing))
        for system, proc in zip(missing, started, strict=True):
            self._shared[(system, upstream.ready_url, ai)] = proc

    @contextlib.contextmanager
    def server(
        self, system: str, upstream: ServerProcess, ai: AiSetup | None = None
    ) -> Iterator[ServerProcess]:
        """A running server of ``system`` whose WMS is ``upstream``.

        Full profile: a new one with an empty data directory, stopped afterwards. Smoke profile: a
        shared one, replaced after the block only if it raised or a load hit its time limit.
        """
        if self.profile.fresh_servers:
            proc = self._start(system, upstream, ai)
            try:
                yield proc
            finally:
                self._stop(proc)
            return
        key = (system, upstream.ready_url, ai)
        if key not in self._shared:
            self._shared[key] = self._start(system, upstream, ai)
        proc = self._shared[key]
        try:
            yield proc
        except BaseException:
            self.discard(system, upstream, ai)
            raise
        if proc.pid in self._dirty:
            self.discard(system, upstream, ai)

    def mark_dirty(self, proc: ServerProcess) -> None:
        """Shared mode: replace this server before its next use (a load hit its time limit)."""
        self._dirty.add(proc.pid)

    def discard(self, system: str, upstream: ServerProcess, ai: AiSetup | None = None) -> None:
        """Shared mode: stop a server (it may still be busy with abandoned requests)."""
        proc = self._shared.pop((system, upstream.ready_url, ai), None)
        if proc is not None:
            self._stop(proc)

    def alive(self) -> list[ServerProcess]:
        """The upstreams and shared servers running now (for CPU accounting)."""
        return [*self._upstreams.values(), *self._fake_ais.values(), *self._shared.values()]

    def close(self) -> None:
        procs = [*self._shared.values(), *self._upstreams.values(), *self._fake_ais.values()]
        for proc in procs:
            with contextlib.suppress(Exception):
                self._stop(proc)
        self._shared.clear()
        self._upstreams.clear()
        self._fake_ais.clear()
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- run context


@dataclass
class Env:
    """What every scenario needs: the profile, the fleet, a log, unique bboxes, profiling."""

    profile: Profile
    fleet: Fleet
    log: Log
    out_dir: Path
    py_spy: bool = False
    systems: tuple[str, ...] = SYSTEMS  # ``--systems``: run only these
    loads: list[dict[str, Any]] = field(default_factory=list)
    _bbox_counter: int = 0

    def want(self, systems: tuple[str, ...]) -> tuple[str, ...]:
        """``systems`` minus those the command line left out."""
        return tuple(s for s in systems if s in self.systems)

    def bbox(self) -> list[float]:
        """A bbox no other request of this run has used (so every image is distinct)."""
        k = self._bbox_counter
        self._bbox_counter += 1
        lon = -179.0 + (k % 3500) * 0.1
        lat = -85.0 + (k // 3500) * 0.1
        return [round(lon, 4), round(lat, 4), round(lon + 0.05, 4), round(lat + 0.05, 4)]

    def image_body(self, size: int, **extra: Any) -> dict[str, Any]:
        """The JSON body both systems accept for one distinct ``size`` x ``size`` PNG."""
        return {
            "layer": "bench",
            "bbox": self.bbox(),
            "crs": "EPSG:4326",
            "time": "2024-06-01",
            "width": size,
            "height": size,
            "format": "image/png",
            **extra,
        }


@contextlib.contextmanager
def py_spy(env: Env, proc: ServerProcess, name: str | None) -> Iterator[None]:
    """With ``--py-spy``: sample the server during the block (py-spy, 100 Hz, non-blocking).

    Writes collapsed stacks to ``<out>/profile-<name>.folded`` (feed them to flamegraph.pl or
    speedscope) and logs the hottest functions (``summarize_folded``).
    """
    exe = Path(sys.executable).with_name("py-spy")
    if not env.py_spy or name is None or not exe.exists():
        yield
        return
    folded = env.out_dir / f"profile-{name}.folded"
    cmd = [str(exe), "record", "--pid", str(proc.pid), "--subprocesses", "--rate", "100"]
    cmd += ["--nonblocking", "--format", "raw", "--output", str(folded)]
    spy = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    time.sleep(0.5)  # let it attach
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(5)
        if folded.exists():
            env.log(f"    py-spy: {folded}")
            env.log(_indent(summarize_folded(folded)))


def summarize_folded(path: Path, top: int = 15) -> str:
    """The functions with the most samples in a py-spy raw profile: on the stack, and on top."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for stack, count in read_folded(path):
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return "no samples"
    lines = [f"{total} samples; self time:"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {frame}")
    lines.append("on the stack (inclusive):")
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[: top * 2]:
        lines.append(f"  {100 * n / total:5.1f}%  {frame}")
    return "\n".join(lines)


def load(
    env: Env,
    proc: ServerProcess,
    system: str,
    requests: list[RequestSpec],
    *,
    concurrency: int,
    time_limit: float,
    label: str,
    upstream: ServerProcess | None = None,
    rss_interval: float = 0.2,
    spy_name: str | None = None,
    ai: ServerProcess | None = None,
) -> dict[str, Any]:
    """Send ``requests`` (each once) at ``concurrency``; the point's compact record.

    For one satapi process the record also has ``loop_lag``, the load's share of its
    ``satapi_event_loop_lag_seconds`` histogram; with ``ai`` (the fake Messages API), ``ai``,
    its counters for the load (``max_in_flight``: Claude calls answered at once).
    """
    if upstream is not None:
        reset_stats(base_of(upstream))
    if ai is not None:
        reset_ai_stats(base_of(ai))
    lag_before = lag_buckets(base_of(proc)) if system == "satapi" else None
    up_cpu0 = tree_cpu_seconds(upstream.pid) if upstream is not None else 0.0
    with py_spy(env, proc, spy_name):
        result = run_load_sync(
            base_of(proc),
            lambda i: requests[i],
            concurrency=concurrency,
            total=len(requests),
            time_limit=time_limit,
            label=f"{label} {system}",
            rss_pid=proc.pid,
            rss_interval=rss_interval,
        )
    point = compact(result, system)
    point["loop_lag"] = None
    if lag_before is not None:
        point["loop_lag"] = lag_summary(lag_before, lag_buckets(base_of(proc)))
    point["ai"] = fetch_ai_stats(base_of(ai)) if ai is not None else None
    point["upstream"] = None
    point["upstream_cpu_s"] = None
    if upstream is not None:
        point["upstream"] = fetch_stats(base_of(upstream))
        point["upstream_cpu_s"] = round(tree_cpu_seconds(upstream.pid) - up_cpu0, 3)
    env.log(_indent(result.summary()))
    if point["upstream"] is not None:
        env.log(f"    upstream: {point['upstream']} cpu={point['upstream_cpu_s']}s")
    env.loads.append(result.to_dict())
    if result.hit_time_limit:
        env.fleet.mark_dirty(proc)  # it may still be busy with abandoned requests
    return point


_LAG_BUCKET = re.compile(r'^satapi_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M)


def lag_buckets(base: str) -> dict[float, float] | None:
    """The cumulative buckets of satapi's event-loop lag histogram now (None if unavailable)."""
    try:
        with _opener().open(f"{base}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    found = {float(le): float(n) for le, n in _LAG_BUCKET.findall(text)}
    return found or None


def lag_summary(
    before: dict[float, float] | None, after: dict[float, float] | None
) -> dict[str, Any] | None:
    """The samples taken between two scrapes: how many, and the bucket bounds of p50, p99, max.

    Upper bounds (a sample in the bucket ``le=0.05`` was at most 50 ms late); ``inf`` means
    beyond the largest bucket.
    """
    if before is None or after is None:
        return None
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]  # cumulative
    n = counts[-1] if counts else 0
    if n <= 0:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}

    def bound(q: float) -> float | None:
        for b, c in zip(bounds, counts, strict=True):
            if c >= q * n:
                return None if b == float("inf") else round(b * 1000, 1)
        return None

    top = next(b for b, c in zip(bounds, counts, strict=True) if c >= n)
    return {
        "n": int(n),
        "p50_ms": bound(0.5),
        "p99_ms": bound(0.99),
        "max_ms": None if top == float("inf") else round(top * 1000, 1),
    }


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def compact(result: LoadResult, system: str) -> dict[str, Any]:
    """The numbers of a load that the report uses.

    The /healthz percentiles include a probe still unanswered when the load ended, at the time it
    had waited (a lower bound): a server that answers one probe and then blocks for the rest of
    the run must not look healthy because only its one answer was counted.
    """
    health = result.health
    probes = [ms for _, ms in result.health_records]
    if health is not None and health.unanswered_at_end_ms is not None:
        probes.append(health.unanswered_at_end_ms)
    probe_stats = percentiles(probes)
    # The first C requests reach a new server at the same instant (a cold burst: every one of
    # them is parsed, started, finished and answered on one event loop at about the same time);
    # the later ones arrive as earlier answers leave, spread out. Their latencies apart show
    # how much of a load's time is that first burst.
    by_start = [ms for _, ms, _ in sorted(result.records)]
    first, later = by_start[: result.concurrency], by_start[result.concurrency :]
    return {
        "system": system,
        "concurrency": result.concurrency,
        "total": result.total,
        "ok": result.ok,
        "completed": result.completed,
        "wall_s": result.wall_s,
        "rps": result.ok_rps,
        "latency_p50_ms": result.latency.p50,
        "latency_p99_ms": result.latency.p99,
        "errors": result.errors,
        "cancelled": result.cancelled,
        "not_started": result.not_started,
        "hit_time_limit": result.hit_time_limit,
        "time_limit_s": result.time_limit_s,
        "health_n": health.latency.n if health else 0,  # answered probes
        "health_unanswered_ms": health.unanswered_at_end_ms if health else None,
        "health_p50_ms": probe_stats.p50,
        "health_p99_ms": probe_stats.p99,
        "health_p99_answered_ms": health.latency.p99 if health else None,
        "health_max_ms": health.max_ms if health else None,
        "health_errors": health.errors if health else {},
        "peak_rss_mb": result.peak_rss_mb,
        "peak_processes": result.peak_processes,
        "server_cpu_s": result.server_cpu_s,
        "first_wave_ms": _p50_max(first) if first and later else None,
        "later_ms": _p50_max(later) if first and later else None,
    }


def _p50_max(values_ms: list[float]) -> dict[str, float | None]:
    stats = percentiles(values_ms)
    return {"n": len(values_ms), "p50": stats.p50, "max": stats.max}


def cpu_limit(point: dict[str, Any]) -> None:
    """Add the server's CPU per successful request and the req/s all cores would allow at it.

    An upper bound for one machine: the load driver and the upstream share these cores.
    """
    cpu_s, ok = point.get("server_cpu_s"), point.get("ok") or 0
    if not cpu_s or not ok:
        point["cpu_ms_per_request"] = point["cpu_limit_rps"] = None
        return
    per_request = cpu_s / ok
    point["cpu_ms_per_request"] = round(per_request * 1000, 1)
    point["cpu_limit_rps"] = round((os.cpu_count() or 1) / per_request, 1)


def target(name: str, value: Any, goal: str, passed: bool, note: str = "") -> dict[str, Any]:
    return {"name": name, "value": value, "goal": goal, "passed": bool(passed), "note": note}


def health_target(scenario: str, point: dict[str, Any]) -> dict[str, Any]:
    """/healthz p99 ≤ 25 ms during a satapi load (no answered probe counts as a failure)."""
    p99 = point["health_p99_ms"]
    ok = p99 is not None and p99 <= HEALTH_P99_GOAL_MS and not point["health_errors"]
    return target(
        f"{scenario} {point['system']} C={point['concurrency']}: /healthz p99",
        f"{p99} ms (max {point['health_max_ms']}, {point['health_n']} probes)",
        f"≤ {HEALTH_P99_GOAL_MS:g} ms",
        ok,
    )


def _post(path: str, bodies: list[dict[str, Any]]) -> list[RequestSpec]:
    return [RequestSpec("POST", path, json=b) for b in bodies]


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post_json(base: str, path: str, body: dict[str, Any], timeout: float = 60.0) -> Any:
    """One blocking POST (no proxy); the decoded JSON answer."""
    req = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with _opener().open(req, timeout=timeout) as resp:
        return json.load(resp)


def getmap_url(up: ServerProcess, size: int) -> str:
    return (
        f"{base_of(up)}/wms?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS=bench&STYLES="
        f"&CRS=EPSG:4326&BBOX=40,-10,50,10&WIDTH={size}&HEIGHT={size}&FORMAT=image/png"
    )


def warm_scene(up: ServerProcess, size: int, timeout: float = 180.0) -> tuple[float, int]:
    """GET one image of ``size`` so the upstream renders it before a timed load: (s, bytes)."""
    t = time.perf_counter()
    with _opener().open(getmap_url(up, size), timeout=timeout) as resp:
        n = len(resp.read())
    return time.perf_counter() - t, n


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 2)


# --------------------------------------------------------------------------- scenario 0


def scenario0(env: Env) -> dict[str, Any]:
    """Why httpx2: httpx 0.28, httpx2 and aiohttp, C concurrent GETs of a slow upstream."""
    p = env.profile
    up = env.fleet.upstream(p.s0_latency)
    url = getmap_url(up, 64)
    warm_scene(up, 64)
    rows = []
    for client in CLIENTS:
        reset_stats(base_of(up))
        cmd = [sys.executable, "-m", "bench.clientbench", client, url]
        cmd += ["--concurrency", str(p.s0_concurrency), "--total", str(p.s0_total)]
        cmd += ["--time-limit", str(p.s0_time_limit)]
        env.log(f"  S0 {client} C={p.s0_concurrency} N={p.s0_total}")
        try:
            done = subprocess.run(
                cmd,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=p.s0_time_limit + 30,
                check=False,
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as exc:
            row = {"client": client, "ok": 0, "rps": 0.0, "error": repr(exc)}
        row["upstream"] = fetch_stats(base_of(up))
        ideal = min(p.s0_concurrency, p.s0_total) / p.s0_latency
        row["of_ideal"] = round(row.get("rps", 0.0) / ideal, 3)
        env.log(f"    {json.dumps(row)}")
        rows.append(row)
    rps = {r["client"]: r.get("rps") or 0.0 for r in rows}
    return {
        "id": 0,
        "title": "HTTP client micro-benchmark (why httpx2)",
        "params": {
            "latency_s": p.s0_latency,
            "concurrency": p.s0_concurrency,
            "total": p.s0_total,
            "request": "GET of a 64x64 PNG GetMap",
            "loop": "asyncio",
        },
        "clients": rows,
        "targets": [
            target(
                "0 httpx2 vs httpx 0.28 throughput (informational)",
                f"{ratio(rps['httpx2'], rps['httpx'])}x",
                "> 1x",
                rps["httpx2"] > rps["httpx"],
            )
        ],
    }


# --------------------------------------------------------------------------- scenario 1


def scenario1(env: Env) -> dict[str, Any]:
    """POST /api/images, tiny distinct images, upstream latency 1 s, C = 10..1000."""
    p = env.profile
    up = env.fleet.upstream(p.s1_latency)
    systems = env.want(("satapi", *BASELINES))
    env.fleet.prestart(systems, up)
    points: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    for c in p.s1_concurrency:
        n = p.s1_total(c)
        ideal = min(c, p.cap) / p.s1_latency
        for system in systems:
            bodies = _post("/api/images", [env.image_body(p.s1_size) for _ in range(n)])
            satapi = system == "satapi"
            limit = p.satapi_limit(n, c, p.s1_latency) if satapi else p.baseline_time_limit
            env.log(f"  S1 {system} C={c} N={n} (limit {limit:g}s)")
            with env.fleet.server(system, up) as proc:
                point = load(
                    env,
                    proc,
                    system,
                    bodies,
                    concurrency=c,
                    time_limit=limit,
                    label=f"S1 C={c}",
                    upstream=up,
                    spy_name=f"s1-c{c}" if satapi else None,
                )
            point["ideal_rps"] = ideal if satapi else None
            points.append(point)
            if not satapi:
                continue
            max_in_flight = (point["upstream"] or {}).get("max_in_flight")
            if c <= p.cap:
                targets.append(
                    target(
                        f"1 satapi C={c}: throughput",
                        f"{point['rps']} req/s ({point['rps'] / ideal:.0%} of {ideal:g})",
                        f"≥ {0.9 * ideal:g} req/s (0.9 × min(C, cap) / latency)",
                        point["rps"] >= 0.9 * ideal and point["ok"] == n,
                    )
                )
            targets.append(
                target(
                    f"1 satapi C={c}: upstream requests in flight",
                    f"max {max_in_flight}",
                    f"≤ cap {p.cap}",
                    max_in_flight is not None and max_in_flight <= p.cap,
                )
            )
            targets.append(health_target("1", point))
    by = {(pt["system"], pt["concurrency"]): pt for pt in points}
    for (system, c), pt in by.items():
        if system == "satapi":
            for base in BASELINES:
                pt[f"x_{base}"] = ratio(pt["rps"], by.get((base, c), {}).get("rps"))
    return {
        "id": 1,
        "title": "POST /api/images, distinct tiny images",
        "params": {
            "latency_s": p.s1_latency,
            "size": p.s1_size,
            "concurrency": list(p.s1_concurrency),
            "total_per_c": {str(c): p.s1_total(c) for c in p.s1_concurrency},
            "cap": p.cap,
            "baseline_time_limit_s": p.baseline_time_limit,
        },
        "points": points,
        "targets": targets,
    }


# --------------------------------------------------------------------------- scenario 2


def scenario2(env: Env) -> dict[str, Any]:
    """POST /api/vision/analyze_satellite with the local analyzer, 512x512 PNG, latency 0.5 s."""
    p = env.profile
    up = env.fleet.upstream(p.s2_latency)
    systems = env.want(("satapi", "satapi-2w", *BASELINES))
    env.fleet.prestart(systems, up)
    warm_scene(up, p.s2_size)  # the upstream renders each size once; not while timed
    points: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    for c in p.s2_concurrency:
        n = max(p.s2_n_per_c * c, 8)
        by: dict[str, dict[str, Any]] = {}
        for system in systems:
            bodies = _post(
                "/api/vision/analyze_satellite",
                [env.image_body(p.s2_size, analyzer="local") for _ in range(n)],
            )
            satapi = system.startswith("satapi")
            limit = p.satapi_limit(n, c, p.s2_latency) + 20.0 if satapi else p.baseline_time_limit
            env.log(f"  S2 {system} C={c} N={n} (limit {limit:g}s)")
            with env.fleet.server(system, up) as proc:
                point = load(
                    env,
                    proc,
                    system,
                    bodies,
                    concurrency=c,
                    time_limit=limit,
                    label=f"S2 C={c}",
                    upstream=up,
                    spy_name=f"s2-c{c}-{system}" if satapi else None,
                )
            by[system] = point
            points.append(point)
            if satapi:
                targets.append(health_target("2", point))
                cpu_limit(point)
                if c == max(p.s2_concurrency) and point["cpu_limit_rps"]:
                    share = (point["rps"] or 0.0) / point["cpu_limit_rps"]
                    targets.append(
                        target(
                            f"2 {system} C={c}: throughput vs its own CPU limit",
                            f"{share:.2f} ({point['rps']} of {point['cpu_limit_rps']} req/s = "
                            f"{os.cpu_count()} cores ÷ {point['cpu_ms_per_request']} ms of "
                            "server CPU per request)",
                            "≥ 0.8",
                            share >= 0.8,
                        )
                    )
        for system in env.want(("satapi", "satapi-2w")):
            sat = by[system]["rps"]
            for base, factor in (("baseline-gthread", 8.0), ("baseline-sync", 30.0)):
                if base not in by:
                    continue
                x = ratio(sat, by[base]["rps"])
                by[system][f"x_{base}"] = x
                if c == max(p.s2_concurrency):
                    targets.append(
                        target(
                            f"2 {system} C={c}: vs {base}",
                            f"{x}x ({sat} vs {by[base]['rps']} req/s)",
                            f"≥ {factor:g}x",
                            x is not None and x >= factor,
                        )
                    )
    return {
        "id": 2,
        "title": "POST /api/vision/analyze_satellite (local analyzer)",
        "params": {
            "latency_s": p.s2_latency,
            "size": p.s2_size,
            "concurrency": list(p.s2_concurrency),
            "baseline_time_limit_s": p.baseline_time_limit,
        },
        "points": points,
        "targets": targets,
    }


# --------------------------------------------------------------------------- scenario 3


def scenario3(env: Env) -> dict[str, Any]:
    """POST /api/comparison/download (before/after pair), C = 50."""
    p = env.profile
    up = env.fleet.upstream(p.s3_latency)
    systems = env.want(("satapi", *BASELINES))
    env.fleet.prestart(systems, up)
    c, n = p.s3_concurrency, p.s3_total
    ideal = min(c, p.cap // 2) / p.s3_latency
    points: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    for system in systems:
        bodies = []
        for _ in range(n):
            body = env.image_body(p.s3_size)
            body.pop("time")
            body["before"] = {"time": "2024-01-15"}
            body["after"] = {"time": "2024-07-15"}
            bodies.append(body)
        satapi = system == "satapi"
        limit = p.satapi_limit(2 * n, 2 * c, p.s3_latency) if satapi else p.baseline_time_limit
        env.log(f"  S3 {system} C={c} N={n} (limit {limit:g}s)")
        with env.fleet.server(system, up) as proc:
            point = load(
                env,
                proc,
                system,
                _post("/api/comparison/download", bodies),
                concurrency=c,
                time_limit=limit,
                label=f"S3 C={c}",
                upstream=up,
                spy_name="s3" if satapi else None,
            )
        point["ideal_rps"] = ideal if satapi else None
        points.append(point)
        if satapi:
            targets.append(
                target(
                    f"3 satapi C={c}: throughput (informational)",
                    f"{point['rps']} pairs/s ({point['rps'] / ideal:.0%} of {ideal:g})",
                    f"≥ {0.9 * ideal:g} pairs/s (both sides download at once)",
                    point["rps"] >= 0.9 * ideal and point["ok"] == n,
                )
            )
            targets.append(health_target("3", point))
    for pt in points[1:]:
        if points[0]["system"] == "satapi":
            points[0][f"x_{pt['system']}"] = ratio(points[0]["rps"], pt["rps"])
    return {
        "id": 3,
        "title": "POST /api/comparison/download (before/after pair)",
        "params": {
            "latency_s": p.s3_latency,
            "size": p.s3_size,
            "concurrency": c,
            "total": n,
            "baseline_time_limit_s": p.baseline_time_limit,
        },
        "points": points,
        "targets": targets,
    }


# --------------------------------------------------------------------------- scenario 4


def scenario4(env: Env) -> dict[str, Any]:
    """Single flight (100 identical concurrent requests), then cache-hit throughput."""
    p = env.profile
    up = env.fleet.upstream(p.s4_latency)
    systems = env.want(("satapi", *BASELINES))
    env.fleet.prestart(systems, up)
    c = p.s4_concurrency
    rows: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    for system in systems:
        body = env.image_body(p.s1_size)
        same = _post("/api/images", [body] * c)
        satapi = system == "satapi"
        limit = p.satapi_limit(c, c, p.s4_latency) if satapi else p.baseline_time_limit
        row: dict[str, Any] = {"system": system, "concurrency": c}
        env.log(f"  S4 {system}: {c} identical requests, twice (limit {limit:g}s each)")
        kw: dict[str, Any] = {"concurrency": c, "time_limit": limit, "upstream": up}
        with env.fleet.server(system, up) as proc:
            row["first"] = load(env, proc, system, same, label="S4 first", **kw)
            if satapi:
                row["second"] = load(env, proc, system, same, label="S4 again", **kw)
                answer = post_json(base_of(proc), "/api/images", body)
                row["cached_after"] = bool(answer.get("image", {}).get("cached"))
                row.update(hits_vs_healthz(env, proc, body))
        if not satapi:  # no cache: the repeat is the same work, on a server with no leftovers
            with env.fleet.server(system, up) as proc:
                row["second"] = load(env, proc, system, same, label="S4 again", **kw)
        rows.append(row)
        if not satapi:
            continue
        calls1 = (row["first"]["upstream"] or {}).get("served")
        calls2 = (row["second"]["upstream"] or {}).get("served")
        targets.append(
            target(
                f"4 satapi: upstream calls for {c} identical concurrent requests",
                f"{calls1} (then {calls2} for the repeat)",
                "exactly 1 (then 0)",
                calls1 == 1 and calls2 == 0 and row["first"]["ok"] == c,
            )
        )
        targets.append(
            target(
                "4 satapi: cache-hit throughput vs bare /healthz",
                f"{row['hit_vs_healthz']} ({row['hits']['rps']} vs {row['healthz']['rps']} req/s)",
                "≥ 0.5",
                (row["hit_vs_healthz"] or 0) >= 0.5 and row["hits"]["ok"] > 0,
            )
        )
        for key in ("first", "second", "hits"):
            targets.append(health_target(f"4 ({key})", row[key]))
    return {
        "id": 4,
        "title": "Single flight and cache hits",
        "params": {
            "latency_s": p.s4_latency,
            "concurrency": c,
            "hit_total": p.s4_hit_total,
            "baseline_time_limit_s": p.baseline_time_limit,
        },
        "rows": rows,
        "targets": targets,
    }


def hits_vs_healthz(env: Env, proc: ServerProcess, body: dict[str, Any]) -> dict[str, Any]:
    """Cache-hit throughput of one stored image vs the bare /healthz route, same C and server."""
    p = env.profile
    c = p.s4_concurrency
    hits = _post("/api/images", [body] * p.s4_hit_total)
    health = [RequestSpec("GET", "/healthz")] * p.s4_hit_total
    for specs in (hits, health):  # a short warm-up of both routes
        run_load_sync(
            base_of(proc),
            lambda i, s=specs: s[i],  # type: ignore[misc]
            concurrency=c,
            total=min(200, len(specs)),
            time_limit=10.0,
            health_path=None,
        )
    kw: dict[str, Any] = {"concurrency": c, "time_limit": p.s4_hit_time_limit}
    out: dict[str, Any] = {}
    out["hits"] = load(env, proc, "satapi", hits, label="S4 cache hits", spy_name="s4-hits", **kw)
    out["healthz"] = load(env, proc, "satapi", health, label="S4 bare /healthz", **kw)
    out["hit_vs_healthz"] = ratio(out["hits"]["rps"], out["healthz"]["rps"])
    return out


# --------------------------------------------------------------------------- scenario 5


def scenario5(env: Env) -> dict[str, Any]:
    """Memory: 100 concurrent distinct 4096x4096 PNG downloads; peak RSS of the server tree."""
    p = env.profile
    up = env.fleet.upstream(p.s5_latency)
    systems = env.want(("satapi", *BASELINES))
    env.fleet.prestart(systems, up)
    warm_s, image_bytes = warm_scene(up, p.s5_size)
    env.log(
        f"  S5 upstream scene {p.s5_size}x{p.s5_size} ready: {image_bytes / 1e6:.1f} MB PNG "
        f"({warm_s:.1f}s incl. latency)"
    )
    c = p.s5_concurrency
    points: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    for system in systems:
        bodies = _post("/api/images", [env.image_body(p.s5_size) for _ in range(c)])
        satapi = system == "satapi"
        limit = p.s5_time_limit if satapi else p.s5_baseline_time_limit
        env.log(f"  S5 {system} C={c} N={c} (limit {limit:g}s)")
        with env.fleet.server(system, up) as proc:
            point = load(
                env,
                proc,
                system,
                bodies,
                concurrency=c,
                time_limit=limit,
                label=f"S5 {p.s5_size}px",
                upstream=up,
                rss_interval=0.05,
                spy_name="s5" if satapi else None,
            )
        # Upstream CPU seconds per wall second: near 1.0 would mean it was the bottleneck.
        point["upstream_busy"] = round((point["upstream_cpu_s"] or 0.0) / (point["wall_s"] or 1), 2)
        points.append(point)
        if satapi:
            targets.append(
                target(
                    f"5 satapi: peak RSS, {c} concurrent {p.s5_size}² PNG downloads",
                    f"{point['peak_rss_mb']} MB ({point['ok']}/{c} ok)",
                    f"≤ {p.rss_goal_mb:g} MB",
                    point["peak_rss_mb"] is not None
                    and point["peak_rss_mb"] <= p.rss_goal_mb
                    and point["ok"] == c,
                )
            )
            targets.append(health_target("5", point))
    return {
        "id": 5,
        "title": f"Memory: {c} concurrent {p.s5_size}x{p.s5_size} PNG downloads",
        "params": {
            "latency_s": p.s5_latency,
            "size": p.s5_size,
            "concurrency": c,
            "baseline_time_limit_s": p.s5_baseline_time_limit,
            "upstream_scene_ready_s": round(warm_s, 2),
            "image_mb": round(image_bytes / 1e6, 1),
        },
        "points": points,
        "targets": targets,
    }


# --------------------------------------------------------------------------- scenario 6


def scenario6(env: Env) -> dict[str, Any]:
    """Download + Claude: POST /api/vision/analyze_satellite against a fake Messages API."""
    p = env.profile
    up = env.fleet.upstream(p.s6_wms_latency)
    fake = env.fleet.fake_ai(p.s6_ai_latency, p.s6_ai_chunks)
    ai = AiSetup(base_of(fake), p.cap)
    capped = AiSetup(base_of(fake), p.s6_capped_cap)
    systems = env.want(("satapi", *BASELINES))
    env.fleet.prestart(systems, up, ai)
    warm_scene(up, p.s6_size)
    request_s = p.s6_wms_latency + p.s6_ai_latency  # one request's ideal duration
    points: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []

    def run(system: str, setup: AiSetup, c: int, n: int, label: str) -> dict[str, Any]:
        bodies = _post(
            "/api/vision/analyze_satellite",
            [env.image_body(p.s6_size, analyzer="claude") for _ in range(n)],
        )
        satapi = system.startswith("satapi")
        waves = -(-n // max(1, min(c, setup.cap)))
        limit = 2.0 * waves * request_s + 20.0 if satapi else p.s6_baseline_time_limit
        env.log(f"  S6 {system} C={c} N={n} AI cap {setup.cap} (limit {limit:g}s)")
        with env.fleet.server(system, up, setup) as proc:
            point = load(
                env,
                proc,
                system,
                bodies,
                concurrency=c,
                time_limit=limit,
                label=label,
                upstream=up,
                ai=fake,
                spy_name=f"s6-c{c}-{system}-ai{setup.cap}" if satapi else None,
            )
        point["ai_cap"] = setup.cap if satapi else None
        if point["ai"] is not None:
            env.log(f"    fake AI: {point['ai']}")
        points.append(point)
        return point

    for c in p.s6_concurrency:
        n = max(p.s6_n_per_c * c, 8)
        by = {system: run(system, ai, c, n, f"S6 C={c}") for system in systems}
        if "satapi" not in by:
            continue
        sat = by["satapi"]
        goal = 0.9 * min(c, ai.cap) / request_s
        targets.append(
            target(
                f"6 satapi C={c}: throughput",
                f"{sat['rps']} req/s ({_share(sat['rps'], goal / 0.9)} of "
                f"{min(c, ai.cap) / request_s:.3g})",
                f"≥ {goal:.3g} req/s (0.9 × min(C, max_concurrent_ai {ai.cap}) / "
                f"({p.s6_wms_latency:g} + {p.s6_ai_latency:g} s))",
                sat["rps"] is not None and sat["rps"] >= goal and sat["ok"] == sat["total"],
            )
        )
        targets.append(health_target("6", sat))
        if c == max(p.s6_concurrency) and "baseline-gthread" in by:
            x = ratio(sat["rps"], by["baseline-gthread"]["rps"])
            sat["x_baseline-gthread"] = x
            targets.append(
                target(
                    f"6 satapi C={c}: vs baseline-gthread",
                    f"{x}x ({sat['rps']} vs {by['baseline-gthread']['rps']} req/s)",
                    "≥ 10x",
                    x is not None and x >= 10.0,
                )
            )
    if "satapi" in systems:
        # The default cap: the fake sees at most that many calls at once, and throughput is
        # what the cap allows.
        c = max(p.s6_concurrency)
        pt = run("satapi", capped, c, p.s6_capped_total, f"S6 C={c} capped")
        seen = (pt["ai"] or {}).get("max_in_flight")
        targets.append(
            target(
                f"6 satapi C={c}, max_concurrent_ai {capped.cap}: AI calls in flight",
                f"max {seen}",
                f"= cap {capped.cap}",
                seen == capped.cap,
            )
        )
        goal = 0.9 * min(c, capped.cap) / request_s
        targets.append(
            target(
                f"6 satapi C={c}, max_concurrent_ai {capped.cap}: throughput",
                f"{pt['rps']} req/s",
                f"≥ {goal:.3g} req/s (0.9 × {capped.cap} / {request_s:g} s)",
                pt["rps"] is not None and pt["rps"] >= goal and pt["ok"] == pt["total"],
            )
        )
        targets.append(health_target("6 (capped)", pt))
    return {
        "id": 6,
        "title": "POST /api/vision/analyze_satellite with Claude (download + AI call)",
        "params": {
            "wms_latency_s": p.s6_wms_latency,
            "ai_latency_s": p.s6_ai_latency,
            "ai_chunks": p.s6_ai_chunks,
            "size": p.s6_size,
            "concurrency": list(p.s6_concurrency),
            "ai_cap": ai.cap,
            "capped_cap": capped.cap,
            "capped_total": p.s6_capped_total,
            "baseline_time_limit_s": p.s6_baseline_time_limit,
        },
        "points": points,
        "targets": targets,
    }


def _share(value: float | None, ideal: float) -> str:
    return "–" if value is None or not ideal else f"{value / ideal:.0%}"


# Scenario 7 (several processes, `bench.scaleout`) builds on these; `bench.__main__` adds it.
SCENARIOS: dict[int, Callable[[Env], dict[str, Any]]] = {
    0: scenario0,
    1: scenario1,
    2: scenario2,
    3: scenario3,
    4: scenario4,
    5: scenario5,
    6: scenario6,
}

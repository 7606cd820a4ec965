"""Async HTTP load driver: N requests at concurrency C, with health-latency and server-RSS sampling.

Public API
----------
``RequestSpec(method, path, json=None, params=None)``
    One request; ``path`` is appended to the base URL. A ``RequestFactory`` is
    ``Callable[[int], RequestSpec]``, called with the request's index 0..N-1 (so a scenario can
    vary bodies deterministically).

``await run_load(base_url, factory, *, concurrency, total, time_limit=60.0, label="",
request_timeout=120.0, ok_statuses=range(200, 300), health_path="/healthz",
health_interval=0.05, health_timeout=60.0, rss_pid=None, rss_interval=0.05, client="auto")``
    Runs exactly ``total`` requests with ``concurrency`` workers sharing one pooled keep-alive
    client with ``concurrency`` connections, unless ``time_limit`` seconds pass first: then no new
    request starts, requests still running are cancelled (``cancelled``) and the rest are
    ``not_started``. Meanwhile a sampler thread, with its own event loop and its own single
    connection (so driver-loop lag does not inflate it), GETs ``health_path`` every
    ``health_interval`` s (one at a time: a slow answer delays the next probe), and sums VmRSS
    over the process tree rooted at ``rss_pid`` every ``rss_interval`` s. ``health_path=None`` /
    ``rss_pid=None`` switch those off. ``run_load_sync(...)``: the same from synchronous code
    (on uvloop when installed).

    ``client``: ``"aiohttp"``, ``"httpx2"`` or ``"auto"`` (aiohttp if importable). Measured here
    against ``bench.upstream`` (64x64 PNG, latency 0, 2 cores shared with the server): one
    ``httpx2.AsyncClient`` drives only ~300-700 req/s and gets slower as C grows (its connection
    pool scans every connection on each request: ~1.5 ms CPU per request at C=32), while one
    ``aiohttp.ClientSession`` drives ~2,000-6,000 req/s. So aiohttp is the default; httpx2 is
    kept as a fallback and for cross-checks. aiohttp is not (yet) in pyproject's ``bench`` extra.

``LoadResult`` (dataclass) -> ``to_dict(samples=False)``, ``summary()``
    ``rps`` counts every answered request (any status), ``ok_rps`` only the successful ones
    (status in ``ok_statuses``). ``latency`` covers every answered request, errors included;
    transport errors (by exception class, e.g. ``ServerDisconnectedError``) and non-OK statuses
    (``"HTTP 502"``) are counted in ``errors``. Times are milliseconds except ``wall_s`` and
    ``server_cpu_s`` (CPU seconds the ``rss_pid`` tree used during the run). ``health.max_ms``
    includes a probe still unanswered when the run ended (its time so far), so a server that
    never answers health during the run still shows up. ``records`` / ``health_records`` hold
    per-request samples for plots (``to_dict(samples=True)``).

``Stats`` (n, p50, p90, p99, max, mean in ms) and ``percentiles(values_ms)``;
``tree_rss_kb(pid) -> (KiB, processes)`` and ``tree_cpu_seconds(pid)`` over ``pid`` and its
descendants (``/proc/<pid>/task/*/children`` when the kernel has it, else a ``/proc/*/stat``
scan: this VM's kernel has no ``children`` files).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx2


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request relative to the driver's base URL."""

    method: str
    path: str
    json: Any = None
    params: Mapping[str, str] | None = None


RequestFactory = Callable[[int], RequestSpec]


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stats:
    """Latency distribution in milliseconds (nearest-rank percentiles)."""

    n: int = 0
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None
    mean: float | None = None


def percentiles(values_ms: list[float]) -> Stats:
    """Nearest-rank p50/p90/p99, max and mean of ``values_ms``."""
    if not values_ms:
        return Stats()
    ordered = sorted(values_ms)
    n = len(ordered)

    def rank(q: float) -> float:
        return round(ordered[min(n - 1, max(0, math.ceil(q * n) - 1))], 2)

    return Stats(
        n=n,
        p50=rank(0.50),
        p90=rank(0.90),
        p99=rank(0.99),
        max=round(ordered[-1], 2),
        mean=round(sum(ordered) / n, 2),
    )


@dataclass
class HealthResult:
    """Latency of the health probe while the load ran."""

    path: str
    interval_ms: float
    latency: Stats
    max_ms: float | None  # includes an unanswered probe at the end (censored)
    errors: dict[str, int]
    unanswered_at_end_ms: float | None


@dataclass
class LoadResult:
    """What ``run_load`` measured. See the module docstring for the meaning of each number."""

    label: str
    client: str  # "aiohttp" or "httpx2"
    base_url: str
    concurrency: int
    total: int
    time_limit_s: float
    started: int
    completed: int  # answered with any status
    ok: int
    wall_s: float
    rps: float
    ok_rps: float
    latency: Stats
    status_counts: dict[str, int]
    errors: dict[str, int]
    cancelled: int
    not_started: int
    hit_time_limit: bool
    health: HealthResult | None
    peak_rss_mb: float | None
    peak_processes: int | None
    rss_samples: int
    server_cpu_s: float | None  # CPU seconds the server tree used during the load
    # (start offset s, latency ms, outcome "200" | "HTTP 502" | "ReadTimeout") per finished request
    records: list[tuple[float, float, str]] = field(default_factory=list, repr=False)
    # (offset s, latency ms) per answered health probe
    health_records: list[tuple[float, float]] = field(default_factory=list, repr=False)

    def to_dict(self, *, samples: bool = False) -> dict[str, Any]:
        """JSON-ready dict; per-request records only with ``samples=True``."""
        data = asdict(self)
        if not samples:
            data.pop("records")
            data.pop("health_records")
        return data

    def summary(self) -> str:
        """A few human-readable lines."""
        lat = self.latency
        lines = [
            f"[{self.label or 'load'}] C={self.concurrency} N={self.total} ({self.client}): "
            f"{self.completed} answered ({self.ok} ok) in {self.wall_s:.2f}s = "
            f"{self.rps:.1f} req/s ({self.ok_rps:.1f} ok/s)",
            f"  latency ms p50={lat.p50} p90={lat.p90} p99={lat.p99} max={lat.max}",
        ]
        if self.errors or self.cancelled or self.not_started:
            lines.append(
                f"  errors={self.errors} cancelled={self.cancelled} "
                f"not_started={self.not_started} hit_time_limit={self.hit_time_limit}"
            )
        if self.health is not None:
            h = self.health.latency
            lines.append(
                f"  health {self.health.path} n={h.n} p50={h.p50} p99={h.p99} "
                f"max={self.health.max_ms} errors={self.health.errors}"
            )
        if self.peak_rss_mb is not None:
            lines.append(
                f"  server peak RSS {self.peak_rss_mb:.1f} MB "
                f"over {self.peak_processes} process(es), "
                f"CPU {self.server_cpu_s}s in {self.wall_s:.2f}s wall"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------- process-tree RSS


def _children_from_proc_files(pid: int) -> list[int] | None:
    """Children via /proc/<pid>/task/*/children (needs CONFIG_PROC_CHILDREN), else None."""
    tasks = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if not tasks:
        return None
    children: list[int] = []
    for task in tasks:
        try:
            children.extend(int(c) for c in task.read_text().split())
        except OSError:
            continue
    return children


def _parent_map() -> dict[int, list[int]]:
    """ppid -> [pid] for every process, read from /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2 :].split(" ", 2)[1])
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    return parents


def _descendants(root: int) -> list[int]:
    """root and all its descendants."""
    if _children_from_proc_files(root) is None:
        parents = _parent_map()
        children_of: Callable[[int], list[int]] = lambda p: parents.get(p, [])  # noqa: E731
    else:
        children_of = lambda p: _children_from_proc_files(p) or []  # noqa: E731
    seen, stack = [root], [root]
    while stack:
        for child in children_of(stack.pop()):
            if child not in seen:
                seen.append(child)
                stack.append(child)
    return seen


def _vm_rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return 0  # kernel threads / zombies have no VmRSS


def tree_rss_kb(pid: int) -> tuple[int, int]:
    """(summed VmRSS in KiB, number of live processes) over ``pid`` and its descendants."""
    total = count = 0
    for p in _descendants(pid):
        rss = _vm_rss_kb(p)
        if rss is not None:
            total += rss
            count += 1
    return total, count


def _cpu_seconds(pid: int) -> float:
    """utime + stime (+ those of its reaped children) of one process, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its live descendants."""
    return sum(_cpu_seconds(p) for p in _descendants(pid))


# --------------------------------------------------------------------------- HTTP clients


def _have_aiohttp() -> bool:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_client(client: str = "auto") -> str:
    """``"auto"`` -> ``"aiohttp"`` when it is installed, else ``"httpx2"``."""
    if client == "auto":
        return "aiohttp" if _have_aiohttp() else "httpx2"
    if client not in {"aiohttp", "httpx2"}:
        raise ValueError(f"unknown client {client!r}")
    return client


class _Client:
    """A pooled keep-alive HTTP client (aiohttp or httpx2): ``send(spec) -> status``."""

    def __init__(self, kind: str, base_url: str, connections: int, timeout: float) -> None:
        self.kind = kind
        self.base_url = base_url.rstrip("/")
        self.connections = connections
        self.timeout = timeout
        self._session: Any = None

    async def __aenter__(self) -> _Client:
        if self.kind == "aiohttp":
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.connections, limit_per_host=self.connections
                ),
                timeout=aiohttp.ClientTimeout(total=self.timeout, connect=min(self.timeout, 30.0)),
            )
        else:
            limits = httpx2.Limits(
                max_connections=self.connections, max_keepalive_connections=self.connections
            )
            self._session = httpx2.AsyncClient(
                limits=limits,
                timeout=httpx2.Timeout(self.timeout, connect=min(self.timeout, 30.0)),
                trust_env=False,
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "aiohttp":
            await self._session.close()
        else:
            await self._session.aclose()

    async def send(self, spec: RequestSpec) -> int:
        """Send ``spec``, read the whole body, return the status."""
        url = self.base_url + spec.path
        if self.kind == "aiohttp":
            async with self._session.request(
                spec.method, url, json=spec.json, params=spec.params
            ) as resp:
                await resp.read()
                return int(resp.status)
        resp = await self._session.request(spec.method, url, json=spec.json, params=spec.params)
        return int(resp.status_code)


# --------------------------------------------------------------------------- sampler thread


class _Sampler:
    """Health probe + RSS sampling on a thread with its own event loop and connection."""

    def __init__(
        self,
        client: str,
        base_url: str,
        health_path: str | None,
        health_interval: float,
        health_timeout: float,
        rss_pid: int | None,
        rss_interval: float,
    ) -> None:
        self.client = client
        self.base_url = base_url
        self.health_path = health_path
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.rss_pid = rss_pid
        self.rss_interval = rss_interval
        self.health_records: list[tuple[float, float]] = []
        self.health_errors: Counter[str] = Counter()
        self.unanswered_ms: float | None = None
        self.peak_rss_kb: int | None = None
        self.peak_processes: int | None = None
        self.rss_samples = 0
        self._t0 = time.perf_counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def start(self) -> None:
        if self.health_path is None and self.rss_pid is None:
            return
        self._thread.start()
        self._ready.wait(5.0)

    def stop(self) -> None:
        if self._loop is not None and self._main is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._main.cancel)
        if self._thread.is_alive():
            self._thread.join(10.0)

    def _run(self) -> None:
        asyncio.run(self._amain())

    async def _amain(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        self._ready.set()
        jobs = []
        if self.health_path is not None:
            jobs.append(self._health())
        if self.rss_pid is not None:
            jobs.append(self._rss())
        with contextlib.suppress(asyncio.CancelledError):  # stop() cancels this task
            await asyncio.gather(*jobs)

    async def _health(self) -> None:
        assert self.health_path is not None
        probe = RequestSpec("GET", self.health_path)
        async with _Client(self.client, self.base_url, 1, self.health_timeout) as client:
            while True:
                t = time.perf_counter()
                try:
                    status = await client.send(probe)
                    if status != 200:
                        self.health_errors[f"HTTP {status}"] += 1
                except asyncio.CancelledError:
                    self.unanswered_ms = (time.perf_counter() - t) * 1000
                    raise
                except Exception as exc:  # every transport error is a result here
                    self.health_errors[type(exc).__name__] += 1
                else:
                    self.health_records.append((t - self._t0, (time.perf_counter() - t) * 1000))
                await asyncio.sleep(max(0.0, self.health_interval - (time.perf_counter() - t)))

    async def _rss(self) -> None:
        assert self.rss_pid is not None
        while True:
            t = time.perf_counter()
            kb, procs = await asyncio.to_thread(tree_rss_kb, self.rss_pid)
            if procs:
                self.rss_samples += 1
                if self.peak_rss_kb is None or kb > self.peak_rss_kb:
                    self.peak_rss_kb, self.peak_processes = kb, procs
            await asyncio.sleep(max(0.0, self.rss_interval - (time.perf_counter() - t)))

    def health_result(self) -> HealthResult | None:
        if self.health_path is None:
            return None
        stats = percentiles([ms for _, ms in self.health_records])
        maxima = [m for m in (stats.max, self.unanswered_ms) if m is not None]
        return HealthResult(
            path=self.health_path,
            interval_ms=self.health_interval * 1000,
            latency=stats,
            max_ms=round(max(maxima), 2) if maxima else None,
            errors=dict(self.health_errors),
            unanswered_at_end_ms=(
                round(self.unanswered_ms, 2) if self.unanswered_ms is not None else None
            ),
        )


# --------------------------------------------------------------------------- the load


@dataclass
class _Tally:
    t0: float
    next_index: int = 0
    started: int = 0
    records: list[tuple[float, float, str]] = field(default_factory=list)


async def _worker(
    client: _Client,
    factory: RequestFactory,
    tally: _Tally,
    total: int,
    ok_statuses: Collection[int],
) -> None:
    while tally.next_index < total:
        index = tally.next_index
        tally.next_index += 1
        spec = factory(index)
        t = time.perf_counter()
        tally.started += 1
        try:
            status = await client.send(spec)
        except Exception as exc:  # transport errors are results, counted by class
            outcome = type(exc).__name__
        else:
            outcome = str(status) if status in ok_statuses else f"HTTP {status}"
        tally.records.append((t - tally.t0, (time.perf_counter() - t) * 1000, outcome))


async def run_load(
    base_url: str,
    factory: RequestFactory,
    *,
    concurrency: int,
    total: int,
    time_limit: float = 60.0,
    label: str = "",
    request_timeout: float = 120.0,
    ok_statuses: Collection[int] = range(200, 300),
    health_path: str | None = "/healthz",
    health_interval: float = 0.05,
    health_timeout: float = 60.0,
    rss_pid: int | None = None,
    rss_interval: float = 0.05,
    client: str = "auto",
) -> LoadResult:
    """Run the load; see the module docstring."""
    kind = resolve_client(client)
    sampler = _Sampler(
        kind, base_url, health_path, health_interval, health_timeout, rss_pid, rss_interval
    )
    await asyncio.to_thread(sampler.start)
    cpu0 = tree_cpu_seconds(rss_pid) if rss_pid is not None else None
    tally = _Tally(t0=time.perf_counter())
    hit_limit = False
    try:
        async with _Client(kind, base_url, concurrency, request_timeout) as http:
            workers = [
                _worker(http, factory, tally, total, ok_statuses)
                for _ in range(min(concurrency, total))
            ]
            try:
                async with asyncio.timeout(time_limit):
                    await asyncio.gather(*workers)
            except TimeoutError:
                hit_limit = True
        wall = time.perf_counter() - tally.t0
        cpu = tree_cpu_seconds(rss_pid) - cpu0 if rss_pid is not None and cpu0 is not None else None
    finally:
        await asyncio.to_thread(sampler.stop)
    return _result(
        label, kind, base_url, concurrency, total, time_limit, tally, wall, hit_limit, sampler, cpu
    )


def _result(
    label: str,
    kind: str,
    base_url: str,
    concurrency: int,
    total: int,
    time_limit: float,
    tally: _Tally,
    wall: float,
    hit_limit: bool,
    sampler: _Sampler,
    cpu: float | None,
) -> LoadResult:
    answered = [r for r in tally.records if r[2].isdigit() or r[2].startswith("HTTP ")]
    ok = sum(1 for r in tally.records if r[2].isdigit())
    statuses = Counter(r[2].removeprefix("HTTP ") for r in answered)
    errors = Counter(r[2] for r in tally.records if not r[2].isdigit())
    return LoadResult(
        label=label,
        client=kind,
        base_url=base_url,
        concurrency=concurrency,
        total=total,
        time_limit_s=time_limit,
        started=tally.started,
        completed=len(answered),
        ok=ok,
        wall_s=round(wall, 3),
        rps=round(len(answered) / wall, 2) if wall > 0 else 0.0,
        ok_rps=round(ok / wall, 2) if wall > 0 else 0.0,
        latency=percentiles([r[1] for r in answered]),
        status_counts=dict(sorted(statuses.items())),
        errors=dict(errors),
        cancelled=tally.started - len(tally.records),
        not_started=total - tally.started,
        hit_time_limit=hit_limit,
        health=sampler.health_result(),
        peak_rss_mb=(
            round(sampler.peak_rss_kb / 1024, 1) if sampler.peak_rss_kb is not None else None
        ),
        peak_processes=sampler.peak_processes,
        rss_samples=sampler.rss_samples,
        server_cpu_s=round(cpu, 3) if cpu is not None else None,
        records=tally.records,
        health_records=sampler.health_records,
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run_load_sync(base_url: str, factory: RequestFactory, **kwargs: Any) -> LoadResult:
    """``run_load`` from synchronous code, on uvloop when it is installed."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(run_load(base_url, factory, **kwargs))

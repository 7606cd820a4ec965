"""Prometheus metrics: one registry per app, fed by the observer hooks and read at scrape time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from satapi.limits import SlotStats
from satapi.observability.events import (
    AiSlotSettled,
    AnalysisFinished,
    DownloadSettled,
    Event,
    JobFinished,
    JobQueueSampled,
    JobSubmitted,
    LoopLagSampled,
    RedisCallFailed,
    RequestFinished,
    SelectionFinished,
    Shed,
    StoreCallFailed,
    TokenRequested,
)

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
DOWNLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ANALYSIS_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
SELECTION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
JOB_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Outcomes of an image request that involved a download of its own (not a hit or a share).
TRANSFER_OUTCOMES = frozenset({"ok", "wms_exception", "timeout", "error", "cancelled"})


class _StatsSource(Protocol):
    def stats(self) -> Mapping[str, SlotStats]: ...


class _StoreSource(Protocol):
    def stats(self) -> dict[str, int]: ...


class _SlotSource(Protocol):
    def stats(self) -> SlotStats: ...


class _FlightSource(Protocol):
    @property
    def downloads_in_progress(self) -> int: ...


@dataclass
class _Sources:
    limiter: _StatsSource
    store: _StoreSource | None
    images: _FlightSource | None
    loop: asyncio.AbstractEventLoop | None = field(default=None)
    ai: _SlotSource | None = None


class _StateCollector(Collector):
    """Gauges computed at scrape time from the limiter's and the store's counters."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        sources = self._metrics._sources
        if sources is None:
            return []
        out: list[Metric] = []
        stats = dict(sources.limiter.stats())
        global_stats = stats.pop("*", None)
        if global_stats is not None:
            for name, doc, value in (
                ("in_use", "WMS transfer permits held now, all providers.", global_stats.in_flight),
                ("waiting", "Requests waiting for a WMS permit now.", global_stats.waiting),
                ("capacity", "The global cap on concurrent WMS transfers.", global_stats.capacity),
            ):
                out.append(GaugeMetricFamily(f"satapi_wms_global_permits_{name}", doc, value=value))
        per_provider = [
            ("in_use", "WMS transfer permits held now, by provider.", "in_flight"),
            ("waiting", "Requests waiting for a provider's WMS permit now.", "waiting"),
            ("capacity", "The provider's cap on concurrent WMS transfers.", "capacity"),
        ]
        for name, doc, attr in per_provider:
            family = GaugeMetricFamily(f"satapi_wms_permits_{name}", doc, labels=["provider"])
            for provider, slot in sorted(stats.items()):
                family.add_metric([provider], getattr(slot, attr))
            out.append(family)
        out.extend(_fleet_metrics(sources.limiter))
        if sources.images is not None:
            out.append(
                GaugeMetricFamily(
                    "satapi_wms_downloads_in_progress",
                    "Distinct image downloads running now (shared requests count once).",
                    value=sources.images.downloads_in_progress,
                )
            )
        if sources.ai is not None:
            ai = sources.ai.stats()
            for name, doc, value in (
                (
                    "in_flight",
                    "AI calls running now (holding a permit of the AI cap).",
                    ai.in_flight,
                ),
                ("waiting", "AI calls waiting for a permit of the AI cap now.", ai.waiting),
                ("capacity", "The cap on concurrent AI calls (max_concurrent_ai).", ai.capacity),
            ):
                out.append(GaugeMetricFamily(f"satapi_ai_calls_{name}", doc, value=value))
            out.extend(_fleet_ai_metrics(sources.ai))
        # A shared (S3) store reports no size: the bucket's size is the object store's to tell.
        if sources.store is not None and (store := sources.store.stats()):
            out.append(
                GaugeMetricFamily(
                    "satapi_store_size_bytes",
                    "Bytes of images in the local store.",
                    value=store.get("bytes", 0),
                )
            )
            out.append(
                GaugeMetricFamily(
                    "satapi_store_files", "Images in the local store.", value=store.get("files", 0)
                )
            )
            out.append(
                CounterMetricFamily(
                    "satapi_store_evictions",
                    "Images evicted from the store to keep it under its size limit.",
                    value=store.get("evictions", 0),
                )
            )
        if sources.loop is not None:
            # Tasks alive on the event loop: back to its idle level after load, or a leak (the
            # soak benchmark checks it).
            out.append(
                GaugeMetricFamily(
                    "satapi_event_loop_tasks",
                    "asyncio tasks alive on the worker's event loop now.",
                    value=len(asyncio.all_tasks(sources.loop)),
                )
            )
        return out


def _fleet_metrics(limiter: object) -> list[Metric]:
    """With Redis: permits in use and waiting for the whole fleet (the limiter's last reading
    from Redis, refreshed every second), next to this process's own gauges."""
    fleet_stats = getattr(limiter, "fleet_stats", None)
    if fleet_stats is None:
        return []
    fleet: dict[str, SlotStats] = dict(fleet_stats())
    out: list[Metric] = []
    total = fleet.pop("*", None)
    if total is not None:
        for name, doc, value in (
            ("in_use", "WMS transfer permits held now by every process (Redis).", total.in_flight),
            (
                "waiting",
                "Requests waiting for a WMS permit in every process (Redis).",
                total.waiting,
            ),
        ):
            out.append(
                GaugeMetricFamily(f"satapi_fleet_wms_global_permits_{name}", doc, value=value)
            )
    for name, doc, attr in (
        ("in_use", "WMS permits held now by every process, by provider (Redis).", "in_flight"),
        ("waiting", "Requests waiting for a provider's permit, every process (Redis).", "waiting"),
    ):
        family = GaugeMetricFamily(f"satapi_fleet_wms_permits_{name}", doc, labels=["provider"])
        for provider, slot in sorted(fleet.items()):
            family.add_metric([provider], getattr(slot, attr))
        out.append(family)
    return out


def _fleet_ai_metrics(limiter: object) -> list[Metric]:
    """With Redis: AI calls in flight and waiting in the whole fleet (the AI cap is shared; the
    limiter's last reading from Redis, refreshed every second), next to this process's own."""
    fleet_stats = getattr(limiter, "fleet_stats", None)
    fleet: SlotStats | None = fleet_stats() if fleet_stats is not None else None
    if fleet is None:
        return []
    return [
        GaugeMetricFamily(
            "satapi_fleet_ai_calls_in_flight",
            "AI calls running now in every process sharing the AI cap (Redis).",
            value=fleet.in_flight,
        ),
        GaugeMetricFamily(
            "satapi_fleet_ai_calls_waiting",
            "AI calls waiting for a permit of the AI cap in every process (Redis).",
            value=fleet.waiting,
        ),
    ]


class Metrics:
    """The app's metrics; is an observer (`satapi.observability.events`).

    Each instance owns its registry, so several apps in one process do not collide. With
    `multiprocess_dir` (prometheus-client's `PROMETHEUS_MULTIPROC_DIR`), counters and histograms
    are summed over every worker process that writes there; the scrape-time gauges describe the
    worker that answers the scrape.
    """

    def __init__(self, *, multiprocess_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        self._multiprocess_dir = multiprocess_dir
        self._sources: _Sources | None = None
        self._state = _StateCollector(self)
        if multiprocess_dir is None:
            self.registry.register(self._state)
        r = self.registry
        self.http_requests = Counter(
            "satapi_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "satapi_http_request_duration_seconds",
            "HTTP request duration (streamed responses: until the last byte).",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.downloads = Counter(
            "satapi_wms_downloads",
            "Image requests by provider and how they were settled (ok = downloaded; cache_hit; "
            "shared = joined another request's download; wms_exception, timeout, shed, error, "
            "cancelled). A failed download counts once however many requests waited for it.",
            ["provider", "outcome"],
            registry=r,
        )
        self.download_duration = Histogram(
            "satapi_wms_download_duration_seconds",
            "Duration of WMS downloads (transfer, retries and verification; queue wait excluded).",
            ["provider", "outcome"],
            buckets=DOWNLOAD_BUCKETS,
            registry=r,
        )
        self.download_bytes = Counter(
            "satapi_wms_download_bytes",
            "Bytes of images downloaded from WMS servers.",
            ["provider"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "satapi_wms_queue_wait_seconds",
            "Time downloads waited for WMS permits (global and provider caps).",
            ["provider"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.shed_requests = Counter(
            "satapi_wms_shed",
            "WMS requests refused at once (503) because too many already waited for a permit.",
            ["provider"],
            registry=r,
        )
        self.redis_errors = Counter(
            "satapi_redis_errors",
            "Redis calls that failed (unreachable, timed out), by operation.",
            ["operation"],
            registry=r,
        )
        self.store_errors = Counter(
            "satapi_store_errors",
            "Calls to the shared object store (S3) that failed, by operation and kind.",
            ["operation", "kind"],
            registry=r,
        )
        self.event_loop_lag = Histogram(
            "satapi_event_loop_lag_seconds",
            "How late the event loop woke a task sleeping 50 ms (starvation), sampled 20x/s.",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.ai_queue_wait = Histogram(
            "satapi_ai_queue_wait_seconds",
            "Time AI calls waited for a permit of the AI cap (max_concurrent_ai).",
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.ai_shed = Counter(
            "satapi_ai_shed",
            "AI calls refused at once (503 ai_busy) because max_ai_waiting calls already waited.",
            registry=r,
        )
        self.token_requests = Counter(
            "satapi_oauth_token_requests",
            "OAuth token requests by provider, reason (new, after_401) and outcome (ok, refused, "
            "busy, error); with a shared token cache one per expiry for the whole fleet.",
            ["provider", "reason", "outcome"],
            registry=r,
        )
        self.analyses = Counter(
            "satapi_analyses",
            "Analyses by analyzer, model and outcome.",
            ["analyzer", "model", "outcome"],
            registry=r,
        )
        self.analysis_duration = Histogram(
            "satapi_analysis_duration_seconds",
            "Duration of analyses.",
            ["analyzer", "model"],
            buckets=ANALYSIS_BUCKETS,
            registry=r,
        )
        self.ai_input_tokens = Counter(
            "satapi_ai_input_tokens",
            "Input tokens billed by the AI provider.",
            ["analyzer", "model"],
            registry=r,
        )
        self.ai_output_tokens = Counter(
            "satapi_ai_output_tokens",
            "Output tokens billed by the AI provider.",
            ["analyzer", "model"],
            registry=r,
        )
        # Clearest-date selection.
        self.selections = Counter(
            "satapi_selections",
            "Clearest-date selections by provider and outcome (ok, cached, too_cloudy, ...).",
            ["provider", "outcome"],
            registry=r,
        )
        self.selection_candidates = Counter(
            "satapi_selection_candidates",
            "Candidate previews of clearest-date selections, by status (ok, failed, cached).",
            ["provider", "status"],
            registry=r,
        )
        self.selection_duration = Histogram(
            "satapi_selection_duration_seconds",
            "Time to fetch and score a selection's previews.",
            ["provider"],
            buckets=SELECTION_BUCKETS,
            registry=r,
        )
        self.jobs = Counter(
            "satapi_jobs",
            "Jobs by kind and state: accepted (queued), then how they ended.",
            ["kind", "state"],
            registry=r,
        )
        self.job_duration = Histogram(
            "satapi_job_duration_seconds",
            "Time from a job's start to its end (the last run), by kind and final state.",
            ["kind", "state"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.jobs_queued = Gauge(
            "satapi_jobs_queued",
            "Jobs waiting in the queue for a worker (sampled every few seconds).",
            registry=r,
            multiprocess_mode="max",
        )

    # -- scrape-time sources ---------------------------------------------------------------------

    def watch(
        self,
        limiter: _StatsSource,
        store: _StoreSource | None = None,
        images: _FlightSource | None = None,
        ai: _SlotSource | None = None,
    ) -> None:
        """Report the limiters', the store's and the image service's state at each scrape."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._sources = _Sources(limiter=limiter, store=store, images=images, loop=loop, ai=ai)

    def unwatch(self) -> None:
        """Stop reporting state (the resources are closing)."""
        self._sources = None

    # -- exposition --------------------------------------------------------------------------------

    @property
    def multiprocess(self) -> bool:
        """True when the exposition sums the files of several worker processes."""
        return self._multiprocess_dir is not None

    def render(self) -> tuple[bytes, str]:
        """The text exposition of every metric, and its content type."""
        if self._multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self._multiprocess_dir))  # type: ignore[no-untyped-call]
        registry.register(self._state)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    # -- the metrics sink ------------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """Count and time the observations metrics are made of."""
        match event:
            case RequestFinished(method=method, route=route, status=status):
                method = method if method in METHODS else "OTHER"
                self.http_requests.labels(method, route, str(status)).inc()
                self.http_duration.labels(method, route).observe(event.duration_s)
            case DownloadSettled(provider=provider, outcome=outcome):
                # Downloads also feed the duration and byte series; cache hits only the count.
                self.downloads.labels(provider, outcome).inc()
                if outcome in TRANSFER_OUTCOMES:
                    self.download_duration.labels(provider, outcome).observe(event.duration_s)
                    self.queue_wait.labels(provider).observe(event.queue_wait_s)
                if outcome == "ok":
                    self.download_bytes.labels(provider).inc(event.nbytes)
            case Shed(provider=provider):
                self.shed_requests.labels(provider).inc()
            case StoreCallFailed(operation=operation, kind=kind):
                self.store_errors.labels(operation, kind).inc()
            case LoopLagSampled(lag_s=lag_s):
                self.event_loop_lag.observe(lag_s)
            case AiSlotSettled(outcome="granted"):
                self.ai_queue_wait.observe(event.waited_s)
            case AiSlotSettled(outcome="shed"):
                self.ai_shed.inc()
            case RedisCallFailed(operation=operation):
                self.redis_errors.labels(operation).inc()
            case TokenRequested(provider=provider, reason=reason, outcome=outcome):
                self.token_requests.labels(provider, reason, outcome).inc()
            case AnalysisFinished(analyzer=analyzer):
                model_label = event.model or ""
                self.analyses.labels(analyzer, model_label, event.outcome).inc()
                self.analysis_duration.labels(analyzer, model_label).observe(event.duration_s)
                if event.input_tokens:
                    self.ai_input_tokens.labels(analyzer, model_label).inc(event.input_tokens)
                if event.output_tokens:
                    self.ai_output_tokens.labels(analyzer, model_label).inc(event.output_tokens)
            case JobSubmitted(kind=kind):
                self.jobs.labels(kind, "queued").inc()
            case JobFinished(kind=kind, state=state):
                self.jobs.labels(kind, state).inc()
                if event.duration_s is not None:
                    self.job_duration.labels(kind, state).observe(event.duration_s)
            case JobQueueSampled(length=length):
                self.jobs_queued.set(length)
            case SelectionFinished(provider=provider, outcome=outcome):
                self.selections.labels(provider, outcome).inc()
                if outcome == "cached":
                    self.selection_candidates.labels(provider, "cached").inc(event.candidates)
                else:
                    ok = event.candidates - event.failed
                    self.selection_candidates.labels(provider, "ok").inc(ok)
                    self.selection_candidates.labels(provider, "failed").inc(event.failed)
                    self.selection_duration.labels(provider).observe(event.duration_s)

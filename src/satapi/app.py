"""The application factory: `create_app(settings)` and the lifespan that owns shared resources."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from satapi import __version__
from satapi.analysis import AnalysisService
from satapi.analyzers.base import Analyzer
from satapi.analyzers.local import LocalAnalyzer
from satapi.app_state import Resources
from satapi.config import Settings, load_settings
from satapi.coordination import make_ai_limiter, make_token_cache, open_coordination
from satapi.cpu import CpuRunner, limit_malloc_arenas
from satapi.imagery import ImageService
from satapi.jobs.runner import ProgressObserver
from satapi.jobs.service import open_jobs
from satapi.limits import SlotLimiter
from satapi.models import LAYER_CHECK_EXAMPLES, ErrorResponse
from satapi.observability.events import (
    LoopLagSampled,
    NullObserver,
    Observer,
    Observers,
    RedisCallFailed,
    StoreCallFailed,
)
from satapi.observability.logs import LogObserver, setup_logging
from satapi.observability.looplag import lag_sampler
from satapi.observability.metrics import Metrics
from satapi.providers import make_image_client
from satapi.providers.netguard import GuardedResolver, Resolver, system_resolver
from satapi.providers.transport import AiohttpTransport
from satapi.routers import (
    analyses,
    comparison,
    health,
    images,
    jobs,
    providers,
    tiles,
    timeseries,
    vision,
)
from satapi.routers.metrics import router as metrics_router
from satapi.selection import CapabilitiesDates, Selector
from satapi.stores import open_stores
from satapi.urlpolicy import UrlPolicy
from satapi.web.access_log import AccessLogMiddleware
from satapi.web.docs import install_docs
from satapi.web.handlers import add_exception_handlers
from satapi.web.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    DeadlineMiddleware,
    RequestIdMiddleware,
)
from satapi.web.shutdown import ShutdownMiddleware, ShutdownState, process_shutdown
from satapi.web.shutdown import watch_signals as _watch_signals
from satapi.web.viewer import install_viewer

log = logging.getLogger("satapi")

# The cyclic collector's thresholds in a server process (`freeze_gc`); Python's are 700, 10, 10.
GC_THRESHOLDS = (20_000, 20, 20)

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "The request asks for something not allowed (e.g. a URL outside the allow-list).",
        401: "A valid API key is required.",
        404: "Unknown provider, image or analysis.",
        413: "The request body is too large.",
        422: (
            "The request is invalid; `error` says which field and why. Requests are also "
            "checked against the layer's capabilities before any download: "
            "`time_not_available`, `unknown_layer`, `outside_layer`, `unsupported_crs`."
        ),
        502: "The WMS server or the AI provider failed.",
        503: (
            "Overloaded, or a shared backend (the object store) is unavailable; retry after "
            "the `Retry-After` header's seconds."
        ),
        504: "The WMS server did not answer in time.",
        507: "The data directory is full; retry after the `Retry-After` header's seconds.",
    }.items()
}


def make_http_client(
    settings: Settings,
    *,
    resolver: Resolver | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> httpx2.AsyncClient:
    """The one HTTP client for WMS servers: pools sized to the cap, explicit timeouts.

    Its I/O is aiohttp's (`AiohttpTransport`). Connections to hosts other than the configured
    providers go only to public addresses, checked when connecting (`GuardedResolver`;
    `resolver` replaces the system's). `transport` replaces the whole transport (tests pass
    respx's mock here); the client's settings stay the same.
    """
    if transport is None:
        # Every origin an operator configured (a provider's endpoint, and its OAuth token endpoint).
        trusted = [(o[1], o[2]) for p in settings.providers.values() for o in p.origins]
        guard = GuardedResolver(
            trusted,
            resolver=resolver or system_resolver,
            lookup_timeout_s=settings.wms_connect_timeout_s,
        )
        transport = AiohttpTransport(max_connections=settings.max_concurrent_wms, guard=guard)
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(
            connect=settings.wms_connect_timeout_s,
            read=settings.wms_read_timeout_s,
            write=settings.wms_read_timeout_s,
            pool=settings.wms_total_timeout_s,
        ),
        transport=transport,
        follow_redirects=False,
        headers={"User-Agent": f"satapi/{__version__}"},
        trust_env=False,
    )


def make_ai_http_client(settings: Settings) -> httpx2.AsyncClient:
    """The HTTP client under the Anthropic SDK: aiohttp's pool and parser (less CPU per call than
    the SDK's default httpcore2 pool, docs/performance.md), up to `max_concurrent_ai`
    connections, every idle one reused: a call never connects while another connection idles
    (the SDK's default pool keeps 100, so a cap above that reconnected). The SDK closes it.
    The endpoint is the operator's (`anthropic_base_url`), so no SSRF guard."""
    return httpx2.AsyncClient(
        transport=AiohttpTransport(max_connections=settings.max_concurrent_ai, guard=None)
    )


@asynccontextmanager
async def open_resources(
    settings: Settings,
    *,
    observer: Observer | None = None,
    http_transport: httpx2.AsyncBaseTransport | None = None,
) -> AsyncIterator[Resources]:
    """Open the shared resources, and close them however the block ends.

    `observer` hears of every download, shed request and analysis (metrics and logs).
    `http_transport` replaces the WMS client's transport (`make_http_client`).
    """
    observer = observer if observer is not None else NullObserver()
    limit_malloc_arenas(settings.malloc_arenas)  # before the worker threads allocate
    cpu = CpuRunner(settings.cpu_threads)
    store, analyses = open_stores(
        settings,
        on_error=lambda operation, kind: observer.observe(
            StoreCallFailed(operation=operation, kind=kind)
        ),
    )
    await store.start()
    coordinator, limiter, flights = await open_coordination(
        settings, on_error=lambda operation: observer.observe(RedisCallFailed(operation=operation))
    )
    policy = UrlPolicy(settings.providers, settings.allowed_hosts)
    http = make_http_client(settings, transport=http_transport)
    client = make_image_client(
        settings,
        http,
        limiter,
        policy=policy,
        cpu=cpu,
        observer=observer,
        # OAuth tokens (Sentinel Hub): shared by the fleet through Redis when redis_url is set.
        tokens=make_token_cache(settings, coordinator),
    )
    service = ImageService(
        client,
        store,
        cpu,
        policy,
        default_provider=settings.default_provider,
        max_px=settings.max_image_px,
        cache_ttl_s=settings.cache_ttl_s,
        inflate_png=settings.png_check == "inflate",
        observer=observer,
        fleet=flights,
        max_area_pixels=settings.max_area_pixels,
        max_vertices=settings.max_geometry_vertices,
    )
    await analyses.start()
    analyzers: dict[str, Analyzer] = {
        "local": LocalAnalyzer(
            cpu, max_pixels=max(settings.max_image_px**2, settings.max_area_pixels)
        )
    }
    ai_client = None
    ai_limiter: SlotLimiter | None = None
    if settings.anthropic_api_key is not None:
        # Imported only when a key is set: the anthropic SDK alone adds ~48 MB to every process
        # and ~1.7 s to start-up, for nothing when only the local analyzer can run.
        from satapi.analyzers.claude import ClaudeAnalyzer, make_anthropic_client

        ai_client = make_anthropic_client(
            settings.anthropic_api_key.get_secret_value(),
            base_url=settings.anthropic_base_url,
            max_retries=settings.anthropic_max_retries,
            http_client=make_ai_http_client(settings),
        )
        ai_limiter = make_ai_limiter(settings, observer, coordinator)
        analyzers["claude"] = ClaudeAnalyzer(
            ai_client,
            model=settings.anthropic_model,
            cpu=cpu,
            max_tokens=settings.ai_max_tokens,
            max_long_edge=settings.ai_max_long_edge,
            max_pixels=settings.ai_max_pixels,
            limiter=ai_limiter,
        )
        log.info(
            "analyzers: claude (%s) and local; 'auto' uses claude (an Anthropic API key is set)",
            settings.anthropic_model,
        )
    else:
        log.info(
            "analyzers: local only; 'auto' uses local (no Anthropic API key: ANTHROPIC_API_KEY "
            "and SATAPI_ANTHROPIC_API_KEY are unset or blank)"
        )
    try:
        yield Resources(
            settings=settings,
            http=http,
            limiter=limiter,
            cpu=cpu,
            store=store,
            analyses=analyses,
            images=service,
            analysis=AnalysisService(store, analyses, analyzers, observer=observer),
            selector=Selector(
                images=service,
                cpu=cpu,
                dates=CapabilitiesDates(service),
                preview_px=settings.preview_px,
                cache_ttl_s=settings.cache_ttl_s,
                cache_entries=settings.selection_cache_entries,
                observer=observer,
            ),
            anthropic=ai_client,
            ai_limiter=ai_limiter,
            observer=observer,
            coordinator=coordinator,
        )
    finally:
        await http.aclose()
        if coordinator is not None:
            await coordinator.close()
        if ai_client is not None:
            await ai_client.close()
        await store.close()


def create_app(
    settings: Settings | None = None,
    *,
    shutdown: ShutdownState | None = None,
    watch_signals: bool = False,
    http_transport: httpx2.AsyncBaseTransport | None = None,
    freeze_gc: bool = False,
    warm_up: bool = False,
) -> FastAPI:
    """Build the application from `settings` (read from the environment when None).

    `shutdown` is what says the server is shutting down (the process's own state when None).
    With `watch_signals` (the server's factory) SIGTERM/SIGINT set it at once, see
    `satapi.web.shutdown`. `http_transport` replaces the WMS client's transport (tests pass a
    mock, see `make_http_client`). With `freeze_gc` (the server's factory) the objects start-up
    made are moved out of the cyclic collector's reach once the app is ready (`gc.freeze()`).
    With `warm_up` (the server's factory) start-up does what the first requests would otherwise
    do on the event loop (`warm_up_app`).
    """
    settings = settings or load_settings()
    shutdown = shutdown if shutdown is not None else process_shutdown
    metrics = Metrics(multiprocess_dir=settings.prometheus_multiproc_dir)
    observer = Observers([metrics, LogObserver(), ProgressObserver()])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        undo_signals = (
            _watch_signals(shutdown, delay_s=settings.shutdown_delay_s) if watch_signals else None
        )
        async with (
            open_resources(settings, observer=observer, http_transport=http_transport) as resources,
            lag_sampler(lambda lag_s: observer.observe(LoopLagSampled(lag_s=lag_s))),
            open_jobs(settings, resources, observer) as job_service,
        ):
            app.state.resources = resources
            app.state.jobs = job_service
            if warm_up:
                warm_up_app(app)
            metrics.watch(
                resources.limiter, resources.store, resources.images, ai=resources.ai_limiter
            )
            log.info(
                "satapi %s ready: default provider %s, store %s",
                __version__,
                settings.default_provider,
                settings.store_url or settings.data_dir,
            )
            if freeze_gc:
                # Start-up leaves ~90,000 objects that live as long as the process (modules,
                # pydantic models, the clients). Every full collection walked them all with the
                # loop stopped (~45 ms on the bench VM, the /healthz outliers); frozen, they are
                # no longer walked. Not in tests: each test's app would stay frozen for good.
                # `satapi serve` kept the collector off during start-up: on again now.
                gc.enable()
                gc.collect()
                gc.freeze()
                # A request allocates thousands of objects: at the default 700 the young
                # generation was collected ~230 times per 400 scenario-6 requests (0.24 s of
                # CPU, ~0.5 ms per request); at 20,000 six times (0.04 s). The garbage of
                # reference cycles waits a little longer (a few MB at most).
                gc.set_threshold(*GC_THRESHOLDS)
            try:
                yield
            finally:
                if undo_signals is not None:
                    undo_signals()
                metrics.unwatch()
                # Let background work see the shutdown before the client closes.
                await asyncio.sleep(0)

    app = FastAPI(
        title="satapi",
        version=__version__,
        summary="Satellite imagery from WMS servers, analysed by Claude or a local pixel analyzer.",
        lifespan=lifespan,
        docs_url=None,  # served by install_docs from installed files, not a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.shutdown = shutdown
    add_exception_handlers(app)
    _document_errors_and_keys(
        app, keys_required=bool(settings.api_keys), max_image_px=settings.max_image_px
    )
    install_docs(app)
    install_viewer(app)  # the map page at /
    app.include_router(metrics_router)
    app.include_router(health.router)
    for api in (providers, images, vision, comparison, timeseries, analyses, tiles, jobs):
        app.include_router(api.router, responses=ERROR_RESPONSES)
    # Added first, so innermost: CORS (when set) answers preflights before the key check.
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "ETag", "Retry-After"],
        )
    app.add_middleware(DeadlineMiddleware, seconds=settings.request_timeout_s)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ShutdownMiddleware, state=shutdown)
    app.add_middleware(AccessLogMiddleware, observer=observer)
    app.add_middleware(RequestIdMiddleware)
    return app


# How /api routes take an API key (enforced by ApiKeyMiddleware when keys are configured; a
# per-route dependency would cost every request ~0.1 ms of FastAPI dependency solving).
API_KEY_SCHEMES: dict[str, dict[str, str]] = {
    "HTTPBearer": {
        "type": "http",
        "description": "An API key from SATAPI_API_KEYS.",
        "scheme": "bearer",
    },
    "APIKeyHeader": {
        "type": "apiKey",
        "description": "An API key.",
        "in": "header",
        "name": "X-API-Key",
    },
}


# Routes whose requests are checked against the layer's capabilities (their 422 examples).
_CHECKED_ROUTES = (
    "/api/images",
    "/api/vision",
    "/api/comparison",
    "/api/tiles",
    "/api/timeseries",
)


def _state_size_limit(schema: dict[str, Any], max_image_px: int) -> None:
    """Write the service's `max_image_px` as the `maximum` of every width and height, in the
    request models and the GET stream's query, so /docs states the limit that is enforced."""
    for model in schema.get("components", {}).get("schemas", {}).values():
        for name in ("width", "height"):
            field = model.get("properties", {}).get(name)
            if field is not None and field.get("type") == "integer" and "minimum" in field:
                field["maximum"] = max_image_px
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("name") in ("width", "height") and parameter.get("in") == "query":
                    parameter["schema"]["maximum"] = max_image_px


def _document_errors_and_keys(app: FastAPI, *, keys_required: bool, max_image_px: int) -> None:
    """Document every 4xx/5xx as the JSON error envelope, also on SSE routes, and, when API keys
    are configured, the API-key schemes on every /api operation (without keys there is nothing
    to authorize, so /docs shows no Authorize button and no locks).

    FastAPI gives additional responses the route's media type, so on an SSE route the envelope
    would be documented as text/event-stream although errors are always JSON.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            envelope = {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
            for route, path in schema.get("paths", {}).items():
                for operation in path.values():
                    for status, response in operation.get("responses", {}).items():
                        if status[:1] in ("4", "5"):
                            media: dict[str, Any] = dict(envelope)
                            if status == "422" and route.startswith(_CHECKED_ROUTES):
                                # The layer checks' answers (capabilities, before any GetMap).
                                media["examples"] = LAYER_CHECK_EXAMPLES
                            response["content"] = {"application/json": media}
                    if keys_required and (route == "/api" or route.startswith("/api/")):
                        operation["security"] = [{name: []} for name in API_KEY_SCHEMES]
            if keys_required:
                schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(
                    API_KEY_SCHEMES
                )
            _state_size_limit(schema, max_image_px)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """The uvicorn factory used by `satapi serve`: settings from the environment, logging set up."""
    settings = load_settings()
    setup_logging(settings.log_format, settings.log_level, settings.secrets)
    return create_app(settings, watch_signals=True, freeze_gc=True, warm_up=True)


def warm_up_app(app: FastAPI) -> None:
    """Do at start-up what the first requests would do lazily, making them and every request
    queued behind them wait: build the routes (`build_route_state`, ~65 ms of CPU) and import
    the capabilities parser (OWSLib, ~40 ms, imported in a worker thread that holds the GIL).
    """
    build_route_state(app)
    importlib.import_module("owslib.wms")  # imported on first use elsewhere (CLI, tests)


def build_route_state(app: FastAPI) -> int:
    """Build now what FastAPI builds for each included router on the first request that
    reaches it; the number of routes built.

    FastAPI (0.165) makes an included router's routes ready to serve lazily, per app: their
    dependants, fields and pydantic TypeAdapters (~100 for satapi's routers). The first
    request to /api/images paid ~40 ms of CPU for it (in-process), and so did every request
    that arrived in the same moment, queued behind it on the event loop. It uses FastAPI's
    private `effective_candidates` / `effective_low_priority_routes`: should they go, nothing
    is built here and the first requests pay as before.
    """
    built = 0
    pending = list(app.router.routes)
    while pending:
        route = pending.pop()
        candidates = getattr(route, "effective_candidates", None)
        low_priority = getattr(route, "effective_low_priority_routes", None)
        if not callable(candidates) or not callable(low_priority):
            continue  # a plain route: built when it was added
        for candidate in candidates():
            if callable(getattr(candidate, "effective_candidates", None)):
                pending.append(candidate)  # a router included in this one
            else:
                built += 1
        low_priority()
    return built

"""Provider kinds, each implementing the `satapi.wms_client.ImageClient` protocol (`wms.py`:
OGC WMS GetMap; `sentinelhub.py`: the Sentinel Hub / CDSE Process API), and the factory that
builds the clients the settings configure."""

from __future__ import annotations

from typing import TYPE_CHECKING

from satapi.wms_client import ImageClient, ImageClients, RetryPolicy

if TYPE_CHECKING:
    import httpx2

    from satapi.config import Settings
    from satapi.cpu import CpuRunner
    from satapi.limits import Limiter
    from satapi.observability.events import Observer
    from satapi.tokens import TokenCache
    from satapi.urlpolicy import UrlPolicy


def make_image_client(
    settings: Settings,
    http: httpx2.AsyncClient,
    limiter: Limiter,
    *,
    policy: UrlPolicy,
    cpu: CpuRunner,
    observer: Observer | None = None,
    tokens: TokenCache | None = None,
) -> ImageClient:
    """The image clients of every configured provider kind, sharing one HTTP client and limiter.

    `tokens` shares OAuth tokens (Sentinel Hub); by default `satapi.coordination.make_token_cache`.
    """
    from satapi.providers.wms import WMSClient

    retry = RetryPolicy(
        attempts=settings.retry_attempts,
        wait_initial=settings.retry_wait_initial_s,
        wait_max=settings.retry_wait_max_s,
    )
    clients: dict[str, ImageClient] = {
        "wms": WMSClient(
            http,
            limiter,
            providers=settings.providers,
            policy=policy,
            cpu=cpu,
            max_bytes=settings.max_image_bytes,
            total_timeout_s=settings.wms_total_timeout_s,
            retry=retry,
            secrets=settings.secrets,
            capabilities_ttl_s=settings.capabilities_ttl_s,
            observer=observer,
        )
    }
    oauth = {n: p for n, p in settings.providers.items() if p.kind == "sentinelhub"}
    if oauth:
        # Imported here: a WMS-only service never loads the OAuth client.
        from satapi.coordination import make_token_cache
        from satapi.providers.sentinelhub import SentinelHubClient

        clients["sentinelhub"] = SentinelHubClient(
            http,
            limiter,
            providers=oauth,
            tokens=tokens if tokens is not None else make_token_cache(settings),
            max_bytes=settings.max_image_bytes,
            total_timeout_s=settings.wms_total_timeout_s,
            retry=retry,
            secrets=settings.secrets,
            observer=observer,
        )
    return ImageClients(settings.providers, clients)

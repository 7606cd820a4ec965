"""The shared resources a running app holds (created by the lifespan in `satapi.app`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx2

from satapi.analysis import AnalysisService
from satapi.config import Settings
from satapi.cpu import CpuRunner
from satapi.imagery import ImageService
from satapi.limits import Limiter, SlotLimiter
from satapi.observability.events import NullObserver, Observer
from satapi.selection import Selector
from satapi.storage import AnalysisStore, ImageStore

if TYPE_CHECKING:  # the SDK is imported only when an API key is configured (see satapi.app)
    import anthropic

    from satapi.coordination.redis import RedisCoordinator


@dataclass
class Resources:
    """Everything the routes share, created by the lifespan and closed on shutdown."""

    settings: Settings
    http: httpx2.AsyncClient
    limiter: Limiter
    cpu: CpuRunner
    store: ImageStore
    analyses: AnalysisStore
    images: ImageService
    analysis: AnalysisService
    selector: Selector
    anthropic: anthropic.AsyncAnthropic | None = None
    ai_limiter: SlotLimiter | None = None  # the AI cap, when the Claude analyzer is configured
    observer: Observer = field(default_factory=NullObserver)
    coordinator: RedisCoordinator | None = None  # with redis_url

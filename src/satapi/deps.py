"""Typed dependencies: how routes reach the shared resources.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool, which
cost every request several thread hops (and a share of 40 pool threads) just to read app.state.
Each reads `app.state` itself instead of depending on `get_resources`: every dependency node
costs FastAPI ~20-40 µs per request. API keys are checked by `ApiKeyMiddleware`, before the
body is read; the OpenAPI document describes them (`satapi.app.API_KEY_SCHEMES`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from satapi.analysis import AnalysisService
from satapi.app_state import Resources
from satapi.config import Settings
from satapi.imagery import ImageService
from satapi.selection import Selector
from satapi.storage import AnalysisStore, ImageStore


def _resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


async def get_resources(request: Request) -> Resources:
    """The resources the lifespan opened."""
    return _resources(request)


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return _resources(request).settings


async def get_images(request: Request) -> ImageService:
    """The image service (store + WMS client)."""
    return _resources(request).images


async def get_store(request: Request) -> ImageStore:
    """The image store."""
    return _resources(request).store


async def get_analyses(request: Request) -> AnalysisStore:
    """The analysis result store."""
    return _resources(request).analyses


async def get_analysis(request: Request) -> AnalysisService:
    """The analysis service (analyzers + result cache)."""
    return _resources(request).analysis


async def get_selector(request: Request) -> Selector:
    """The clearest-date selector."""
    return _resources(request).selector


SettingsDep = Annotated[Settings, Depends(get_settings)]
ImagesDep = Annotated[ImageService, Depends(get_images)]
StoreDep = Annotated[ImageStore, Depends(get_store)]
AnalysesDep = Annotated[AnalysisStore, Depends(get_analyses)]
AnalysisDep = Annotated[AnalysisService, Depends(get_analysis)]
SelectorDep = Annotated[Selector, Depends(get_selector)]

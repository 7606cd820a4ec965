"""Typed dependencies: how routes reach the shared resources and check API keys.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool, which
cost every request several thread hops (and a share of 40 pool threads) just to read app.state.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from satapi.analysis import AnalysisService
from satapi.app_state import Resources
from satapi.auth import check_api_key
from satapi.config import Settings
from satapi.imagery import ImageService
from satapi.storage import AnalysisStore, ImageStore


async def get_resources(request: Request) -> Resources:
    """The resources the lifespan opened."""
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_settings(resources: ResourcesDep) -> Settings:
    """The app's settings."""
    return resources.settings


async def get_images(resources: ResourcesDep) -> ImageService:
    """The image service (store + WMS client)."""
    return resources.images


async def get_store(resources: ResourcesDep) -> ImageStore:
    """The image store."""
    return resources.store


async def get_analyses(resources: ResourcesDep) -> AnalysisStore:
    """The analysis result store."""
    return resources.analyses


async def get_analysis(resources: ResourcesDep) -> AnalysisService:
    """The analysis service (analyzers + result cache)."""
    return resources.analysis


SettingsDep = Annotated[Settings, Depends(get_settings)]
ImagesDep = Annotated[ImageService, Depends(get_images)]
StoreDep = Annotated[ImageStore, Depends(get_store)]
AnalysesDep = Annotated[AnalysisStore, Depends(get_analyses)]
AnalysisDep = Annotated[AnalysisService, Depends(get_analysis)]

_bearer = HTTPBearer(auto_error=False, description="An API key from SATAPI_API_KEYS.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")


async def require_api_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_header)],
) -> None:
    """When API keys are configured, accept only a request that carries one of them.

    `ApiKeyMiddleware` enforces the same before the body is read; this dependency documents the
    schemes in OpenAPI (and checks again, at no real cost).
    """
    check_api_key(
        bearer.credentials if bearer is not None else None,
        header,
        request.app.state.settings.api_keys,
    )

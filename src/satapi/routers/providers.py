"""GET /api/providers and each provider's layers from its capabilities."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from satapi.deps import ImagesDep, SettingsDep
from satapi.models import LayerOut, LayersResponse, ProviderInfo, ProvidersResponse

router = APIRouter(prefix="/api/providers", tags=["providers"])


@router.get("", summary="List the configured imagery providers", response_model=ProvidersResponse)
async def list_providers(settings: SettingsDep) -> ProvidersResponse:
    """Every configured provider with its kind and endpoint (secrets are never shown)."""
    return ProvidersResponse(
        providers=[
            ProviderInfo(
                name=name,
                kind=p.kind,
                title=p.title,
                url=p.url,
                version=p.version if p.kind == "wms" else None,
                default_layer=p.layer,
                max_concurrency=p.max_concurrency,
                attribution=p.attribution,
                default=name == settings.default_provider,
            )
            for name, p in settings.providers.items()
        ]
    )


@router.get(
    "/{name}/layers",
    summary="List a provider's layers",
    response_model=LayersResponse,
)
async def list_layers(
    name: Annotated[str, Path(max_length=64, description="Provider name.")],
    images: ImagesDep,
    refresh: Annotated[bool, Query(description="Bypass the capabilities cache.")] = False,
) -> LayersResponse:
    """Layers from the provider's GetCapabilities (cached), with CRSs, bbox and TIME values;
    a Sentinel Hub provider lists its collection."""
    layers = await images.client.layers(name, refresh=refresh)
    return LayersResponse(
        provider=name,
        layers=[
            LayerOut(
                name=layer.name,
                title=layer.title,
                crs=layer.crs,
                bbox=layer.bbox,
                times=layer.times,
                default_time=layer.default_time,
            )
            for layer in layers
        ],
    )

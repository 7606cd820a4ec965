"""The server's start-up does what the first requests would otherwise do on the event loop."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import routing

import satapi.app
from satapi.app import build_route_state, create_app
from satapi.config import Settings


@pytest.fixture
def routes_built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the routes FastAPI builds from now on (it builds them lazily, per app)."""
    built: list[str] = []
    context_cls: Any = routing._EffectiveRouteContext
    build = context_cls.from_api_route

    def counted(cls: Any, **kwargs: Any) -> Any:
        built.append(kwargs["original_route"].path)
        return build(**kwargs)

    monkeypatch.setattr(context_cls, "from_api_route", classmethod(counted))
    return built


async def _first_requests(app: Any) -> None:
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://satapi.test"
        ) as client,
    ):
        answers = [
            await client.get("/healthz"),
            await client.get("/api/providers"),
            await client.get("/api/analyses/" + "a" * 64),
        ]
        assert [r.status_code for r in answers] == [200, 200, 404]


async def test_without_warm_up_the_first_request_to_a_router_builds_its_routes(
    make_settings: Callable[..., Settings], routes_built: list[str]
) -> None:
    await _first_requests(create_app(make_settings()))
    assert "/healthz" in routes_built and "/api/providers" in routes_built


async def test_a_warmed_up_app_builds_every_route_at_start_up_and_none_per_request(
    make_settings: Callable[..., Settings],
    routes_built: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    imported: list[str] = []
    import_module = importlib.import_module

    def recorded(name: str, package: str | None = None) -> Any:
        imported.append(name)
        return import_module(name, package)

    monkeypatch.setattr(satapi.app.importlib, "import_module", recorded)
    app = create_app(make_settings(), warm_up=True)
    assert routes_built == []  # nothing before start-up

    async with LifespanManager(app) as manager:
        at_start = list(routes_built)
        assert len(at_start) >= 20 and "/healthz" in at_start
        assert "owslib.wms" in imported  # the capabilities parser, imported lazily elsewhere
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://satapi.test"
        ) as client:
            for path in ("/healthz", "/api/providers", "/api/analyses/" + "a" * 64):
                await client.get(path)
    assert routes_built == at_start  # the requests built nothing more
    assert build_route_state(app) == len(at_start)  # counted the same way, and idempotent
    assert routes_built == at_start

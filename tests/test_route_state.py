"""The suite shares FastAPI's route state across the apps it builds (tests/support/route_state.py).

What that sharing must not change: each app still answers from its own state, and an app with
dependency overrides still gets them.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

from satapi.app import create_app
from satapi.config import Settings
from satapi.deps import get_settings


def _settings(tmp_path: Path, name: str) -> Settings:
    return Settings(
        data_dir=tmp_path / name,
        default_provider=name,
        providers={name: {"url": f"http://{name}.test/wms", "default_layer": "scene"}},
        anthropic_api_key=None,
    )


async def _providers(app: object) -> list[str]:
    async with LifespanManager(app) as manager:  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.get("/api/providers")
    assert r.status_code == 200, r.text
    return [p["name"] for p in r.json()["providers"]]


async def test_each_app_answers_from_its_own_settings(tmp_path: Path) -> None:
    first = create_app(_settings(tmp_path, "first"))
    second = create_app(_settings(tmp_path, "second"))
    assert "first" in await _providers(first)
    names = await _providers(second)
    assert "second" in names and "first" not in names
    assert "first" in await _providers(first)


async def test_an_app_with_dependency_overrides_gets_them(tmp_path: Path) -> None:
    plain = create_app(_settings(tmp_path, "plain"))
    assert "plain" in await _providers(plain)
    overridden = create_app(_settings(tmp_path, "real"))
    other = _settings(tmp_path, "override")
    overridden.dependency_overrides[get_settings] = lambda: other
    names = await _providers(overridden)
    assert "override" in names and "real" not in names

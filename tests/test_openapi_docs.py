"""The OpenAPI document is complete, and /docs and /redoc load only the service's own files."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from satapi.app import create_app
from satapi.config import Settings

ERROR_REF = "#/components/schemas/ErrorResponse"
METHODS = ("get", "post", "put", "patch", "delete")


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every (method, path, operation) under /api."""
    return [
        (method, path, op)
        for path, item in spec["paths"].items()
        if path.startswith("/api/")
        for method, op in item.items()
        if method in METHODS
    ]


def has_example(spec: dict[str, Any], media: dict[str, Any]) -> bool:
    """True when a request body's media type or its schema carries an example."""
    if "example" in media or "examples" in media:
        return True
    schema = media.get("schema", {})
    ref = schema.get("$ref")
    if ref:
        schema = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return bool(schema.get("examples") or schema.get("example"))


def test_every_api_operation_is_documented(settings: Settings) -> None:
    spec = create_app(settings).openapi()
    ops = operations(spec)
    assert len(ops) >= 5
    problems: list[str] = []
    for method, path, op in ops:
        name = f"{method.upper()} {path}"
        if not op.get("summary"):
            problems.append(f"{name}: no summary")
        if not op.get("description"):
            problems.append(f"{name}: no description")
        errors = {
            status
            for status, response in op.get("responses", {}).items()
            if status[:1] in ("4", "5")
            and any(
                media.get("schema", {}).get("$ref") == ERROR_REF
                for media in response.get("content", {}).values()
            )
        }
        if not any(s.startswith("4") for s in errors) or not any(s.startswith("5") for s in errors):
            problems.append(f"{name}: 4xx/5xx responses do not reference ErrorResponse")
        body = op.get("requestBody")
        if body is not None:
            media = body.get("content", {}).get("application/json")
            if media is None or not has_example(spec, media):
                problems.append(f"{name}: request body without an example")
    assert not problems, "\n".join(problems)


def test_docs_routes_stay_out_of_the_schema(settings: Settings) -> None:
    paths = create_app(settings).openapi()["paths"]
    assert not {"/docs", "/redoc", "/metrics", "/docs/oauth2-redirect"} & set(paths)


@pytest.mark.parametrize(
    ("page", "marker"), [("/docs", "SwaggerUIBundle"), ("/redoc", "redoc.standalone.js")]
)
async def test_explorer_pages_load_only_local_assets(
    client: httpx.AsyncClient, page: str, marker: str
) -> None:
    r = await client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert marker in html
    # No CDN, no web fonts, no validator badge: nothing outside the service.
    assert not re.search(r"https?://", html), re.findall(r"https?://[^\"' ]+", html)
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert assets
    for asset in assets:
        got = await client.get(asset)
        assert got.status_code == 200, asset
        assert len(got.content) > 100
    assert (await client.get("/openapi.json")).status_code == 200


async def test_swagger_ui_is_version_5_and_redirect_page_exists(
    client: httpx.AsyncClient,
) -> None:
    html = (await client.get("/docs")).text
    assert '"validatorUrl": null' in html
    bundle = (await client.get("/docs/assets/swagger/swagger-ui-bundle.js")).text
    # Swagger UI 5 is the first that reads OpenAPI 3.1, which FastAPI writes.
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.', bundle)
    assert version is not None and int(version.group(1)) >= 5
    assert "isOAS31" in bundle
    assert (await client.get("/docs/oauth2-redirect")).status_code == 200
    assert (await client.get("/redoc/logo-mini.svg")).status_code == 200


def test_without_api_keys_the_schema_has_no_security(settings: Settings) -> None:
    # Nothing to authorize: /docs shows no Authorize button and no locks.
    schema = create_app(settings.model_copy(update={"api_keys": []})).openapi()
    assert "securitySchemes" not in schema.get("components", {})
    assert not [
        (method, path)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if "security" in operation
    ]


def test_api_key_schemes_are_documented_on_every_api_operation(settings: Settings) -> None:
    # Keys are enforced by middleware (before the body is read), so the schema documents them
    # itself: every /api operation offers both schemes, the probes and /metrics none.
    schema = create_app(settings.model_copy(update={"api_keys": [SecretStr("k")]})).openapi()
    assert set(schema["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            expected = (
                [{"HTTPBearer": []}, {"APIKeyHeader": []}] if path.startswith("/api/") else None
            )
            assert operation.get("security") == expected, (method, path)

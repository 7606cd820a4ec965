"""The API explorer (/docs, /redoc) served from installed packages, so it works offline."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

log = logging.getLogger("satapi")

# `fastapi-standalone-docs` ships Swagger UI 5 (OpenAPI 3.1, which FastAPI writes) and ReDoc 2
# as plain files; only its files are used, not its code (which patches FastAPI globally).
ASSETS_PACKAGE = "fastapi_standalone_docs"
ASSETS_PREFIX = "/docs/assets"
SWAGGER_UI_PARAMETERS: dict[str, Any] = {
    "validatorUrl": None,  # the default badge calls validator.swagger.io
    "displayRequestDuration": True,
    "persistAuthorization": True,
    "filter": True,
}


def assets_dir() -> Path | None:
    """The installed directory holding `swagger/`, `redoc/` and `fastapi/` assets, if any."""
    spec = importlib.util.find_spec(ASSETS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "static"
    return path if (path / "swagger" / "swagger-ui-bundle.js").is_file() else None


def install_docs(
    app: FastAPI,
    *,
    docs_url: str = "/docs",
    redoc_url: str = "/redoc",
    title: str | None = None,
) -> bool:
    """Serve Swagger UI at `docs_url` and ReDoc at `redoc_url` with no CDN; False if no assets.

    Create the app with `docs_url=None, redoc_url=None` so FastAPI's CDN pages are not added.
    """
    static = assets_dir()
    if static is None or app.openapi_url is None:
        log.warning(
            "API docs disabled: the %s package (its static files) is missing", ASSETS_PACKAGE
        )
        return False
    page_title = title or app.title
    openapi_url = app.openapi_url
    oauth2_url = f"{docs_url}/oauth2-redirect"
    for name in ("swagger", "fastapi", "redoc"):
        if (static / name).is_dir():
            app.mount(
                f"{ASSETS_PREFIX}/{name}",
                StaticFiles(directory=static / name),
                name=f"docs-assets-{name}",
            )

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{page_title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PREFIX}/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PREFIX}/swagger/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PREFIX}/fastapi/favicon.png",
            oauth2_redirect_url=root + oauth2_url,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters={**SWAGGER_UI_PARAMETERS, **(app.swagger_ui_parameters or {})},
        )

    @app.get(oauth2_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    redoc_js = static / "redoc" / "redoc.standalone.js"
    if not redoc_js.is_file():
        return True

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{page_title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PREFIX}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PREFIX}/fastapi/favicon.png",
            with_google_fonts=False,
        )

    logo = static / "redoc" / "logo-mini.svg"
    if logo.is_file():
        # The packaged ReDoc bundle asks for its logo beside the page, not from its CDN.
        @app.get(f"{redoc_url}/logo-mini.svg", include_in_schema=False)
        async def redoc_logo() -> FileResponse:
            return FileResponse(logo, media_type="image/svg+xml")

    return True

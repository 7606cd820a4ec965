"""The map page at `/`: Leaflet (vendored, no CDN) over satapi's own XYZ tiles and API."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
ASSETS_PREFIX = "/viewer/assets"
# The page loads only its own files and talks only to this service (tiles included).
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def install_viewer(app: FastAPI, *, path: str = "/") -> None:
    """Serve the map page at `path` and its assets (Leaflet, the page's JS and CSS)."""
    page = (STATIC / "viewer" / "index.html").read_text(encoding="utf-8")
    app.mount(ASSETS_PREFIX, StaticFiles(directory=STATIC), name="viewer-assets")

    @app.get(path, include_in_schema=False)
    async def viewer() -> HTMLResponse:
        return HTMLResponse(
            page,
            headers={
                "Content-Security-Policy": CSP,
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
            },
        )

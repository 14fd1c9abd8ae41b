"""The web dashboard: ``GET /`` (the page) and ``GET /assets/<file>`` (its CSS, JS, icon).

The files ship inside the package (``corral/api/dashboard/``, package data): no CDN, no
build step.  They are read once, when the app is built, and served from memory; only
names found in that directory are served, so no path from a request ever reaches the
file system.  The page holds no data: it reads everything from the JSON API with the
token the user typed (kept in ``sessionStorage``), which is why the TCP listener lets
``/`` and ``/assets/`` through without one (:mod:`corral.api.auth`).
"""

from __future__ import annotations

from http import HTTPStatus
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

INDEX = "index.html"
_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".svg": "image/svg+xml", ".html": "text/html; charset=utf-8"}
# The page runs only its own script and talks only to its own origin; it may not be framed
# (its buttons stop services).
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def load_assets() -> dict[str, tuple[bytes, str]]:
    """Every file of the dashboard directory: ``{name: (content, content type)}``."""
    folder = resources.files("corral.api").joinpath("dashboard")
    assets = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in _TYPES:
            assets[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return assets


def dashboard_router() -> APIRouter:
    """Routes for the page and its assets (left out of the OpenAPI document: not API)."""
    router = APIRouter(include_in_schema=False)
    assets = load_assets()

    def serve(name: str) -> Response:
        found = assets.get(name)
        if found is None:
            return JSONResponse({"error": {"code": "not_found",
                                           "message": f"no dashboard asset named {name!r}"}},
                                status_code=HTTPStatus.NOT_FOUND)
        content, media_type = found
        return Response(content, media_type=media_type, headers=_HEADERS)

    @router.get("/")
    async def index() -> Response:
        return serve(INDEX)

    @router.get("/assets/{name}")
    async def asset(name: str) -> Response:
        return serve(name)

    return router

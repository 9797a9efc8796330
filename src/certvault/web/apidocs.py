"""The API documentation at /docs: Swagger UI from the installed ``fastapi-offline`` package,
served by certvault itself. Nothing is loaded from another host (a key-escrow server runs no
third-party JavaScript, and the page works offline), and no inline script runs: the page has the
console's kind of Content-Security-Policy. ReDoc is not offered (it needs inline styles)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from starlette.responses import HTMLResponse, Response

from certvault.web.security import apply_page_headers

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/static"
# Swagger UI draws its icons from data: URLs in its stylesheet, and fetches /openapi.json.
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_INIT = Path(__file__).parent / "docs_static" / "swagger-init.js"
_TYPES = {".js": "text/javascript", ".css": "text/css"}
# The files the page loads.
ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-init.js")

router = APIRouter(include_in_schema=False)


@cache
def asset(name: str) -> bytes:
    if name == "swagger-init.js":
        return _INIT.read_bytes()
    return (files("fastapi_offline") / "static" / name).read_bytes()


def docs_page(openapi_url: str, title: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} API</title>
<link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi="{openapi_url}"></div>
<script src="{ASSETS_PATH}/swagger-ui-bundle.js"></script>
<script src="{ASSETS_PATH}/swagger-init.js"></script>
</body>
</html>
"""


@router.get(DOCS_PATH)
def docs() -> Response:
    response = HTMLResponse(docs_page("/openapi.json", "certvault"))
    return apply_page_headers(response, DOCS_CONTENT_SECURITY_POLICY)


def _asset_route(name: str) -> None:
    def serve_asset() -> Response:
        response = Response(asset(name), media_type=_TYPES[Path(name).suffix])
        apply_page_headers(response, DOCS_CONTENT_SECURITY_POLICY)
        # The same bytes for every visitor until the package changes: caches may keep them.
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    router.add_api_route(f"{ASSETS_PATH}/{name}", serve_asset, methods=["GET"])


# One route per file, no path parameter: nothing but these three is served from here.
for _name in ASSETS:
    _asset_route(_name)

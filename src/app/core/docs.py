"""The documentation routes of SPEC §8: /docs (Swagger UI), /redoc, /openapi.json and the files the pages load.

The pages load Swagger UI and ReDoc from ``/docs/assets/…`` by default, so they work offline; the files come
from the locked ``drf-spectacular-sidecar`` wheel. ``DOCS_ASSETS=cdn`` switches to Litestar's CDN URLs.
Each page carries its own ``Content-Security-Policy``, allowing its one inline script by hash.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from importlib.metadata import Distribution, distribution
from pathlib import Path
from typing import Any

from litestar import MediaType, Request, Response, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import JsonRenderPlugin, RedocRenderPlugin, SwaggerRenderPlugin
from litestar.params import FromPath

from app.core.openapi import DocsAccess
from app.core.security_headers import CONTENT_SECURITY_POLICY
from app.core.settings import Settings

ASSETS_PATH = "/docs/assets"
# Never import the package: its __init__ imports Django, which is not installed (pyproject resolution).
SIDECAR = "drf-spectacular-sidecar"
_SIDECAR_STATIC = "drf_spectacular_sidecar/static/drf_spectacular_sidecar"
# The URLs carry the sidecar's version, so a long cache lifetime is safe across upgrades.
ASSET_CACHE = CacheControlHeader(public=True, max_age=7 * 24 * 3600)


@dataclass(frozen=True, slots=True)
class Asset:
    path: str  # inside the sidecar's static folder
    media_type: str
    # The one HTML file loads its script from its own folder; everything else is never rendered as a page.
    policy: str | None = None


# The allow-list: a name not in it is 404, so no request can reach any other file.
ASSETS = {
    "swagger-ui-bundle.js": Asset("swagger-ui-dist/swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui-standalone-preset.js": Asset("swagger-ui-dist/swagger-ui-standalone-preset.js", "text/javascript"),
    "swagger-ui.css": Asset("swagger-ui-dist/swagger-ui.css", "text/css"),
    "favicon-32x32.png": Asset("swagger-ui-dist/favicon-32x32.png", "image/png"),
    "oauth2-redirect.html": Asset(
        "swagger-ui-dist/oauth2-redirect.html",
        MediaType.HTML,
        policy="default-src 'none'; script-src 'self'; frame-ancestors 'none'",
    ),
    "oauth2-redirect.js": Asset("swagger-ui-dist/oauth2-redirect.js", "text/javascript"),
    "redoc.standalone.js": Asset("redoc/bundles/redoc.standalone.js", "text/javascript"),
}

# Swagger UI and ReDoc set inline styles, ReDoc runs a blob: worker; scripts only from the allowed sources.
_LOCAL_SOURCES = {
    "script-src": "'self'",
    "style-src": "'self' 'unsafe-inline'",
    "img-src": "'self' data:",
    "font-src": "'self' data:",
    "connect-src": "'self'",
    "worker-src": "blob:",
}
# The hosts of Litestar's default CDN URLs (scripts, styles, its favicon) and of ReDoc's Google Fonts.
_CDN_SOURCES = {
    **_LOCAL_SOURCES,
    "script-src": "'self' https://cdn.jsdelivr.net https://cdn.redoc.ly",
    "style-src": "'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com",
    "img-src": "'self' data: https://cdn.jsdelivr.net",
    "font-src": "'self' data: https://fonts.gstatic.com",
}
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\ssrc=)[^>]*>(.*?)</script>", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Page:
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> Response[bytes]:
        return Response(self.body, media_type=self.media_type, headers=self.headers)


def docs_router(access: DocsAccess) -> Router:
    # Both UIs embed the schema in the page, so they work wherever the page itself is allowed.
    pages: dict[str, Page] = {}
    files: dict[str, Page] = {}

    def page(path: str, request: Request[Any, Any, Any], settings: Settings) -> Response[bytes]:
        """The document never changes once the app is built: render the pages (and their hashes) once."""
        if not pages:  # DOCS_ASSETS comes from the injected settings: main builds this router from the gate alone
            pages.update(render_pages(request, settings.app.docs_assets))
        return pages[path].response()

    @get("/docs", include_in_schema=False, sync_to_thread=False)
    def swagger_ui(request: Request[Any, Any, Any], settings: NamedDependency[Settings]) -> Response[bytes]:
        return page("/docs", request, settings)

    @get("/redoc", include_in_schema=False, sync_to_thread=False)
    def redoc_ui(request: Request[Any, Any, Any], settings: NamedDependency[Settings]) -> Response[bytes]:
        return page("/redoc", request, settings)

    @get("/openapi.json", include_in_schema=False, sync_to_thread=False)
    def openapi_json(request: Request[Any, Any, Any], settings: NamedDependency[Settings]) -> Response[bytes]:
        return page("/openapi.json", request, settings)

    # Staging keeps the gate's `no-store`; elsewhere the versioned URLs may be cached for long.
    @get(
        f"{ASSETS_PATH}/{{name:str}}",
        include_in_schema=False,
        sync_to_thread=False,
        cache_control=access.cache_control or ASSET_CACHE,
    )
    def docs_asset(name: FromPath[str]) -> Response[bytes]:
        asset = ASSETS.get(name)
        if asset is None:
            raise NotFoundException
        if name not in files:  # one small blocking read per file for the app's life, not one per request
            files[name] = read_asset(asset)
        return files[name].response()

    return Router(
        "/",
        route_handlers=[swagger_ui, redoc_ui, openapi_json, docs_asset],
        guards=list(access.guards),
        opt=access.opt,
        cache_control=access.cache_control,
    )


def render_pages(request: Request[Any, Any, Any], assets: str) -> dict[str, Page]:
    schema = request.app.openapi_schema.to_schema()
    swagger, redoc = ui_plugins(assets)
    sources = _CDN_SOURCES if assets == "cdn" else _LOCAL_SOURCES
    return {
        "/docs": html_page(swagger.render(request, schema), sources),
        "/redoc": html_page(redoc.render(request, schema), sources),
        "/openapi.json": Page(JsonRenderPlugin().render(request, schema), MediaType.JSON),
    }


def ui_plugins(assets: str) -> tuple[SwaggerRenderPlugin, RedocRenderPlugin]:
    if assets == "cdn":
        return SwaggerRenderPlugin(), RedocRenderPlugin()
    version = f"?v={_sidecar().version}"

    def url(name: str) -> str:
        return f"{ASSETS_PATH}/{name}{version}"

    favicon = f"<link rel='icon' type='image/png' href='{url('favicon-32x32.png')}'>"
    swagger = SwaggerRenderPlugin(
        js_url=url("swagger-ui-bundle.js"),
        css_url=url("swagger-ui.css"),
        standalone_preset_js_url=url("swagger-ui-standalone-preset.js"),
        favicon=favicon,
    )
    redoc = RedocRenderPlugin(js_url=url("redoc.standalone.js"), google_fonts=False, favicon=favicon)
    return swagger, redoc


def html_page(body: bytes, sources: dict[str, str]) -> Page:
    """The page and a policy that allows exactly its inline script(s), by hash rather than 'unsafe-inline'."""
    hashes = "".join(f" 'sha256-{script_hash(script)}'" for script in _INLINE_SCRIPT.findall(body))
    directives = {**sources, "script-src": sources["script-src"] + hashes}
    policy = "; ".join(
        [
            "default-src 'none'",
            *(f"{name} {value}" for name, value in directives.items()),
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )
    return Page(body, MediaType.HTML, {CONTENT_SECURITY_POLICY: policy})


def script_hash(script: bytes) -> str:
    return base64.b64encode(hashlib.sha256(script).digest()).decode()


def read_asset(asset: Asset) -> Page:
    body = Path(str(_sidecar().locate_file(f"{_SIDECAR_STATIC}/{asset.path}"))).read_bytes()
    return Page(body, asset.media_type, {CONTENT_SECURITY_POLICY: asset.policy} if asset.policy else {})


def _sidecar() -> Distribution:
    return distribution(SIDECAR)

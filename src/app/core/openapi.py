"""API documentation at /docs, /redoc and /openapi.json, gated by environment (SPEC §8)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from litestar import MediaType, Request, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, Contact, License
from litestar.types import Guard

from app.core.guards import requires_superuser
from app.core.settings import Settings


@dataclass(frozen=True, slots=True)
class DocsAccess:
    """Who may read the docs: everyone (local) or superusers (staging); production has no docs at all."""

    guards: Sequence[Guard]
    opt: dict[str, Any]
    cache_control: CacheControlHeader | None


def docs_gate(settings: Settings) -> DocsAccess | None:
    if settings.is_production:
        return None
    if settings.app.environment == "staging":
        # SPEC §8: a superuser's bearer token; every docs response is `no-store`.
        return DocsAccess(guards=[requires_superuser], opt={}, cache_control=CacheControlHeader(no_store=True))
    return DocsAccess(guards=[], opt={"exclude_from_auth": True}, cache_control=None)


def docs_router(access: DocsAccess) -> Router:
    # Both UIs embed the schema in the page, so they work wherever the page itself is allowed.
    swagger = SwaggerRenderPlugin()
    redoc = RedocRenderPlugin()
    json = JsonRenderPlugin()
    rendered: dict[str, Any] = {}

    def _schema(request: Request[Any, Any, Any]) -> dict[str, Any]:
        """The document never changes once the app is built: render it on first use only."""
        if not rendered:
            rendered.update(request.app.openapi_schema.to_schema())
        return rendered

    @get("/docs", media_type=MediaType.HTML, include_in_schema=False, sync_to_thread=False)
    def swagger_ui(request: Request[Any, Any, Any]) -> bytes:
        return swagger.render(request, _schema(request))

    @get("/redoc", media_type=MediaType.HTML, include_in_schema=False, sync_to_thread=False)
    def redoc_ui(request: Request[Any, Any, Any]) -> bytes:
        return redoc.render(request, _schema(request))

    @get("/openapi.json", media_type=MediaType.JSON, include_in_schema=False, sync_to_thread=False)
    def openapi_json(request: Request[Any, Any, Any]) -> bytes:
        return json.render(request, _schema(request))

    return Router(
        "/",
        route_handlers=[swagger_ui, redoc_ui, openapi_json],
        guards=list(access.guards),
        opt=access.opt,
        cache_control=access.cache_control,
    )


def openapi_config(settings: Settings, access: DocsAccess | None, *, components: Components) -> OpenAPIConfig | None:
    """``None`` in production: no schema and no docs routes at all, so they answer 404."""
    if access is None:
        return None
    app = settings.app
    return OpenAPIConfig(
        title=app.name,
        version=app.version,
        description=app.description,
        contact=Contact(name=app.contact_name, email=app.contact_email)
        if app.contact_name or app.contact_email
        else None,
        license=License(name=app.license_name) if app.license_name else None,
        components=components,
        use_handler_docstrings=True,
        # Litestar's own /schema routes (allowed by SPEC §8) follow the same gate as /docs.
        openapi_router=Router(
            "/schema",
            route_handlers=[],
            guards=list(access.guards),
            opt=access.opt,
            cache_control=access.cache_control,
        ),
        render_plugins=[JsonRenderPlugin(), SwaggerRenderPlugin(), RedocRenderPlugin()],
    )

"""API documentation at /docs, /redoc and /openapi.json, gated by environment (SPEC §8)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from litestar import MediaType, Request, Router, get
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, Contact, License, SecurityRequirement
from litestar.types import Guard

from app.core.settings import Settings

DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")


def _schema(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return request.app.openapi_schema.to_schema()


def docs_router(guards: Sequence[Guard], opt: dict[str, Any]) -> Router:
    # Both UIs embed the schema in the page, so they work wherever the page itself is allowed.
    swagger = SwaggerRenderPlugin()
    redoc = RedocRenderPlugin()
    json = JsonRenderPlugin()

    @get("/docs", media_type=MediaType.HTML, include_in_schema=False, sync_to_thread=False)
    def swagger_ui(request: Request[Any, Any, Any]) -> bytes:
        return swagger.render(request, _schema(request))

    @get("/redoc", media_type=MediaType.HTML, include_in_schema=False, sync_to_thread=False)
    def redoc_ui(request: Request[Any, Any, Any]) -> bytes:
        return redoc.render(request, _schema(request))

    @get("/openapi.json", media_type=MediaType.JSON, include_in_schema=False, sync_to_thread=False)
    def openapi_json(request: Request[Any, Any, Any]) -> bytes:
        return json.render(request, _schema(request))

    return Router("/", route_handlers=[swagger_ui, redoc_ui, openapi_json], guards=list(guards), opt=opt)


def openapi_config(
    settings: Settings,
    *,
    guards: Sequence[Guard] = (),
    opt: dict[str, Any] | None = None,
    components: Components | None = None,
    security: list[SecurityRequirement] | None = None,
) -> OpenAPIConfig | None:
    """``None`` in production: no schema and no docs routes at all, so they answer 404."""
    if settings.is_production:
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
        components=components or Components(),
        security=security,
        use_handler_docstrings=True,
        # Litestar's own /schema routes (allowed by SPEC §8) follow the same gate as /docs.
        openapi_router=Router("/schema", route_handlers=[], guards=list(guards), opt=opt or {}),
        render_plugins=[JsonRenderPlugin(), SwaggerRenderPlugin(), RedocRenderPlugin()],
    )

"""The application factory. ``create_app()`` reads top to bottom: settings → database → plugins → routes → hooks."""

from __future__ import annotations

import sys
from functools import cache
from typing import Any

import structlog
from advanced_alchemy.extensions.litestar import SQLAlchemyPlugin
from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar_granian import GranianPlugin

from app.cli import FirstRunCLIPlugin
from app.core.client_cache import client_cache_headers
from app.core.db import build_alchemy_config
from app.core.embedded import embedded_lifespan
from app.core.errors import exception_to_response
from app.core.logging import AccessLog, configure_logging
from app.core.openapi import docs_router, openapi_config
from app.core.settings import Settings, SettingsError
from app.system.controllers import SystemController

logger = structlog.get_logger("app")

# Bodies larger than this are refused with 413 before they are read into memory.
REQUEST_MAX_BODY_SIZE = 1024 * 1024


def load_settings() -> Settings:
    """Settings, or one clear line naming the bad variable and exit status 1 (SPEC §9.1)."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)  # noqa: T201 - logging is not configured yet
        raise SystemExit(1) from None


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()
    configure_logging(settings)
    alchemy = build_alchemy_config(settings)

    api_v1 = Router("/api/v1", route_handlers=[SystemController])
    route_handlers: list[Any] = [api_v1]
    if not settings.is_production:
        route_handlers.append(docs_router(guards=[], opt={}))

    app = Litestar(
        route_handlers=route_handlers,
        plugins=[SQLAlchemyPlugin(config=alchemy), GranianPlugin(), FirstRunCLIPlugin()],
        state=State({"settings": settings, "alchemy": alchemy}),
        dependencies={"settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False)},
        lifespan=[embedded_lifespan] if settings.embedded else [],
        exception_handlers={Exception: exception_to_response},
        before_send=[client_cache_headers(settings.app.client_cache_max_age)],
        openapi_config=openapi_config(settings),
        request_max_body_size=REQUEST_MAX_BODY_SIZE,
        logging_config=None,
        debug=False,
    )
    app.asgi_handler = AccessLog(app.asgi_handler)
    return app


@cache
def _default_app() -> Litestar:
    return create_app()


def __getattr__(name: str) -> Any:
    """``app.main:app`` is built on first access, never as a side effect of importing this module."""
    if name == "app":
        return _default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

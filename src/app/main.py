"""The application factory. ``create_app()`` reads top to bottom: settings → database → plugins → routes → hooks."""

from __future__ import annotations

from functools import cache
from typing import Any

from advanced_alchemy.extensions.litestar import SQLAlchemyPlugin
from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar_granian import GranianPlugin

from app.auth.controllers import AuthController
from app.auth.services import request_user_loader
from app.cli import FirstRunCLIPlugin
from app.core.client_cache import client_cache_headers
from app.core.db import build_alchemy_config
from app.core.embedded import embedded_lifespan
from app.core.errors import exception_to_response
from app.core.keys import load_signing_keys
from app.core.logging import AccessLog, configure_logging
from app.core.openapi import docs_gate, docs_router, openapi_config
from app.core.security import OPENAPI_COMPONENTS, TokenCodec, build_jwt_auth
from app.core.settings import Settings, SettingsError, exit_with, load_settings
from app.system.controllers import SystemController
from app.users.controllers import UserController

# Bodies larger than this are refused with 413 before they are read into memory.
REQUEST_MAX_BODY_SIZE = 1024 * 1024


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()
    configure_logging(settings)
    alchemy = build_alchemy_config(settings)
    codec = TokenCodec(settings.jwt, load_signing_keys(settings.jwt))
    auth = build_jwt_auth(codec, request_user_loader(alchemy))

    api_v1 = Router("/api/v1", route_handlers=[SystemController, AuthController, UserController])
    api_auth = Router("/api/auth", route_handlers=[AuthController])
    route_handlers: list[Any] = [api_v1, api_auth]
    docs_access = docs_gate(settings)
    if docs_access is not None:
        route_handlers.append(docs_router(docs_access))

    app = Litestar(
        route_handlers=route_handlers,
        plugins=[SQLAlchemyPlugin(config=alchemy), GranianPlugin(), FirstRunCLIPlugin()],
        middleware=[auth.middleware],
        state=State({"settings": settings, "alchemy": alchemy}),
        dependencies={
            "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
            "token_codec": Provide(lambda: codec, use_cache=True, sync_to_thread=False),
        },
        lifespan=[embedded_lifespan] if settings.embedded else [],
        exception_handlers={Exception: exception_to_response},
        before_send=[client_cache_headers(settings.app.client_cache_max_age)],
        openapi_config=openapi_config(settings, docs_access, components=OPENAPI_COMPONENTS),
        request_max_body_size=REQUEST_MAX_BODY_SIZE,
        logging_config=None,
        debug=False,
    )
    app.asgi_handler = AccessLog(app.asgi_handler)
    return app


@cache
def _default_app() -> Litestar:
    try:
        return create_app()
    except SettingsError as exc:  # e.g. a JWT key that cannot be read: one line, no traceback
        exit_with(exc)


def __getattr__(name: str) -> Any:
    """``app.main:app`` is built on first access, never as a side effect of importing this module."""
    if name == "app":
        return _default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The application factory, ``app.main:create_app``, loaded as a factory by Granian and the Litestar CLI.

``create_app()`` reads top to bottom like a table of contents: settings → database → auth → routes → app.
Each concern has one builder; a new one (a Redis store, the rate limiter, the response cache, the queue)
is one more builder and one more line here. Clients are built in the factory or a lifespan, never at import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.plugins import CLIPluginProtocol
from litestar.security.jwt import JWTAuth
from litestar_saq import SAQPlugin

from app.auth.controllers import AuthController
from app.auth.jobs import purge_expired_tokens
from app.auth.services import request_user_loader
from app.auth.throttle import LOGIN_THROTTLE, LoginThrottle
from app.core.cache import ResponseCache
from app.core.client_cache import client_cache_headers
from app.core.cors import build_cors_config
from app.core.db import AlchemyConfig, DatabasePlugin, build_alchemy_config
from app.core.docs import docs_router
from app.core.embedded import embedded_lifespan
from app.core.errors import AppRequest, exception_to_response
from app.core.keys import load_signing_keys
from app.core.logging import AccessLog, configure_logging, flush_access_log, log_startup
from app.core.metrics import build_metrics
from app.core.openapi import StrictStructSchemaPlugin, docs_gate, openapi_config
from app.core.queue import HOURLY, add_queue_dashboard, build_queue_plugin, cron_job, queue_lifespan
from app.core.rate_limit import RATE_LIMITER, RateLimiter, build_rate_limiter, rate_limit_headers
from app.core.schemas import provide_pagination
from app.core.security import OPENAPI_COMPONENTS, AppToken, TokenCodec, build_jwt_auth
from app.core.security_headers import add_security_headers
from app.core.settings import Settings, SettingsError, exit_with, load_settings
from app.posts.controllers import PostController
from app.system.controllers import SystemController, redirect_to_docs
from app.tasks.controllers import TaskController
from app.tasks.jobs import count_users, sample_background_task
from app.tiers.controllers import RateLimitController, TierController
from app.tiers.services import request_rules_loader
from app.users.controllers import UserController

if TYPE_CHECKING:
    from click import Group

# Bodies larger than this are refused with 413 before they are read into memory.
REQUEST_MAX_BODY_SIZE = 1024 * 1024


def create_app(settings: Settings | None = None, *, announce: bool = True) -> Litestar:
    """Build the app; without ``settings`` (Granian, the CLI) a configuration error is one line and exit 1.

    ``announce=False``: the launcher logs the startup line itself, once for all workers (``python -m app``).
    """
    if settings is not None:
        return _build(settings, announce=announce)
    settings = load_settings()
    try:
        return _build(settings, announce=announce)
    except SettingsError as exc:  # e.g. a JWT key that cannot be read: one line, no traceback
        exit_with(exc)


def _build(settings: Settings, *, announce: bool) -> Litestar:
    configure_logging(settings)
    response_cache = ResponseCache(settings)
    database = build_alchemy_config(settings)
    codec = TokenCodec(settings.jwt, load_signing_keys(settings.jwt))
    auth = build_auth(codec, database)
    limiter = build_limiter(settings, codec, database)
    queue = build_queue(settings)
    metrics = build_metrics(settings, database.get_engine())  # GET /metrics, request and pool metrics

    app = Litestar(
        route_handlers=build_routes(settings),
        plugins=[
            # Writes invalidate the response cache once their transaction committed (SPEC §6.1).
            DatabasePlugin(database, after_commit=response_cache.after_commit),
            queue,
            metrics,
            CommandLinePlugin(),
            StrictStructSchemaPlugin(),
        ],
        middleware=[auth.middleware],
        state=State(
            {"settings": settings, "alchemy": database, RATE_LIMITER: limiter, LOGIN_THROTTLE: LoginThrottle(settings)}
        ),
        dependencies={
            "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
            "token_codec": Provide(lambda: codec, use_cache=True, sync_to_thread=False),
            "pagination": Provide(provide_pagination, sync_to_thread=False),
        },
        stores=response_cache.stores,
        response_cache_config=response_cache.config,
        lifespan=[
            *([embedded_lifespan] if settings.embedded else []),
            limiter.counter.lifespan,
            response_cache.lifespan,
            queue_lifespan,
        ],
        on_startup=build_startup_hooks(settings, announce=announce),
        on_shutdown=[flush_access_log],
        request_class=AppRequest,
        exception_handlers={Exception: exception_to_response},
        before_send=[
            client_cache_headers(settings.app.client_cache_max_age),
            add_security_headers,
            rate_limit_headers,
        ],
        openapi_config=openapi_config(settings, docs_gate(settings), components=OPENAPI_COMPONENTS),
        request_max_body_size=REQUEST_MAX_BODY_SIZE,
        cors_config=build_cors_config(settings),  # None (off) unless CORS_ALLOW_ORIGINS lists origins
        logging_config=None,
        debug=False,
    )
    add_queue_dashboard(app, docs_gate(settings))  # /saq, gated like the docs
    # Outermost, so unknown routes (404/405) are logged too.
    app.asgi_handler = AccessLog(app.asgi_handler)
    return app


def build_auth(codec: TokenCodec, database: AlchemyConfig) -> JWTAuth[Any, AppToken]:
    return build_jwt_auth(codec, request_user_loader(database))


def build_limiter(settings: Settings, codec: TokenCodec, database: AlchemyConfig) -> RateLimiter:
    """The ``rate_limit`` guard's limiter: the same user check as authentication, and the tiers' rules on demand."""
    return build_rate_limiter(settings, codec, request_user_loader(database), request_rules_loader(database))


def build_queue(settings: Settings) -> SAQPlugin:
    """SAQ (SPEC §10): the jobs a worker runs, and the hourly purge of the token blacklist."""
    return build_queue_plugin(
        settings,
        jobs=[sample_background_task, count_users],
        cron_jobs=[cron_job(purge_expired_tokens, HOURLY)],
    )


def build_routes(settings: Settings) -> list[Any]:
    """Every route of the API: the features under /api/v1, the auth routes again under /api/auth, the docs.

    In ``local`` the server's root redirects to the docs; elsewhere ``/`` is a 404 like any unknown path.
    """
    api_v1 = Router(
        "/api/v1",
        route_handlers=[
            SystemController,
            AuthController,
            UserController,
            TierController,
            RateLimitController,
            PostController,
            TaskController,
        ],
    )
    api_auth = Router("/api/auth", route_handlers=[AuthController])
    routes: list[Any] = [api_v1, api_auth]
    docs_access = docs_gate(settings)
    if docs_access is not None:
        routes.append(docs_router(docs_access))
    if settings.app.environment == "local":
        routes.append(redirect_to_docs)
    return routes


def build_startup_hooks(settings: Settings, *, announce: bool) -> list[Callable[[], None]]:
    """The line that says what runs (mode, database, docs), when no launcher logged it already."""
    return [lambda: log_startup(settings)] if announce else []


class CommandLinePlugin(CLIPluginProtocol):
    """The project's ``litestar`` commands (``app.cli``): ``database`` (migrations), Granian's ``run``, ``users`` and
    ``tiers``; ``workers`` comes from the SAQ plugin.

    Only the Litestar CLI calls ``on_cli_init``, so a server worker never imports them nor what they need (click,
    rich, Alembic): ~10 MiB and ~250 ms less per Granian worker.
    """

    def on_cli_init(self, cli: Group) -> None:
        from app.cli import add_commands  # noqa: PLC0415 - see the docstring

        add_commands(cli)

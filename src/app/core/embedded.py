"""Embedded mode (SPEC §9.3): SQLite instead of PostgreSQL and no Redis, so the API runs with only Python."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from alembic import command
from alembic.config import Config
from anyio import to_thread
from litestar import Litestar

from app.core.db import ALEMBIC_INI, MIGRATIONS_DIR
from app.core.settings import Settings

logger = structlog.get_logger("app")


def migrate_to_head(database_url: str) -> None:
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    # Alembic's env.py runs its own event loop, so it runs in a worker thread here.
    command.upgrade(config, "head")


@asynccontextmanager
async def embedded_lifespan(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    await to_thread.run_sync(migrate_to_head, settings.database_url)
    logger.warning(
        "Running in embedded mode: SQLite database at %s (one process only, no PostgreSQL or Redis). "
        "To use PostgreSQL and Redis, copy src/.env.example to src/.env and edit it.",
        settings.db.embedded_path,
    )
    yield

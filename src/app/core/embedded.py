"""Embedded mode (SPEC §9.3): SQLite instead of PostgreSQL and no Redis, so the API runs with only Python.

Its one WARNING line (embedded mode, the SQLite file, how to switch) is the startup line of
``app.core.logging.log_startup``, so the user reads what runs once, not twice.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from litestar import Litestar

from app.core.db import ALEMBIC_INI, MIGRATIONS_DIR
from app.core.settings import Settings


def migrate_to_head(database_url: str) -> None:
    # Imported here: the app imports this module in every mode, and only embedded mode migrates at startup.
    from alembic import command  # noqa: PLC0415
    from alembic.config import Config  # noqa: PLC0415

    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    # Alembic's env.py runs its own event loop, so it runs in a worker thread here.
    command.upgrade(config, "head")


def _migrate_quietly(database_url: str) -> None:
    # Alembic narrates every run at INFO ("Context impl SQLiteImpl.", "Will assume non-transactional DDL.") and
    # this runs on every start and every reload; warnings and errors still show.
    alembic_logger = logging.getLogger("alembic")
    level = alembic_logger.level
    alembic_logger.setLevel(logging.WARNING)
    try:
        migrate_to_head(database_url)
    finally:
        alembic_logger.setLevel(level)


@asynccontextmanager
async def embedded_lifespan(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    await to_thread.run_sync(_migrate_quietly, settings.database_url)
    yield

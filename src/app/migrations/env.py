"""Alembic environment shared by `alembic …` and `litestar database …`.

`litestar database` hands over the application's engine (``config.engine``); plain `alembic` builds one
from the same settings, so both commands always target the database the app would use.
"""

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.core.settings import Settings
from app.models import metadata

config = context.config


def _database_url() -> str:
    url: str | None = getattr(config, "db_url", None) or config.attributes.get("database_url")
    return url or Settings.from_env().database_url


def _configure(**kwargs: Any) -> None:
    sqlite = _database_url().startswith("sqlite")
    context.configure(
        target_metadata=metadata,
        # SQLite reflects UUID columns as NUMERIC, which would show up as a type change on every autogenerate.
        compare_type=not sqlite,
        version_table="alembic_version",
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=sqlite,
        # Render advanced-alchemy types with their real import path (e.g. DateTimeUTC).
        user_module_prefix=None,
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=_database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    engine: AsyncEngine = getattr(config, "engine", None) or create_async_engine(
        _database_url(), poolclass=pool.NullPool
    )
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())

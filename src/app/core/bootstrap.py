"""First-run set-up in one process, ``python -m app.core.bootstrap`` (run by ``task bootstrap`` and ``task dev``).

Steps, each skipped when it has nothing to do so that a restart costs one process and a few queries:

1. PostgreSQL reachable and the database present — created when missing, in development only;
2. JWT keys: a pair generated when both files are absent, else checked (app.core.keys);
3. migrations to Alembic head, only when the database is not there yet;
4. the first superuser and tier (the code of ``litestar users create-superuser`` / ``litestar tiers create``).

Any failure is one line on stderr and exit status 1, never a traceback, never the password.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import sys
from collections.abc import Awaitable
from time import perf_counter
from typing import NoReturn

import asyncpg
import structlog
from advanced_alchemy.config.asyncio import SQLAlchemyAsyncConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from app.cli import SUPERUSER_ERROR, TIER_ERROR, ensure_superuser, ensure_tier
from app.core.db import MIGRATIONS_DIR, build_alchemy_config
from app.core.embedded import migrate_to_head
from app.core.keys import ensure_key_pair
from app.core.logging import configure_logging
from app.core.settings import DatabaseSettings, Settings, SettingsError, exit_with, load_settings

logger = structlog.get_logger("app.bootstrap")

NOT_READY = "Database not ready"
# Where CREATE DATABASE is issued from: it cannot run inside the database it creates.
MAINTENANCE_DATABASE = "postgres"
_SERVER_HINT = "is PostgreSQL running? Check POSTGRES_SERVER and POSTGRES_PORT"


class BootstrapError(Exception):
    """A step cannot proceed; the message is the single line the user sees."""


def main() -> None:
    started = perf_counter()
    settings = load_settings()
    configure_logging(settings)
    try:
        done, unchanged = asyncio.run(bootstrap(settings))
    except SettingsError as exc:
        exit_with(exc)
    except BootstrapError as exc:
        _fail(str(exc))
    elapsed = f"{perf_counter() - started:.1f} s"
    if done:
        logger.info(f"Bootstrap done in {elapsed}: {'; '.join(done)} (unchanged: {'; '.join(unchanged) or '-'}).")  # noqa: G004
    else:
        logger.info(f"Bootstrap: nothing to do ({'; '.join(unchanged)}), checked in {elapsed}.")  # noqa: G004


async def bootstrap(settings: Settings) -> tuple[list[str], list[str]]:
    """Run every step; return what was done and what was already in place, one phrase each."""
    done: list[str] = []
    unchanged: list[str] = []

    def record(changed: bool, phrase: str) -> None:
        (done if changed else unchanged).append(phrase)

    if not settings.embedded:
        # Before anything else, so a server that is down is the only line of output.
        record(*await ensure_database(settings.db, may_create=settings.app.environment == "local"))
    record(*ensure_key_pair(settings.jwt))
    alchemy = build_alchemy_config(settings)
    try:
        record(*await migrate(alchemy, settings.database_url))
        record(*await _first_run_step(SUPERUSER_ERROR, ensure_superuser(alchemy, settings.first_run)))
        record(*await _first_run_step(TIER_ERROR, ensure_tier(alchemy, settings.first_run.tier_name)))
    finally:
        await alchemy.get_engine().dispose()
    return done, unchanged


async def ensure_database(db: DatabaseSettings, *, may_create: bool) -> tuple[bool, str]:
    """Connect to the target database; create it when it is missing and ``may_create`` (development only)."""
    try:
        connection = await _connect(db, db.name)
    except asyncpg.InvalidCatalogNameError:
        if not may_create:
            raise BootstrapError(
                f"{NOT_READY}: {_missing(db)} and is only created automatically with ENVIRONMENT=local; "
                f"create it: {_createdb(db)}"
            ) from None
        await _create_database(db)
        logger.info(f"Created database {_quote_ident(db.name)} on {db.server}:{db.port}.")  # noqa: G004
        return True, f"created database {_quote_ident(db.name)}"
    await connection.close()
    return False, f"database {_quote_ident(db.name)} reachable"


async def _create_database(db: DatabaseSettings) -> None:
    connection = await _connect(db, MAINTENANCE_DATABASE)
    try:
        await connection.execute(f"CREATE DATABASE {_quote_ident(db.name)}")
    except asyncpg.DuplicateDatabaseError:
        pass  # created by a concurrent bootstrap in the meantime: the goal is reached
    except asyncpg.PostgresError as exc:
        raise BootstrapError(
            f"{NOT_READY}: {_missing(db)} and could not be created ({_reason(exc)}); "
            f"create it as a user allowed to: {_createdb(db)}"
        ) from None
    finally:
        await connection.close()


async def _connect(db: DatabaseSettings, database: str) -> asyncpg.Connection:
    """One connection, bounded by DB__CONNECT_TIMEOUT; every failure but a missing database becomes one line."""
    where = f"{db.server}:{db.port}"
    try:
        return await asyncpg.connect(
            host=db.server,
            port=db.port,
            user=db.user,
            password=db.password,
            database=database,
            timeout=db.connect_timeout,
        )
    except asyncpg.InvalidCatalogNameError:
        if database == MAINTENANCE_DATABASE:
            raise BootstrapError(
                f"{NOT_READY}: {_missing(db)} and the maintenance database {MAINTENANCE_DATABASE!r} to create it from "
                f"is missing too; create it: {_createdb(db)}"
            ) from None
        raise
    except TimeoutError:
        raise BootstrapError(
            f"{NOT_READY}: PostgreSQL at {where} did not answer within {db.connect_timeout} s "
            f"(DB__CONNECT_TIMEOUT); {_SERVER_HINT}"
        ) from None
    except OSError as exc:
        raise BootstrapError(
            f"{NOT_READY}: cannot reach PostgreSQL at {where} ({_reason(exc)}); {_SERVER_HINT}"
        ) from None
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise BootstrapError(
            f"{NOT_READY}: PostgreSQL at {where} refused user {db.user!r} ({_reason(exc)}); "
            "check POSTGRES_USER and POSTGRES_PASSWORD"
        ) from None
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise BootstrapError(f"{NOT_READY}: PostgreSQL at {where} refused the connection ({_reason(exc)})") from None


async def migrate(alchemy: SQLAlchemyAsyncConfig, database_url: str) -> tuple[bool, str]:
    """Upgrade to head unless the database is there already (one query, no Alembic environment run)."""
    heads = set(ScriptDirectory(str(MIGRATIONS_DIR)).get_heads())
    try:
        async with alchemy.get_engine().connect() as connection:
            current = await connection.run_sync(_current_heads)
        if current == heads:
            return False, f"schema at head {', '.join(sorted(heads))}"
        # Alembic's env.py runs its own event loop, so it runs in a worker thread.
        await asyncio.to_thread(migrate_to_head, database_url)
    except Exception as exc:  # noqa: BLE001 - one line; `task migrate` shows Alembic's full report
        raise BootstrapError(f"Migration failed ({_reason(exc)}); run `task migrate` for the full error") from None
    return True, f"migrated to {', '.join(sorted(heads))}"


def _current_heads(connection: Connection) -> set[str]:
    # Alembic logs its dialect on every configure: on a restart with nothing to do that would be the only noise.
    alembic_logger = logging.getLogger("alembic.runtime.migration")
    level = alembic_logger.level
    alembic_logger.setLevel(logging.WARNING)
    try:
        return set(MigrationContext.configure(connection).get_current_heads())
    finally:
        alembic_logger.setLevel(level)


async def _first_run_step(error_prefix: str, step: Awaitable[tuple[bool, str]]) -> tuple[bool, str]:
    try:
        changed, line = await step
    except Exception as exc:  # noqa: BLE001 - the same one line as the CLI command (SPEC §12.2)
        raise BootstrapError(f"{error_prefix}: {exc}") from None
    if changed:
        logger.info(line)
    return changed, line.rstrip(".")


def _missing(db: DatabaseSettings) -> str:
    return f"database {_quote_ident(db.name)} does not exist on {db.server}:{db.port}"


def _createdb(db: DatabaseSettings) -> str:
    return shlex.join(["createdb", "-h", db.server, "-p", str(db.port), "-U", db.user, db.name])


def _quote_ident(name: str) -> str:
    """A PostgreSQL identifier in double quotes, inner quotes doubled: any database name, no injection."""
    return '"' + name.replace('"', '""') + '"'


def _reason(exc: BaseException) -> str:
    """The error's class and the first line of its message: the output stays one line."""
    lines = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {lines[0]}" if lines else exc.__class__.__name__


def _fail(line: str) -> NoReturn:
    print(line, file=sys.stderr)  # noqa: T201 - one plain line, like a configuration error
    raise SystemExit(1) from None


if __name__ == "__main__":
    main()

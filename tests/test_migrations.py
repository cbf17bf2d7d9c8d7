from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import asyncpg
import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from litestar.testing import AsyncTestClient
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.core.settings import Settings
from app.main import create_app
from app.models import metadata
from tests.conftest import StartServer

pytestmark = pytest.mark.anyio

BIN = Path(sys.executable).parent
ALEMBIC_UPGRADE = [str(BIN / "alembic"), "upgrade", "head"]
LITESTAR_UPGRADE = [str(BIN / "litestar"), "--app", "app.main:create_app", "database", "upgrade", "--no-prompt"]
EXPECTED_TABLES = {"tier", "rate_limit", "user", "post", "token_blacklist", "alembic_version"}


async def test_migrated_schema_equals_the_models(settings: Settings) -> None:
    engine = create_async_engine(settings.database_url, poolclass=NullPool)
    async with engine.connect() as connection:
        diff = await connection.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), metadata)
        )
    await engine.dispose()
    assert diff == []


async def test_schema_has_the_spec_constraints(settings: Settings) -> None:
    engine = create_async_engine(settings.database_url, poolclass=NullPool)

    def describe(sync: object) -> dict[str, object]:
        inspector = inspect(sync)
        return {
            "tables": set(inspector.get_table_names()),
            "rate_limit_fk": inspector.get_foreign_keys("rate_limit"),
            "user_fk": inspector.get_foreign_keys("user"),
            "post_fk": inspector.get_foreign_keys("post"),
            "rate_limit_unique": {tuple(c["column_names"]) for c in inspector.get_unique_constraints("rate_limit")},
            "user_indexes": {tuple(i["column_names"]): i["unique"] for i in inspector.get_indexes("user")},
        }

    async with engine.connect() as connection:
        schema = await connection.run_sync(describe)
    await engine.dispose()
    assert schema["tables"] == EXPECTED_TABLES
    assert [fk["options"].get("ondelete") for fk in schema["rate_limit_fk"]] == ["CASCADE"]
    assert [fk["options"].get("ondelete") for fk in schema["user_fk"]] == ["SET NULL"]
    assert [fk["options"].get("ondelete") for fk in schema["post_fk"]] == ["CASCADE"]
    assert {("name",), ("tier_id", "path")} <= schema["rate_limit_unique"]
    assert schema["user_indexes"][("username",)] is True
    assert schema["user_indexes"][("email",)] is True
    assert schema["user_indexes"][("is_deleted",)] is False


def _run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed arguments
        command, env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _tables(url: str) -> set[str]:
    async def read() -> set[str]:
        engine = create_async_engine(url, poolclass=NullPool)
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        await engine.dispose()
        return names

    return asyncio.run(read())


@pytest.mark.parametrize("command", [ALEMBIC_UPGRADE, LITESTAR_UPGRADE], ids=["alembic", "litestar"])
def test_upgrade_builds_the_schema_on_empty_databases(
    command: list[str], test_env: dict[str, str], project_root: Path, tmp_path: Path
) -> None:
    database = f"test_migrate_{uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(
            host=test_env["POSTGRES_SERVER"],
            port=int(test_env["POSTGRES_PORT"]),
            user="postgres",
            database="postgres",
        )
        await connection.execute(statement)
        await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{database}"'))
    try:
        postgres_env = {**test_env, "POSTGRES_DB": database}
        result = _run(command, postgres_env, project_root)
        assert result.returncode == 0, result.stderr
        assert _tables(Settings.from_env(postgres_env, env_file=None).database_url) == EXPECTED_TABLES

        downgrade = _run([str(BIN / "alembic"), "downgrade", "base"], postgres_env, project_root)
        assert downgrade.returncode == 0, downgrade.stderr
        assert _tables(Settings.from_env(postgres_env, env_file=None).database_url) == {"alembic_version"}
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


@pytest.mark.parametrize("command", [ALEMBIC_UPGRADE, LITESTAR_UPGRADE], ids=["alembic", "litestar"])
def test_the_same_revision_builds_the_schema_on_sqlite(
    command: list[str], test_env: dict[str, str], project_root: Path, tmp_path: Path
) -> None:
    sqlite_file = tmp_path / "schema.sqlite3"
    env = {**test_env, "EMBEDDED": "true", "EMBEDDED_DATABASE_PATH": str(sqlite_file)}
    result = _run(command, env, project_root)
    assert result.returncode == 0, result.stderr
    assert _tables(f"sqlite+aiosqlite:///{sqlite_file}") == EXPECTED_TABLES


async def test_create_tables_on_start_builds_a_missing_schema(settings_with: Callable[..., Settings]) -> None:
    database = f"test_create_all_{uuid4().hex[:12]}"
    settings = settings_with(POSTGRES_DB=database, DB__CREATE_TABLES_ON_START="true")
    connection = await asyncpg.connect(
        host=settings.db.server, port=settings.db.port, user=settings.db.user, database="postgres"
    )
    await connection.execute(f'CREATE DATABASE "{database}"')
    try:
        async with AsyncTestClient(create_app(settings)) as client:
            assert (await client.get("/api/v1/users")).status_code == 200
        engine = create_async_engine(settings.database_url, poolclass=NullPool)
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        await engine.dispose()
        assert tables == EXPECTED_TABLES - {"alembic_version"}
    finally:
        await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await connection.close()


async def test_workers_starting_together_create_the_tables_once(settings: Settings, start_server: StartServer) -> None:
    """Two Granian workers run DB__CREATE_TABLES_ON_START at the same moment on an empty database."""
    database = f"test_workers_{uuid4().hex[:12]}"
    connection = await asyncpg.connect(
        host=settings.db.server, port=settings.db.port, user=settings.db.user, database="postgres"
    )
    await connection.execute(f'CREATE DATABASE "{database}"')
    try:
        server = start_server(workers=2, POSTGRES_DB=database, DB__CREATE_TABLES_ON_START="true")
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            for _ in range(6):
                assert (await client.get("/api/v1/users")).status_code == 200
        assert "Traceback" not in server.log(), server.log()
        assert "Unexpected exit" not in server.log(), server.log()
    finally:
        await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await connection.close()

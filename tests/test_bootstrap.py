"""``python -m app.core.bootstrap``: a database that is not ready is one line, a ready one is a fast no-op."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest

from tests.conftest import PG_HOST, PG_PASSWORD, PG_PORT, PG_USER, _admin_execute
from tests.helpers import one_line, run_command

BOOTSTRAP = [sys.executable, "-m", "app.core.bootstrap"]
# A process start with every import costs about 2 s on a shared 2-core machine; a no-op must stay near that.
NO_OP_SECONDS = 10


def bootstrap(env: dict[str, str], root: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    return run_command(BOOTSTRAP, {**env, **overrides}, root)


async def _fetch(database: str, query: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(
        host=PG_HOST, port=int(PG_PORT), user=PG_USER, password=PG_PASSWORD, database=database
    )
    try:
        rows: list[asyncpg.Record] = await connection.fetch(query, *args)
        return rows
    finally:
        await connection.close()


def database_exists(name: str) -> bool:
    return bool(asyncio.run(_fetch("postgres", "SELECT 1 FROM pg_database WHERE datname = $1", name)))


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """A database name nobody has created; dropped afterwards if a test created it."""
    name = f"test_boot_{uuid4().hex[:12]}"
    try:
        yield name
    finally:
        asyncio.run(_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_bootstrap_creates_a_missing_database_in_local_and_migrates_it(
    test_env: dict[str, str], project_root: Path, fresh_database: str
) -> None:
    result = bootstrap(test_env, project_root, POSTGRES_DB=fresh_database, ENVIRONMENT="local")
    assert result.returncode == 0, result.stderr
    assert f'Created database "{fresh_database}"' in result.stderr
    assert "Admin user admin created successfully." in result.stderr
    assert "Tier 'free' created successfully." in result.stderr
    tables = {row["tablename"] for row in asyncio.run(_fetch(fresh_database, "SELECT tablename FROM pg_tables"))}
    assert {"tier", "rate_limit", "user", "post", "token_blacklist", "alembic_version"} <= tables
    users = asyncio.run(_fetch(fresh_database, 'SELECT username, is_superuser FROM "user"'))
    assert [(row["username"], row["is_superuser"]) for row in users] == [("admin", True)]
    assert [row["name"] for row in asyncio.run(_fetch(fresh_database, "SELECT name FROM tier"))] == ["free"]


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_bootstrap_outside_local_never_creates_the_database(
    test_env: dict[str, str], project_root: Path, fresh_database: str, environment: str
) -> None:
    result = bootstrap(test_env, project_root, POSTGRES_DB=fresh_database, ENVIRONMENT=environment)
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith(f'Database not ready: database "{fresh_database}" does not exist on {PG_HOST}:{PG_PORT}')
    assert line.endswith(f"createdb -h {PG_HOST} -p {PG_PORT} -U {PG_USER} {fresh_database}")
    assert not database_exists(fresh_database)


def test_bootstrap_against_an_unreachable_server_fails_with_one_line_quickly(
    test_env: dict[str, str], project_root: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = str(sock.getsockname()[1])
    started = time.monotonic()
    result = bootstrap(
        test_env, project_root, POSTGRES_SERVER="127.0.0.1", POSTGRES_PORT=closed_port, POSTGRES_PASSWORD="n0t-Sh0wn!"
    )
    assert time.monotonic() - started < NO_OP_SECONDS
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith(f"Database not ready: cannot reach PostgreSQL at 127.0.0.1:{closed_port}")
    assert "is PostgreSQL running?" in line
    assert "n0t-Sh0wn!" not in line


def test_a_second_bootstrap_on_a_ready_database_does_nothing_and_is_fast(
    test_env: dict[str, str], project_root: Path
) -> None:
    first = bootstrap(test_env, project_root)
    assert first.returncode == 0, first.stderr
    assert "Admin user admin created successfully." in first.stderr

    started = time.monotonic()
    second = bootstrap(test_env, project_root)
    assert time.monotonic() - started < NO_OP_SECONDS
    assert second.returncode == 0, second.stderr
    assert "Bootstrap: nothing to do (" in second.stderr
    for skipped in ("keys present and matching", "schema at head", "Admin user admin already exists", "already exists"):
        assert skipped in second.stderr
    assert "Running upgrade" not in second.stderr
    assert "created" not in second.stderr


def test_bootstrap_in_embedded_mode_migrates_sqlite_and_creates_the_first_records(
    test_env: dict[str, str], project_root: Path, tmp_path: Path
) -> None:
    env = {key: value for key, value in test_env.items() if not key.startswith(("POSTGRES_", "REDIS_"))}
    database = tmp_path / "embedded.sqlite3"
    result = bootstrap(env, project_root, EMBEDDED="true", EMBEDDED_DATABASE_PATH=str(database))
    assert result.returncode == 0, result.stderr
    assert "Running upgrade" in result.stderr
    assert "Tier 'free' created successfully." in result.stderr
    assert database.is_file()
    again = bootstrap(env, project_root, EMBEDDED="true", EMBEDDED_DATABASE_PATH=str(database))
    assert "Bootstrap: nothing to do (" in again.stderr

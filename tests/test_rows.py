"""``FastRead`` (app.core.rows): the row the session would read, sent with asyncpg on the session's connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import bindparam, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from app.core.rows import FastRead, is_autocommit
from app.core.settings import Settings
from app.users.models import User
from tests.conftest import MakeUser

pytestmark = pytest.mark.anyio

USERS = User.__table__.c
BY_USERNAME = FastRead(select(*USERS).where(USERS.username == bindparam("username")))
BACKEND = FastRead(select(func.pg_backend_pid().label("pid")))
SLEEP = FastRead(select(func.pg_sleep(literal_column("30"))))


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(settings.database_url, poolclass=NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture
def fetchrows(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements sent with asyncpg's ``fetchrow`` (SQLAlchemy's own go through prepared statements)."""
    sent: list[str] = []
    fetchrow = asyncpg.Connection.fetchrow

    async def counted(connection: asyncpg.Connection[Any], query: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(query)
        return await fetchrow(connection, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "fetchrow", counted)
    return sent


async def test_an_autocommit_read_goes_through_asyncpg_and_reads_what_the_session_reads(
    engine: AsyncEngine, make_user: MakeUser, fetchrows: list[str]
) -> None:
    await make_user("ann")
    async with async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))() as session:
        assert is_autocommit(session)
        fast = await BY_USERNAME.first(session, {"username": "ann"})
        assert fetchrows == [BY_USERNAME.sql]
        expected = (await session.execute(BY_USERNAME.statement, {"username": "ann"})).one()._mapping
        assert fast is not None
        assert dict(fast) == dict(expected)  # every column, the timestamps with their time zone included
        assert await BY_USERNAME.first(session, {"username": "nobody"}) is None


async def test_in_a_write_it_runs_before_the_begin_then_inside_the_transaction(
    engine: AsyncEngine, make_user: MakeUser, fetchrows: list[str]
) -> None:
    ann = await make_user("ann")
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        assert not is_autocommit(session)
        assert (await BY_USERNAME.first(session, {"username": "ann"}) or {})["id"] == ann.id  # before the BEGIN
        (await session.get_one(User, ann.id)).name = "Renamed"
        await session.flush()  # the transaction's own, uncommitted change
        assert (await BY_USERNAME.first(session, {"username": "ann"}) or {})["name"] == "Renamed"
        assert fetchrows == [BY_USERNAME.sql] * 2
        await session.rollback()
    async with async_sessionmaker(engine)() as session:
        assert (await BY_USERNAME.first(session, {"username": "ann"}) or {})["name"] == "Ann"


async def test_a_connection_that_dies_mid_read_never_goes_back_to_the_pool(settings: Settings) -> None:
    engine = create_async_engine(settings.database_url, pool_size=1, max_overflow=0)
    sessions = async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))
    admin = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        async with sessions() as session:
            pid = (await BACKEND.first(session, {}) or {})["pid"]
            sleeping = asyncio.ensure_future(SLEEP.first(session, {}))
            await _wait_until_asleep(admin, pid)
            await admin.execute("SELECT pg_terminate_backend($1)", pid)  # the server ends the connection
            with pytest.raises(asyncpg.PostgresError):
                await sleeping
        async with sessions() as session:  # the pool's one connection: a new one, working
            assert (await BACKEND.first(session, {}) or {})["pid"] != pid
    finally:
        await admin.close()
        await engine.dispose()


async def _wait_until_asleep(admin: asyncpg.Connection[Any], pid: int) -> None:
    for _ in range(200):
        if await admin.fetchval("SELECT wait_event FROM pg_stat_activity WHERE pid = $1", pid) == "PgSleep":
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the read never started")


async def test_a_parameter_that_needs_type_processing_is_refused_when_built() -> None:
    # DateTimeUTC turns values into UTC datetimes on the way in: asyncpg would receive them unprocessed.
    with pytest.raises(ValueError, match="no bind processing"):
        FastRead(select(USERS.id).where(USERS.created_at > bindparam("since", type_=USERS.created_at.type)))


async def test_a_session_without_autocommit_is_not_taken_for_one(db_session: AsyncSession) -> None:
    assert not is_autocommit(db_session)

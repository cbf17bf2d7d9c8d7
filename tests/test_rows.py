"""``FastRow`` (app.core.rows): the row the session would read or write, sent with asyncpg on the session's
connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from litestar.exceptions import NotFoundException
from sqlalchemy import bindparam, delete, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from app.core.rows import FastRow, is_autocommit
from app.core.settings import Settings
from app.posts.models import Post
from app.posts.schemas import PostCreate
from app.posts.services import _INSERT_POST as INSERT_POST
from app.posts.services import PostService
from app.users.models import User
from app.users.services import UserService
from tests.conftest import MakeUser

pytestmark = pytest.mark.anyio

USERS = User.__table__.c
BY_USERNAME = FastRow(select(*USERS).where(USERS.username == bindparam("username")))
BACKEND = FastRow(select(func.pg_backend_pid().label("pid")))
SLEEP = FastRow(select(func.pg_sleep(literal_column("30"))))


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


async def test_outside_a_transaction_each_statement_has_a_pooled_connection_for_itself_alone(
    settings: Settings, make_user: MakeUser
) -> None:
    # The session itself never connects: its connection handling cost as much CPU as the statement.
    await make_user("ann")
    engine = create_async_engine(settings.database_url, pool_size=1, max_overflow=0)
    pool = engine.sync_engine.pool
    try:
        async with async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))() as session:
            first = (await BACKEND.first(session, {}) or {})["pid"]
            assert pool.checkedout() == 0  # checked in at once, while the session is still open
            assert (await BY_USERNAME.first(session, {"username": "ann"}) or {})["username"] == "ann"
            assert (await BACKEND.first(session, {}) or {})["pid"] == first  # the pool's one connection, reused
            assert not session.in_transaction()
            assert pool.checkedout() == 0
    finally:
        await engine.dispose()


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


async def test_parameters_get_the_bind_processing_of_their_types(
    engine: AsyncEngine, make_user: MakeUser, fetchrows: list[str]
) -> None:
    # DateTimeUTC refuses a naive datetime and turns an aware one into UTC; asyncpg alone would take both.
    ann = await make_user("ann")
    since = FastRow(select(USERS.id).where(USERS.created_at > bindparam("since", type_=USERS.created_at.type)))
    before = ann.created_at.astimezone(timezone(timedelta(hours=5))) - timedelta(seconds=1)
    async with async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))() as session:
        assert (await since.first(session, {"since": before}) or {})["id"] == ann.id
        assert await since.first(session, {"since": ann.created_at + timedelta(seconds=1)}) is None
        with pytest.raises(TypeError, match="tzinfo"):
            await since.first(session, {"since": before.replace(tzinfo=None)})
    assert fetchrows == [since.sql] * 2


def _post_values(author_id: int, title: str) -> dict[str, Any]:
    return {
        "created_by_user_id": author_id,
        "title": title,
        "text": "Text.",
        "media_url": None,
        "uuid": uuid4(),
        "created_at": datetime.now(UTC),
        "is_deleted": False,
    }


async def _titles(engine: AsyncEngine, author_id: int) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(Post.title).where(Post.created_by_user_id == author_id))
        return [title for (title,) in rows]


async def test_a_write_outside_a_transaction_goes_through_asyncpg_and_commits_on_its_own(
    engine: AsyncEngine, make_user: MakeUser, fetchrows: list[str]
) -> None:
    ann = await make_user("ann")
    async with async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))() as session:
        row = await INSERT_POST.first(session, _post_values(ann.id, "Stored"))
        assert fetchrows == [INSERT_POST.sql]
        assert row is not None
        assert row["title"] == "Stored"
        assert row["created_at"].tzinfo is not None
        await session.rollback()  # nothing to roll back: the statement committed on its own
    assert await _titles(engine, ann.id) == ["Stored"]


async def test_a_write_inside_a_transaction_goes_through_the_session_and_rolls_back_with_it(
    engine: AsyncEngine, make_user: MakeUser, fetchrows: list[str]
) -> None:
    ann = await make_user("ann")
    async with async_sessionmaker(engine)() as session:
        row = await INSERT_POST.first(session, _post_values(ann.id, "Rolled back"))
        assert (row or {})["title"] == "Rolled back"
        assert fetchrows == []  # sent by the session, inside its transaction
        await session.rollback()
    assert await _titles(engine, ann.id) == []


@pytest.mark.parametrize("autocommit", [True, False], ids=["one statement", "in a transaction"])
async def test_a_post_whose_author_was_hard_deleted_after_the_token_check_is_the_authors_404(
    engine: AsyncEngine, make_user: MakeUser, autocommit: bool
) -> None:
    # The race of P1 against U7: the token check loaded the author, then a superuser deleted the row before the
    # INSERT. The foreign key refuses the post; the route answers 404 `User not found`, not 500.
    ann = await make_user("ann")
    async with engine.begin() as connection:
        await connection.execute(delete(User).where(User.id == ann.id))
    bind = engine.execution_options(isolation_level="AUTOCOMMIT") if autocommit else engine
    async with async_sessionmaker(bind)() as session:
        with pytest.raises(NotFoundException) as raised:
            await PostService(session=session).create_for(ann, PostCreate(title="Orphan", text="Text."))
        assert raised.value.detail == "User not found"
        await session.rollback()
    assert await _titles(engine, ann.id) == []


async def test_a_session_without_autocommit_is_not_taken_for_one(db_session: AsyncSession) -> None:
    assert not is_autocommit(db_session)


async def test_repositories_of_a_model_share_one_base_statement_and_read_through_it(
    db_session: AsyncSession, make_user: MakeUser
) -> None:
    # app.core.db.Repository: the base `select(model)` is built once per model, not per service (per request).
    ann = await make_user("ann")
    first, second = UserService(session=db_session), UserService(session=db_session)
    assert first.repository.statement is second.repository.statement
    assert PostService(session=db_session).repository.statement is not first.repository.statement
    assert (await second.get_one(id=ann.id)).username == "ann"
    assert await first.count() == 1

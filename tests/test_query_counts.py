"""Database round trips of the hot paths (issue 12): a request waits on PostgreSQL only for what its answer needs.

A round trip is one exchange with PostgreSQL that the request waits for. ``round_trips`` counts them where asyncpg
sends them, on the connections of the app's own engine, through every asyncpg call SQLAlchemy's asyncpg dialect
makes: a statement is ``PreparedStatement.fetch`` (one Bind/Execute/Sync); preparing one the connection has not
prepared yet is ``Connection.prepare``, one more (each counted request is the second of its kind, so its
statements are prepared already); BEGIN, COMMIT and ROLLBACK are ``Connection.execute``, which asyncpg's
``Transaction`` sends them with. SQLAlchemy's events would not be exact: ``before_cursor_execute`` never sees
asyncpg's BEGIN and ``begin``/``commit`` also fire on an AUTOCOMMIT connection, where nothing is sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from weakref import WeakSet

import asyncpg
import pytest
from asyncpg.prepared_stmt import PreparedStatement
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import event

from app.core.settings import Settings
from app.main import create_app
from app.users.models import User
from tests.conftest import MakeUser

pytestmark = pytest.mark.anyio

Client = AsyncTestClient[Litestar]

TOKEN_CHECK = "SELECT token check"  # SPEC §3.5 checks 5 and 6 in one query, on every authenticated request
POST_BODY = {"title": "Counted", "text": "A post written while the round trips are counted."}


class RoundTrips:
    """The round trips of the app's engine since the last ``clear()``, labelled ``BEGIN``, ``SELECT user``, …"""

    def __init__(self, app: Litestar, monkeypatch: pytest.MonkeyPatch) -> None:
        self.trips: list[str] = []
        self.fail_commit = False
        self._app_connections: WeakSet[asyncpg.Connection[Any]] = WeakSet()
        pool = app.state.alchemy.get_engine().sync_engine.pool
        event.listen(pool, "checkout", lambda _, record, __: self._app_connections.add(record.driver_connection))
        connection_class, statement_class = asyncpg.Connection, PreparedStatement
        execute, prepare, fetch = connection_class.execute, connection_class.prepare, statement_class.fetch
        executemany, fetchrow = connection_class.executemany, connection_class.fetchrow

        async def counted_execute(connection: asyncpg.Connection[Any], query: str, *args: Any, **kwargs: Any) -> str:
            self._count(connection, query)
            if self.fail_commit and query.startswith("COMMIT") and connection in self._app_connections:
                connection.terminate()  # the connection drops as the write commits
                raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle")
            return await execute(connection, query, *args, **kwargs)

        async def counted_prepare(connection: asyncpg.Connection[Any], query: str, **kwargs: Any) -> Any:
            self._count(connection, query, "PREPARE ")
            return await prepare(connection, query, **kwargs)

        async def counted_executemany(connection: asyncpg.Connection[Any], query: str, *args: Any, **kw: Any) -> Any:
            self._count(connection, query)
            return await executemany(connection, query, *args, **kw)

        async def counted_fetchrow(connection: asyncpg.Connection[Any], query: str, *args: Any, **kw: Any) -> Any:
            self._count(connection, query)
            return await fetchrow(connection, query, *args, **kw)

        async def counted_fetch(statement: Any, *args: Any, **kwargs: Any) -> Any:
            self._count(statement._connection, statement.get_query())
            return await fetch(statement, *args, **kwargs)

        monkeypatch.setattr(connection_class, "execute", counted_execute)
        monkeypatch.setattr(connection_class, "prepare", counted_prepare)
        monkeypatch.setattr(connection_class, "executemany", counted_executemany)
        monkeypatch.setattr(connection_class, "fetchrow", counted_fetchrow)
        monkeypatch.setattr(statement_class, "fetch", counted_fetch)

    def _count(self, connection: asyncpg.Connection[Any], query: str, prefix: str = "") -> None:
        if connection in self._app_connections:
            self.trips.append(prefix + _label(query))

    def clear(self) -> None:
        self.trips.clear()


def _label(sql: str) -> str:
    verb = sql.split(maxsplit=1)[0].rstrip(";").upper()
    if verb == "SELECT" and "token_blacklist" in sql:
        return TOKEN_CHECK
    table = re.search(r'\b(?:FROM|INTO|UPDATE)\s+"?(\w+)', sql)
    return f"{verb} {table.group(1)}" if table else verb


@pytest.fixture
def app(settings_with: Callable[..., Settings]) -> Litestar:
    """The app with a default rate limit that the repeated writes here never reach."""
    return create_app(settings_with(DEFAULT_RATE_LIMIT_LIMIT="1000"))


@pytest.fixture
def round_trips(app: Litestar, monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    return RoundTrips(app, monkeypatch)  # monkeypatch undoes the asyncpg patches after the test


async def counted(client: Client, round_trips: RoundTrips, method: str, path: str, **kwargs: Any) -> list[str]:
    """The round trips of the second of two identical requests (the first prepares the statements)."""
    first = await client.request(method, path, **kwargs)
    round_trips.clear()
    second = await client.request(method, path, **kwargs)
    assert second.status_code == first.status_code, second.text
    return list(round_trips.trips)


# --- reads: no transaction -----------------------------------------------------------------------------------


async def test_w2_user_by_username_is_one_statement(client: Client, ann: User, round_trips: RoundTrips) -> None:
    assert await counted(client, round_trips, "GET", "/api/v1/user/ann") == ["SELECT user"]


async def test_w7_own_profile_is_the_token_check_alone(
    client: Client, ann_auth: dict[str, str], round_trips: RoundTrips
) -> None:
    assert await counted(client, round_trips, "GET", "/api/v1/user/me/", headers=ann_auth) == [TOKEN_CHECK]


async def test_w1_users_page_is_one_statement_that_also_counts(
    client: Client, make_user: MakeUser, round_trips: RoundTrips
) -> None:
    """The page's rows carry the total: one round trip, and the total is the whole count, not the page's."""
    for username in ("ann", "bob", "cid"):
        await make_user(username)
    assert await counted(client, round_trips, "GET", "/api/v1/users?items_per_page=2") == ["SELECT user"]
    page = (await client.get("/api/v1/users?items_per_page=2")).json()
    assert (page["total_count"], page["has_more"], [user["username"] for user in page["data"]]) == (
        3,
        True,
        ["ann", "bob"],
    )


async def test_w1_a_page_past_the_end_counts_on_its_own(
    client: Client, make_user: MakeUser, round_trips: RoundTrips
) -> None:
    """No row to carry the total: a second statement counts, so the total is still right."""
    await make_user("ann")
    path = "/api/v1/users?page=5"
    assert await counted(client, round_trips, "GET", path) == ["SELECT user", "SELECT user"]
    assert (await client.get(path)).json() == {
        "data": [],
        "total_count": 1,
        "has_more": False,
        "page": 5,
        "items_per_page": 10,
    }


async def test_a_read_that_fails_sends_no_rollback(client: Client, round_trips: RoundTrips) -> None:
    assert await counted(client, round_trips, "GET", "/api/v1/user/nobody") == ["SELECT user"]


@pytest.mark.parametrize("path", ["/api/v1/ann/post/1", "/api/v1/ann/posts?page=1&items_per_page=10"])
async def test_w3_w4_cached_post_reads_touch_no_database(
    client: Client, ann_auth: dict[str, str], round_trips: RoundTrips, path: str
) -> None:
    assert (await client.post("/api/v1/ann/post", json=POST_BODY, headers=ann_auth)).status_code == 201
    assert await counted(client, round_trips, "GET", path) == []


# --- writes: one transaction, committed below 400 (SPEC §1.6) ------------------------------------------------


async def test_w6_create_post_is_the_token_check_and_one_insert_outside_a_transaction(
    client: Client, ann_auth: dict[str, str], round_trips: RoundTrips
) -> None:
    """Two round trips: SPEC §3.5's token check (a query on every authenticated request, so that revocation
    never fails open) and the INSERT, atomic on its own (``ONE_STATEMENT``: no BEGIN, no COMMIT). The owner check
    reuses the caller the token check just loaded."""
    assert (await client.get("/api/v1/user/me/", headers=ann_auth)).status_code == 200  # a read on the connection first
    assert (await client.get("/api/v1/ann/posts")).json()["total_count"] == 0  # cached: the page must be invalidated
    trips = await counted(client, round_trips, "POST", "/api/v1/ann/post", json=POST_BODY, headers=ann_auth)
    assert trips == [TOKEN_CHECK, "INSERT post"]
    titles = [post["title"] for post in (await client.get("/api/v1/ann/posts")).json()["data"]]
    assert titles == ["Counted", "Counted"]


async def test_a_one_statement_write_refused_before_its_statement_stores_nothing(
    client: Client, make_user: MakeUser, ann_auth: dict[str, str], round_trips: RoundTrips
) -> None:
    await make_user("bob")
    trips = await counted(client, round_trips, "POST", "/api/v1/bob/post", json=POST_BODY, headers=ann_auth)
    assert trips == [TOKEN_CHECK, "SELECT user"]  # 403: bob is not the caller
    assert (await client.get("/api/v1/bob/posts")).json()["total_count"] == 0


async def test_a_write_that_fails_rolls_back(
    client: Client, make_user: MakeUser, ann_auth: dict[str, str], round_trips: RoundTrips
) -> None:
    await make_user("bob")
    path = "/api/v1/bob/post/1"
    trips = await counted(client, round_trips, "PATCH", path, json={"title": "Not yours"}, headers=ann_auth)
    assert trips == [TOKEN_CHECK, "BEGIN", "SELECT user", "ROLLBACK"]  # 403: bob is not the caller


async def test_a_write_whose_commit_fails_answers_503_and_keeps_nothing(
    client: Client, ann_auth: dict[str, str], round_trips: RoundTrips
) -> None:
    created = await client.post("/api/v1/ann/post", json=POST_BODY, headers=ann_auth)
    path = f"/api/v1/ann/post/{created.json()['id']}"
    round_trips.fail_commit = True
    response = await client.patch(path, json={"title": "Never stored"}, headers=ann_auth)
    assert (response.status_code, response.json()) == (503, {"status_code": 503, "detail": "Service Unavailable"})
    round_trips.fail_commit = False
    assert (await client.get(path)).json()["title"] == POST_BODY["title"]

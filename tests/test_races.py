"""Races against a real Granian server (SPEC §1.3 unique-constraint races, §4.2 A2/A3, §4.3–§4.6).

Litestar's ``AsyncTestClient`` serves one request at a time, so it can never race. Here every request has its
own thread and its own connection, opened beforehand; a barrier then releases all requests at once into a
server with two worker processes, and the table they write stays locked until all of them wait to write it
(``race``). Each race must end as the same requests sent one after another would: one success, and for the
rest the 4xx that a loser's pre-check gives once the winner has committed; never a 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from http.cookies import SimpleCookie
from typing import Any
from uuid import uuid4

import anyio
import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from app.auth.models import TokenBlacklist
from app.core.keys import load_signing_keys
from app.core.security import TokenCodec
from app.core.settings import Settings
from app.posts.models import Post
from app.tiers.models import RateLimit, Tier
from app.users.models import User
from tests.conftest import MakeUser
from tests.helpers import PASSWORD, bearer
from tests.servers import REQUEST_TIMEOUT, LiveServer, Send, live_server, simultaneously

pytestmark = pytest.mark.anyio

PARALLEL = 10
# Every wait is bounded: a request, the barrier, the whole batch, the requests reaching the held table.

Race = Callable[..., Awaitable[list[httpx.Response]]]


@pytest.fixture(scope="module")
def module_server(test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the whole module (a start costs ~1.5 s). It keeps nothing of a test in its processes that
    matters to the next: conftest's ``clean_state`` empties the tables and Redis before each test."""
    with live_server(test_env, tmp_path_factory.mktemp("races")) as server:
        yield server


@pytest.fixture
def server(module_server: LiveServer) -> Iterator[LiveServer]:
    """The module's server; a test fails if it left a traceback or a 500 in the server's log."""
    start = module_server.log_file.stat().st_size
    yield module_server
    log = module_server.log_file.read_bytes()[start:].decode(errors="replace")
    assert "Traceback" not in log, log
    assert '"status_code":500' not in log.replace(" ", ""), log


@pytest.fixture
def race(server: LiveServer, settings: Settings) -> Race:
    """``await race(sends, held="tier")``: the requests all at once, and their writes to the table ``held`` too.

    The barrier alone leaves it to timing whether two requests overlap between a pre-check and the write: only
    milliseconds apart, unless a password is hashed in between, they mostly do not. So the table is locked
    (EXCLUSIVE: plain reads pass, writes and row locks wait) until every request waits on it; by then all the
    lookups and pre-checks have run, and all the writes collide: each race at its worst.
    """

    async def run(sends: list[Send], *, held: str) -> list[httpx.Response]:
        responses: list[httpx.Response] = []

        async def send() -> None:
            responses.extend(await simultaneously(server.base_url, sends))

        engine = create_async_engine(settings.database_url, poolclass=NullPool)
        try:
            async with engine.connect() as holder, engine.connect() as watcher, anyio.create_task_group() as tasks:
                await holder.execute(text(f'LOCK TABLE "{held}" IN EXCLUSIVE MODE'))
                tasks.start_soon(send)
                try:
                    await wait_for_writers(watcher, held, len(sends))
                finally:
                    await holder.rollback()
        finally:
            await engine.dispose()
        return responses

    return run


async def wait_for_writers(watcher: AsyncConnection, table: str, expected: int) -> None:
    watcher = await watcher.execution_options(isolation_level="AUTOCOMMIT")
    waiting = text("SELECT count(*) FROM pg_locks WHERE relation = CAST(:table AS regclass) AND NOT granted")
    with anyio.fail_after(REQUEST_TIMEOUT):
        # The server is another process: there is no event to wait for, only the lock table to read.
        while await watcher.scalar(waiting, {"table": f'"{table}"'}) < expected:  # noqa: ASYNC110
            await anyio.sleep(0.01)


@pytest.fixture(scope="module")
def codec(settings: Settings) -> TokenCodec:
    """The app's token codec: access tokens as /login issues them, without an Argon2 hash and check per user."""
    return TokenCodec(settings.jwt, load_signing_keys(settings.jwt))


# For the users whose tokens are minted: they never log in, so no Argon2 hash need be computed for them.
NEVER_VERIFIED = "never verified"


def token_of(codec: TokenCodec, user: User) -> dict[str, str]:
    return bearer(codec.issue(user.username, user.id, "access", family=uuid4().hex).encoded)


async def user_with_token(make_user: MakeUser, codec: TokenCodec, username: str, **user: Any) -> dict[str, str]:
    """A new user's bearer header."""
    return token_of(codec, await make_user(username, hashed_password=NEVER_VERIFIED, **user))


@pytest.fixture
async def admin(make_user: MakeUser, codec: TokenCodec) -> dict[str, str]:
    """A superuser's bearer header."""
    return await user_with_token(make_user, codec, "admin", superuser=True)


def log_in(server: LiveServer, username: str) -> tuple[str, str]:
    """The access token and the refresh cookie's value of a login through the API."""
    response = httpx.post(
        f"{server.base_url}/api/v1/login",
        data={"username": username, "password": PASSWORD},
        timeout=REQUEST_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])
    return response.json()["access_token"], cookie["refresh_token"].value


def request(
    method: str, url: str, *, json: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> Send:
    """One request of a race, sent when the barrier opens."""
    return lambda client: client.request(method, url, json=json, headers=headers)


def assert_one_winner(responses: list[httpx.Response], success: int, status: int, detail: str) -> None:
    """One ``success``, and ``{"status_code": status, "detail": detail}`` for every other request."""
    others = len(responses) - 1
    expected = sorted([success] + [status] * others)
    assert sorted(response.status_code for response in responses) == expected, [r.text for r in responses]
    rejected = [response.json() for response in responses if response.status_code != success]
    assert rejected == [{"status_code": status, "detail": detail}] * others


async def count(db_session: AsyncSession, model: type[Any], *where: Any) -> int:
    db_session.expire_all()  # the rows as the server left them, not as this session last saw them
    return int(await db_session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


# --- U1 register, U5 rename (SPEC §1.3, §4.3) ---------------------------------------------------------------


def register(username: str, email: str) -> Send:
    body = {"name": "Racer", "username": username, "email": email, "password": PASSWORD}
    return request("POST", "/api/v1/user", json=body)


@pytest.mark.parametrize(
    ("email", "detail"), [("same@example.com", "Email is already registered"), (None, "Username not available")]
)
async def test_parallel_registrations_with_one_email_or_username_give_one_201_and_the_pre_check_422_for_the_rest(
    race: Race, db_session: AsyncSession, email: str | None, detail: str
) -> None:
    """All share ``email``, or (``None``) all share the username."""
    registrations = [
        register(f"racer{n}", email) if email else register("same", f"racer{n}@example.com") for n in range(PARALLEL)
    ]

    responses = await race(registrations, held="user")

    assert_one_winner(responses, 201, 422, detail)
    assert await count(db_session, User) == 1


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"username": "taken"}, "Username not available"),
        ({"email": "taken@example.com"}, "Email is already registered"),
        # U5 checks the username before the email: a loser on both answers as its pre-check would.
        ({"username": "taken", "email": "taken@example.com"}, "Username not available"),
    ],
)
async def test_parallel_renames_of_users_onto_one_name_give_one_200_and_the_pre_check_422_for_the_rest(
    race: Race, make_user: MakeUser, codec: TokenCodec, db_session: AsyncSession, change: dict[str, str], detail: str
) -> None:
    renames = [
        request("PATCH", f"/api/v1/user/{name}", json=change, headers=await user_with_token(make_user, codec, name))
        for name in (f"racer{n}" for n in range(PARALLEL))
    ]

    responses = await race(renames, held="user")

    assert_one_winner(responses, 200, 422, detail)
    assert await count(db_session, User) == PARALLEL
    for column, value in change.items():
        assert await count(db_session, User, getattr(User, column) == value) == 1


# --- A2 refresh, A3 logout (SPEC §4.2, §3.7) ----------------------------------------------------------------


async def test_one_refresh_token_presented_in_parallel_is_rotated_exactly_once(
    race: Race, server: LiveServer, make_user: MakeUser
) -> None:
    await make_user("ann")
    _, refresh = log_in(server, "ann")

    # The cookie is Secure, so over plain HTTP it is sent as a header.
    cookie = {"Cookie": f"refresh_token={refresh}"}
    responses = await race([request("POST", "/api/v1/refresh", headers=cookie)] * PARALLEL, held="token_blacklist")

    assert_one_winner(responses, 200, 401, "Invalid refresh token.")


async def test_a_double_logout_in_parallel_succeeds_once_and_rejects_the_other(
    race: Race, server: LiveServer, make_user: MakeUser
) -> None:
    await make_user("ann")
    access, refresh = log_in(server, "ann")

    headers = bearer(access) | {"Cookie": f"refresh_token={refresh}"}
    responses = await race([request("POST", "/api/v1/logout", headers=headers)] * 2, held="token_blacklist")

    assert_one_winner(responses, 200, 401, "Invalid token.")


# --- U6 soft delete, U7 hard delete, P5/P6 post deletes (SPEC §4.3, §4.4, §2.6) -----------------------------


async def test_parallel_soft_deletes_of_ones_own_account_give_one_200_and_401_for_the_rest(
    race: Race, make_user: MakeUser, codec: TokenCodec, db_session: AsyncSession
) -> None:
    ann = await user_with_token(make_user, codec, "ann")

    responses = await race([request("DELETE", "/api/v1/user/ann", headers=ann)] * PARALLEL, held="user")

    # The losers answer as a request after the deletion would: its token no longer authenticates (SPEC §3.5).
    assert_one_winner(responses, 200, 401, "User not authenticated.")
    assert await count(db_session, User, User.is_deleted.is_(True)) == 1
    assert await count(db_session, TokenBlacklist) == 1


async def test_parallel_hard_deletes_of_one_user_give_one_200_and_404_for_the_rest(
    race: Race, make_user: MakeUser, admin: dict[str, str], db_session: AsyncSession
) -> None:
    await make_user("bob", hashed_password=NEVER_VERIFIED)

    responses = await race([request("DELETE", "/api/v1/db_user/bob", headers=admin)] * PARALLEL, held="user")

    assert_one_winner(responses, 200, 404, "User not found")
    assert await count(db_session, User, User.username == "bob") == 0
    assert await count(db_session, User) == 1


@pytest.mark.parametrize("route", ["post", "db_post"])
async def test_parallel_deletes_of_one_post_give_one_200_and_404_for_the_rest(
    race: Race, make_user: MakeUser, codec: TokenCodec, db_session: AsyncSession, route: str
) -> None:
    """P5 (the owner's soft delete) and P6 (the superuser's hard delete, which also sees soft-deleted posts)."""
    ann = await make_user("ann", hashed_password=NEVER_VERIFIED)
    post = Post(created_by_user_id=ann.id, title="Race", text="One post")
    db_session.add(post)
    await db_session.commit()
    is_p6 = route == "db_post"
    headers = await user_with_token(make_user, codec, "admin", superuser=True) if is_p6 else token_of(codec, ann)

    responses = await race(
        [request("DELETE", f"/api/v1/ann/{route}/{post.id}", headers=headers)] * PARALLEL, held="post"
    )

    assert_one_winner(responses, 200, 404, "Post not found")
    assert await count(db_session, Post) == (0 if is_p6 else 1)
    assert await count(db_session, Post, Post.is_deleted.is_(False)) == 0


# --- T1 create, T4 rename, T5 delete (SPEC §4.5) ------------------------------------------------------------


async def add_tiers(db_session: AsyncSession, *names: str) -> list[Tier]:
    tiers = [Tier(name=name) for name in names]
    db_session.add_all(tiers)
    await db_session.commit()
    return tiers


async def test_parallel_tier_creations_with_one_name_give_one_201_and_the_pre_check_422_for_the_rest(
    race: Race, admin: dict[str, str], db_session: AsyncSession
) -> None:
    responses = await race(
        [request("POST", "/api/v1/tier", json={"name": "gold"}, headers=admin)] * PARALLEL, held="tier"
    )

    assert_one_winner(responses, 201, 422, "Tier Name not available")
    assert await count(db_session, Tier) == 1


async def test_parallel_renames_of_tiers_onto_one_name_give_one_200_and_the_pre_check_422_for_the_rest(
    race: Race, admin: dict[str, str], db_session: AsyncSession
) -> None:
    names = [f"tier{n}" for n in range(PARALLEL)]
    await add_tiers(db_session, *names)

    responses = await race(
        [request("PATCH", f"/api/v1/tier/{name}", json={"name": "gold"}, headers=admin) for name in names], held="tier"
    )

    assert_one_winner(responses, 200, 422, "Tier Name not available")
    assert await count(db_session, Tier) == PARALLEL
    assert await count(db_session, Tier, Tier.name == "gold") == 1


@pytest.mark.parametrize(("method", "body"), [("PATCH", {"name": "gold"}), ("DELETE", None)])
async def test_parallel_renames_or_deletes_of_one_tier_give_one_200_and_404_for_the_rest(
    race: Race, admin: dict[str, str], db_session: AsyncSession, method: str, body: dict[str, str] | None
) -> None:
    """After the first rename or delete there is no tier of the old name left to change."""
    await add_tiers(db_session, "silver")

    responses = await race([request(method, "/api/v1/tier/silver", json=body, headers=admin)] * PARALLEL, held="tier")

    assert_one_winner(responses, 200, 404, "Tier not found")
    assert await count(db_session, Tier) == (1 if method == "PATCH" else 0)
    assert await count(db_session, Tier, Tier.name == "silver") == 0


# --- R1 create, R4 update, R5 delete (SPEC §4.6) ------------------------------------------------------------

NAME_TAKEN = "Rate Limit Name not available"
PATH_TAKEN = "Rate Limit Path already defined for this tier"


def limit_body(n: int, *, same: str) -> dict[str, Any]:
    """The ``n``-th racer's rate limit: all share the name (``same="name"``) or the path (``same="path"``)."""
    return {
        "path": "/api/v1/tasks/task" if same == "path" else f"/api/v1/path{n}",
        "limit": 10,
        "period": 60,
        "name": "shared" if same == "name" else f"limit{n}",
    }


@pytest.mark.parametrize(("same", "detail"), [("name", NAME_TAKEN), ("path", PATH_TAKEN)])
async def test_parallel_rate_limit_creations_with_one_name_or_path_give_one_201_and_the_pre_check_422_for_the_rest(
    race: Race, admin: dict[str, str], db_session: AsyncSession, same: str, detail: str
) -> None:
    await add_tiers(db_session, "gold")
    creations = [
        request("POST", "/api/v1/tier/gold/rate_limit", json=limit_body(n, same=same), headers=admin)
        for n in range(PARALLEL)
    ]

    responses = await race(creations, held="rate_limit")

    assert_one_winner(responses, 201, 422, detail)
    assert await count(db_session, RateLimit) == 1


@pytest.mark.parametrize(("same", "detail"), [("name", NAME_TAKEN), ("path", PATH_TAKEN)])
async def test_parallel_rate_limit_updates_onto_one_name_or_path_give_one_200_and_the_pre_check_422_for_the_rest(
    race: Race, admin: dict[str, str], db_session: AsyncSession, same: str, detail: str
) -> None:
    (tier,) = await add_tiers(db_session, "gold")
    limits = [RateLimit(tier_id=tier.id, name=f"limit{n}", path=f"p{n}", limit=1, period=60) for n in range(PARALLEL)]
    db_session.add_all(limits)
    await db_session.commit()
    change = {"name": "shared"} if same == "name" else {"path": "/api/v1/tasks/task"}

    responses = await race(
        [request("PATCH", f"/api/v1/tier/gold/rate_limit/{limit.id}", json=change, headers=admin) for limit in limits],
        held="rate_limit",
    )

    assert_one_winner(responses, 200, 422, detail)
    assert await count(db_session, RateLimit) == PARALLEL
    column, value = ("name", "shared") if same == "name" else ("path", "api_v1_tasks_task")
    assert await count(db_session, RateLimit, getattr(RateLimit, column) == value) == 1


async def test_parallel_deletes_of_one_rate_limit_give_one_200_and_404_for_the_rest(
    race: Race, admin: dict[str, str], db_session: AsyncSession
) -> None:
    (tier,) = await add_tiers(db_session, "gold")
    limit = RateLimit(tier_id=tier.id, name="limit", path="path", limit=1, period=60)
    db_session.add(limit)
    await db_session.commit()

    responses = await race(
        [request("DELETE", f"/api/v1/tier/gold/rate_limit/{limit.id}", headers=admin)] * PARALLEL, held="rate_limit"
    )

    assert_one_winner(responses, 200, 404, "Rate Limit not found")
    assert await count(db_session, RateLimit) == 0

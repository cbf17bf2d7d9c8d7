"""OWASP API Security Top 10 (2023) checks, generated from the app's own OpenAPI document (SPEC §1.2–§1.7, §4).

Every check walks the operations of ``/openapi.json``, so a new route is checked without editing this file; the
few tables below (reviewed non-superuser routes, valid bodies, SPEC's unknown-field rule) fail loudly for an
operation they do not know. One subtest per operation: a failure names its ``operationId``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import bcrypt
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase

from app.core.errors import FORBIDDEN, NOT_AUTHENTICATED, NOT_ENOUGH_PRIVILEGES
from app.core.keys import load_signing_keys
from app.core.passwords import hash_password
from app.core.security import TokenCodec
from app.core.settings import Settings
from app.main import REQUEST_MAX_BODY_SIZE, create_app
from app.models import metadata
from app.posts.models import Post
from app.tiers.models import RateLimit, Tier
from app.users.models import User
from tests.conftest import MakeUser
from tests.helpers import PASSWORD, bearer
from tests.test_openapi import operations

pytestmark = pytest.mark.anyio

# Reviewed: the only protected operations a normal user may call (SPEC §4.1). Any other operation with a security
# requirement is checked as superuser-only, so a new route is superuser-checked unless consciously listed here.
OWNER_OPERATIONS = frozenset(
    {
        "ApiV1UserUsernameUpdateUser",  # U5
        "ApiV1UserUsernameDeleteUser",  # U6
        "ApiV1UsernamePostCreatePost",  # P1
        "ApiV1UsernamePostIdUpdatePost",  # P4
        "ApiV1UsernamePostIdDeletePost",  # P5
    }
)
USER_OPERATIONS = frozenset({"ApiV1UserMeReadMe"})  # U3

# SPEC §4.3–§4.6: which bodies reject unknown fields (422) and which ignore them (parity with the original).
REJECTS, IGNORES = "422", "ignored"
UNKNOWN_FIELDS = {
    "ApiV1UserRegister": REJECTS,
    "ApiV1UserUsernameUpdateUser": REJECTS,
    "ApiV1UserUsernameTierUpdateUserTier": IGNORES,
    "ApiV1UsernamePostCreatePost": REJECTS,
    "ApiV1UsernamePostIdUpdatePost": REJECTS,
    "ApiV1TierCreateTier": IGNORES,
    "ApiV1TierNameUpdateTier": IGNORES,
    "ApiV1TierTierNameRateLimitCreateRateLimit": REJECTS,
    "ApiV1TierTierNameRateLimitIdUpdateRateLimit": IGNORES,
    "ApiV1LoginLogin": IGNORES,
    "ApiAuthLoginLogin": IGNORES,
}
TAG_MODELS: dict[str, type[DeclarativeBase]] = {
    "users": User,
    "login": User,
    "posts": Post,
    "tiers": Tier,
    "rate_limits": RateLimit,
}
# SPEC §2.7: never serialised to clients (and a plain password never is either).
SECRET_PROPERTIES = {"hashed_password", "password", "uuid", "is_deleted", "deleted_at", "is_superuser", "updated_at"}
# Columns no request body may declare, so that adding one to a schema cannot pass unnoticed (SPEC §4.3 U10 sets tiers).
PRIVILEGED_COLUMNS = {"id", "uuid", "hashed_password", "is_superuser", "tier_id", "created_by_user_id", "is_deleted"}
PRIVILEGED_COLUMNS |= {"deleted_at", "created_at", "updated_at"}
DECLARES_PRIVILEGED = {"ApiV1UserUsernameTierUpdateUserTier": {"tier_id"}}


@dataclass(frozen=True)
class World:
    """Real objects for every path parameter: ann's (the victim's), with bob a normal user and boss a superuser."""

    values: dict[str, Any]  # path parameter (or, for `{id}`, the segment before it) -> a real object's key
    ids: dict[type[DeclarativeBase], int]  # the path objects' row ids
    others: dict[str, int]  # table -> id of another real row, for injected foreign keys
    headers: dict[str, dict[str, str]]  # ann, bob, boss -> bearer header

    def caller(self, operation: dict[str, Any]) -> dict[str, str]:
        """Someone entitled to the operation on the path objects: nobody, the owner, or a superuser."""
        entitled = {"public": None, "user": "ann", "owner": "ann"}.get(level(operation), "boss")
        return self.headers[entitled] if entitled else {}


@pytest.fixture
def app(settings_with: Callable[..., Settings]) -> Litestar:
    # P1 is rate limited (1 per minute by default); the limiter is not what these checks are about.
    return create_app(settings_with(DEFAULT_RATE_LIMIT_LIMIT="1000"))


@pytest.fixture(scope="module")
async def document(settings: Settings) -> dict[str, Any]:
    """The served ``/openapi.json``, read once: it depends on the code, not on the data."""
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
async def password_hash() -> str:
    return await hash_password(PASSWORD)


@pytest.fixture(scope="module")
def codec(settings: Settings) -> TokenCodec:
    """The app's token codec: access tokens as /login issues them, without an Argon2 verification per user."""
    return TokenCodec(settings.jwt, load_signing_keys(settings.jwt))


@pytest.fixture
async def world(make_user: MakeUser, db_session: AsyncSession, password_hash: str, codec: TokenCodec) -> World:
    pro, free = Tier(name="pro"), Tier(name="free")
    db_session.add_all([pro, free])
    await db_session.flush()
    ann = await make_user("ann", tier_id=pro.id, hashed_password=password_hash)
    bob = await make_user("bob", tier_id=free.id, hashed_password=password_hash)
    boss = await make_user("boss", superuser=True, hashed_password=password_hash)
    limit = RateLimit(tier_id=pro.id, name="pro-users", path="api_v1_users", limit=5, period=60)
    post = Post(created_by_user_id=ann.id, title="Ann's", text="Ann's post")
    db_session.add_all([limit, post, Post(created_by_user_id=bob.id, title="Bob's", text="Bob's post")])
    await db_session.commit()
    return World(
        values={"username": "ann", "name": "pro", "tier_name": "pro", "post": post.id, "rate_limit": limit.id},
        ids={User: ann.id, Tier: pro.id, RateLimit: limit.id, Post: post.id},
        others={"user": bob.id, "tier": free.id},
        headers={
            user.username: bearer(codec.issue(user.username, user.id, "access", family=uuid4().hex).encoded)
            for user in (ann, bob, boss)
        },
    )


def level(operation: dict[str, Any]) -> str:
    """The authorisation level the document states: its security requirement and its 403's possible details."""
    if not operation.get("security"):
        return "public"
    forbidden = operation["responses"].get("403")
    if forbidden is None:
        return "user"
    details = forbidden["content"]["application/json"]["schema"]["properties"]["detail"].get("enum", [])
    return "superuser" if details == [NOT_ENOUGH_PRIVILEGES] else "owner" if details == [FORBIDDEN] else str(details)


def reviewed_level(operation: dict[str, Any]) -> str:
    op_id = operation["operationId"]
    if not operation.get("security"):
        return "public"
    return "owner" if op_id in OWNER_OPERATIONS else "user" if op_id in USER_OPERATIONS else "superuser"


def fill(path: str, values: dict[str, Any]) -> str:
    """``path`` with each parameter replaced by a real object's; ``{id}`` is named by the segment before it."""
    segments = path.split("/")
    for index, segment in enumerate(segments):
        if segment.startswith("{"):
            name = segment[1:-1]
            key = segments[index - 1].removeprefix("db_") if name == "id" else name
            if key not in values:
                pytest.fail(f"{path}: no real object for {segment}; add one to the world fixture")
            segments[index] = str(values[key])
    return "/".join(segments)


def body_of(operation: dict[str, Any], world: World) -> dict[str, Any] | None:
    """A valid body for every body-taking operation (SPEC §4); an unknown operation fails loudly."""
    if "requestBody" not in operation:
        return None
    bodies: dict[str, dict[str, Any]] = {
        "ApiV1UserRegister": {"name": "Cid", "username": "cid", "email": "cid@example.com", "password": PASSWORD},
        "ApiV1UserUsernameUpdateUser": {"name": "Renamed"},
        "ApiV1UserUsernameTierUpdateUserTier": {"tier_id": world.others["tier"]},
        "ApiV1UsernamePostCreatePost": {"title": "Hello", "text": "World"},
        "ApiV1UsernamePostIdUpdatePost": {"title": "Changed"},
        "ApiV1TierCreateTier": {"name": "gold"},
        "ApiV1TierNameUpdateTier": {"name": "platinum"},
        "ApiV1TierTierNameRateLimitCreateRateLimit": {"path": "/api/v1/tiers", "limit": 5, "period": 60},
        "ApiV1TierTierNameRateLimitIdUpdateRateLimit": {"limit": 7},
        "ApiV1LoginLogin": {"username": "ann", "password": PASSWORD},
        "ApiAuthLoginLogin": {"username": "ann", "password": PASSWORD},
    }
    if operation["operationId"] not in bodies:
        pytest.fail(f"no valid body for {operation['operationId']}: add one to body_of()")
    return bodies[operation["operationId"]]


async def call(
    client: AsyncTestClient[Litestar],
    method: str,
    path: str,
    operation: dict[str, Any],
    *,
    headers: dict[str, str],
    body: dict[str, Any] | None,
) -> Any:
    if body is None:
        return await client.request(method, path, headers=headers)
    if "application/json" in operation["requestBody"]["content"]:
        return await client.request(method, path, headers=headers, json=body)
    return await client.request(method, path, headers=headers, data=body)  # the login form


async def snapshot(db_session: AsyncSession) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, to prove that a refused request changed nothing."""
    rows = {
        table.name: [tuple(row) for row in await db_session.execute(select(table).order_by(*table.primary_key))]
        for table in metadata.sorted_tables
    }
    await db_session.commit()  # a fresh view next time (expire_on_commit is off)
    return rows


def protected(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for method, path, op in operations(document) if op.get("security")]


async def test_the_document_states_each_routes_level_as_reviewed(document: dict[str, Any], subtests: Any) -> None:
    assert {level(op) for _, _, op in operations(document)} == {"public", "user", "owner", "superuser"}
    for _, _, operation in operations(document):
        with subtests.test(msg=operation["operationId"]):
            assert level(operation) == reviewed_level(operation), (
                f"{operation['operationId']}: documented {level(operation)}, reviewed {reviewed_level(operation)}; "
                "list a deliberate user/owner route in OWNER_OPERATIONS or USER_OPERATIONS"
            )


async def test_protected_routes_answer_401_without_a_token(
    client: AsyncTestClient[Litestar], document: dict[str, Any], world: World, db_session: AsyncSession, subtests: Any
) -> None:
    before = await snapshot(db_session)
    for method, path, operation in protected(document):
        with subtests.test(msg=operation["operationId"]):
            response = await call(
                client, method, fill(path, world.values), operation, headers={}, body=body_of(operation, world)
            )
            assert (response.status_code, response.json()["detail"]) == (401, NOT_AUTHENTICATED)
            assert response.headers["www-authenticate"] == "Bearer"
    assert await snapshot(db_session) == before


async def test_superuser_routes_refuse_a_normal_user_and_change_nothing(
    client: AsyncTestClient[Litestar], document: dict[str, Any], world: World, db_session: AsyncSession, subtests: Any
) -> None:
    """API5: checked for every protected operation not reviewed as a user/owner route."""
    superuser_routes = [(m, p, op) for m, p, op in protected(document) if reviewed_level(op) == "superuser"]
    assert len(superuser_routes) >= 10
    for method, path, operation in superuser_routes:
        with subtests.test(msg=operation["operationId"]):
            before = await snapshot(db_session)  # per operation: a failure names only the route that wrote
            headers = world.headers["bob"]
            response = await call(
                client, method, fill(path, world.values), operation, headers=headers, body=body_of(operation, world)
            )
            assert (response.status_code, response.json()["detail"]) == (403, NOT_ENOUGH_PRIVILEGES)
            assert await snapshot(db_session) == before


@pytest.mark.parametrize("caller", ["bob", "boss"])
async def test_owner_routes_refuse_anyone_else_even_a_superuser(
    client: AsyncTestClient[Litestar],
    document: dict[str, Any],
    world: World,
    db_session: AsyncSession,
    subtests: Any,
    caller: str,
) -> None:
    """API1 BOLA: another user, and a superuser (SPEC §1.2: no implicit owner rights), on each of ann's objects."""
    owner_routes = [(m, p, op) for m, p, op in protected(document) if level(op) == "owner"]
    assert {op["operationId"] for _, _, op in owner_routes} == OWNER_OPERATIONS
    for method, path, operation in owner_routes:
        with subtests.test(msg=operation["operationId"]):
            before = await snapshot(db_session)
            headers = world.headers[caller]
            response = await call(
                client, method, fill(path, world.values), operation, headers=headers, body=body_of(operation, world)
            )
            assert (response.status_code, response.json()["detail"]) == (403, FORBIDDEN)
            assert await snapshot(db_session) == before


async def test_an_owner_cannot_reach_anothers_post_through_their_own_name(
    client: AsyncTestClient[Litestar], document: dict[str, Any], world: World, db_session: AsyncSession, subtests: Any
) -> None:
    """SPEC §4.4 P4/P5 [Δ]: the original looked posts up by id alone."""
    by_id = [(m, p, op) for m, p, op in protected(document) if level(op) == "owner" and "{id}" in p]
    assert len(by_id) == 2
    for method, path, operation in by_id:
        with subtests.test(msg=operation["operationId"]):
            before = await snapshot(db_session)
            bob_path = fill(path, {**world.values, "username": "bob"})
            response = await call(
                client, method, bob_path, operation, headers=world.headers["bob"], body=body_of(operation, world)
            )
            assert (response.status_code, response.json()["detail"]) == (404, "Post not found")
            assert await snapshot(db_session) == before


def by_id(document: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {op["operationId"]: (method, path, op) for method, path, op in operations(document)}


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def declared_fields(document: dict[str, Any], operation: dict[str, Any]) -> set[str]:
    media = next(iter(operation["requestBody"]["content"].values()))
    return set(resolve(document, media["schema"])["properties"])


def injected_fields(document: dict[str, Any], operation: dict[str, Any], world: World) -> dict[str, Any]:
    """A value for each column of the operation's model that its request body does not declare (API3)."""
    model = TAG_MODELS[operation["tags"][0]]
    declared = declared_fields(document, operation)
    by_type: dict[type, Any] = {bool: True, int: 2_000_000_000, str: "injected", UUID: uuid4()}
    by_type[datetime] = datetime(2001, 1, 1, tzinfo=UTC)
    fields = {}
    for column in model.__table__.columns:
        if column.name not in declared:
            foreign = next(iter(column.foreign_keys), None)
            fields[column.name] = (
                world.others[foreign.column.table.name] if foreign else by_type[column.type.python_type]
            )
    return fields


def encoded(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else str(value) if isinstance(value, UUID) else value


@pytest.mark.parametrize("op_id", UNKNOWN_FIELDS)
async def test_mass_assignment_is_rejected_or_ignored_per_spec(
    client: AsyncTestClient[Litestar], document: dict[str, Any], world: World, db_session: AsyncSession, op_id: str
) -> None:
    """API3: every column the body does not declare (`is_superuser`, `tier_id`, `hashed_password`, `id`, …)."""
    method, path, operation = by_id(document)[op_id]
    assert declared_fields(document, operation) & PRIVILEGED_COLUMNS == DECLARES_PRIVILEGED.get(op_id, set())
    injected = injected_fields(document, operation, world)
    assert injected
    url, headers, body = fill(path, world.values), world.caller(operation), body_of(operation, world) or {}
    model = TAG_MODELS[operation["tags"][0]]
    if UNKNOWN_FIELDS[op_id] == REJECTS:
        before = await snapshot(db_session)
        for name, value in injected.items():
            response = await call(client, method, url, operation, headers=headers, body={**body, name: encoded(value)})
            assert response.status_code == 422, (name, response.text)
            assert [(e["key"], e["source"]) for e in response.json()["extra"]] == [(name, "body")]
        assert await snapshot(db_session) == before
        return
    row = await db_session.get(model, world.ids[model])
    before_row = {name: getattr(row, name) for name in injected}
    response = await call(
        client, method, url, operation, headers=headers, body={**body, **{k: encoded(v) for k, v in injected.items()}}
    )
    assert response.status_code in {200, 201}, response.text
    created = response.status_code == 201
    await db_session.commit()
    after = await db_session.get(model, response.json()["id"] if created else world.ids[model], populate_existing=True)
    assert after is not None
    for name, value in injected.items():
        assert getattr(after, name) != value, name
        if not created and name != "updated_at":  # an update sets `updated_at` itself
            assert getattr(after, name) == before_row[name], name


def schema_properties(document: dict[str, Any], schema: Any, seen: set[str]) -> set[str]:
    """Every property name reachable from ``schema`` (through `$ref`, `items`, `oneOf`, …)."""
    if isinstance(schema, list):
        return set().union(*(schema_properties(document, item, seen) for item in schema))
    if not isinstance(schema, dict):
        return set()
    if "$ref" in schema:
        if schema["$ref"] in seen:
            return set()
        seen.add(schema["$ref"])
        return schema_properties(document, resolve(document, schema), seen)
    names = set(schema.get("properties", {}))
    return names.union(*(schema_properties(document, value, seen) for value in schema.values()))


async def test_no_response_schema_exposes_a_secret(document: dict[str, Any]) -> None:
    """API3 excessive data exposure: a walk over every response schema of the document (SPEC §2.7)."""
    responses = [op["responses"] for _, _, op in operations(document)]
    names = schema_properties(document, responses, set())
    assert {"username", "email", "tier_id", "created_by_user_id", "access_token"} <= names  # the walk reached them
    assert names & SECRET_PROPERTIES == set()


def keys_in(body: Any) -> set[str]:
    if isinstance(body, dict):
        return set(body).union(*(keys_in(value) for value in body.values()))
    if isinstance(body, list):
        return set().union(*(keys_in(item) for item in body))
    return set()


async def test_no_read_answers_a_secret(
    client: AsyncTestClient[Litestar], document: dict[str, Any], world: World, subtests: Any
) -> None:
    """API3 at runtime: every GET of the document, on real objects, as a superuser (who may read them all)."""
    task = await client.post("/api/v1/tasks/task", params={"message": "hello"})
    assert task.status_code == 201, task.text
    values = {**world.values, "task_id": task.json()["id"]}
    for method, path, operation in operations(document):
        if method == "GET":
            with subtests.test(msg=operation["operationId"]):
                response = await client.get(fill(path, values), headers=world.headers["boss"])
                assert response.status_code == 200, response.text
                assert keys_in(response.json()) & SECRET_PROPERTIES == set()


async def test_every_list_bounds_its_page_size_and_number(
    client: AsyncTestClient[Litestar], document: dict[str, Any], world: World, subtests: Any
) -> None:
    """API4: every operation with an `items_per_page` parameter (SPEC §1.5)."""
    lists = [
        (p, op)
        for _, p, op in operations(document)
        if "items_per_page" in {x["name"] for x in op.get("parameters", [])}
    ]
    assert len(lists) >= 4
    for path, operation in lists:
        with subtests.test(msg=operation["operationId"]):
            url, headers = fill(path, world.values), world.caller(operation)
            for query, key in [
                ("items_per_page=101", "items_per_page"),
                ("page=0", "page"),
                ("page=2147483648", "page"),
            ]:
                response = await client.get(f"{url}?{query}", headers=headers)
                assert response.status_code == 422, (query, response.text)
                assert [(e["key"], e["source"]) for e in response.json()["extra"]] == [(key, "query")]
            response = await client.get(f"{url}?items_per_page=100&page=2147483647", headers=headers)
            assert response.status_code == 200
            assert response.json()["items_per_page"] == 100


CHUNK = 64 * 1024


def stream_endless_body(
    client: AsyncTestClient[Litestar], method: str, path: str, headers: dict[str, str]
) -> tuple[int, int]:
    """Drive the app's ASGI interface with a body that never ends; return (status, bytes the app pulled).

    The test client would read a request body whole before the app sees it; a real client streams it.
    """
    pulled, status = 0, 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += CHUNK
        return {"type": "http.request", "body": b"x" * CHUNK, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        status = message.get("status", status)

    raw = {"host": "testserver.local", **headers}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in raw.items()],
        "client": ("testclient", 50000),
        "server": ("testserver.local", 443),
    }
    client.blocking_portal.call(client.app, scope, receive, send)
    return status, pulled


async def test_every_body_is_limited_without_being_read_whole(
    client: AsyncTestClient[Litestar], document: dict[str, Any], world: World, db_session: AsyncSession, subtests: Any
) -> None:
    """API4: 413 on every body-taking operation, for its entitled caller (so the body is what is refused)."""
    with_body = [(m, p, op) for m, p, op in operations(document) if "requestBody" in op]
    assert {op["operationId"] for _, _, op in with_body} == set(UNKNOWN_FIELDS)  # every body has a SPEC rule
    for method, path, operation in with_body:
        with subtests.test(msg=operation["operationId"]):
            before = await snapshot(db_session)
            url = fill(path, world.values)
            headers = {**world.caller(operation), "content-type": next(iter(operation["requestBody"]["content"]))}
            over = await client.request(method, url, headers=headers, content=b"x" * (REQUEST_MAX_BODY_SIZE + 1))
            assert (over.status_code, over.json()["detail"]) == (413, "Request Entity Too Large"), over.text
            # Announced too long: refused before a byte is read; unannounced: once the limit is passed.
            announced = {**headers, "content-length": str(10 * REQUEST_MAX_BODY_SIZE)}
            assert stream_endless_body(client, method, url, announced) == (413, 0)
            status, pulled = stream_endless_body(client, method, url, headers)
            assert status == 413
            assert REQUEST_MAX_BODY_SIZE < pulled <= REQUEST_MAX_BODY_SIZE + CHUNK
            assert await snapshot(db_session) == before


LONG_PASSWORD = "a" * 1_000_000  # within the 1 MiB body limit


@pytest.mark.parametrize("password", ["a" * 129, LONG_PASSWORD])
async def test_an_overlong_password_is_422_before_any_hashing(
    client: AsyncTestClient[Litestar], world: World, db_session: AsyncSession, password: str
) -> None:
    """API4: SPEC §4.3 caps passwords at 128 characters; U5 has no password field at all."""
    before = await snapshot(db_session)
    register = {"name": "Cid", "username": "cid", "email": "cid@example.com", "password": password}
    attempts = [
        await client.post("/api/v1/user", json=register),
        await client.patch("/api/v1/user/ann", json={"password": password}, headers=world.headers["ann"]),
    ]
    for response in attempts:
        assert response.status_code == 422
        assert [(e["key"], e["source"]) for e in response.json()["extra"]] == [("password", "body")]
    assert await snapshot(db_session) == before


async def test_login_with_a_megabyte_password_is_a_wrong_password(
    client: AsyncTestClient[Litestar], world: World
) -> None:
    """SPEC §4.2: no length rule at login. Argon2 pre-hashes the password with BLAKE2b, so 1 MB costs about what a
    short password does (~20 ms): verifying it is no denial of service."""
    started = time.perf_counter()
    response = await client.post("/api/v1/login", data={"username": "ann", "password": LONG_PASSWORD})
    assert (response.status_code, response.json()["detail"]) == (401, "Wrong username, email or password.")
    assert time.perf_counter() - started < 2  # generous for a loaded machine; a real DoS would take far longer
    assert (await client.post("/api/v1/login", data={"username": "ann", "password": PASSWORD})).status_code == 200


async def test_login_with_a_long_password_to_a_legacy_bcrypt_account_is_401(
    client: AsyncTestClient[Litestar], make_user: MakeUser
) -> None:
    await make_user("old", hashed_password=bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode())
    response = await client.post("/api/v1/login", data={"username": "old", "password": "a" * 73})
    assert (response.status_code, response.json()["detail"]) == (401, "Wrong username, email or password.")


# The variants tests/test_app_shell.py does not cover: trailing slashes and Litestar's other /schema renderers.
DOCS_VARIANTS = ["/docs/", "/redoc/", "/openapi.json/", "/schema/", "/schema/swagger", "/schema/redoc"]
DOCS_VARIANTS += ["/schema/openapi.yaml", "/schema/openapi.yml", "/schema/elements", "/schema/rapidoc"]


async def test_production_serves_no_docs_variant(
    client: AsyncTestClient[Litestar], settings_with: Callable[..., Settings], subtests: Any
) -> None:
    """API8: every variant that local serves is absent in production (SPEC §8)."""
    served = [path for path in DOCS_VARIANTS if (await client.get(path)).status_code == 200]
    assert {"/docs/", "/schema/swagger", "/schema/redoc"} <= set(served)  # the check below is not vacuous
    async with AsyncTestClient(create_app(settings_with(ENVIRONMENT="production"))) as production:
        for path in DOCS_VARIANTS:
            with subtests.test(msg=path):
                response = await production.get(path)
                assert response.json() == {"status_code": 404, "detail": "Not Found"}

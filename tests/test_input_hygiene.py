"""Input hygiene (SPEC §1.7): no input, however malformed, produces a 5xx.

Each case below was a 500 (or a silently accepted bad value) in an earlier build.
"""

from __future__ import annotations

import pytest
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from litestar import Litestar, get, post
from litestar.params import FromPath, JSONBody
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import session_scope
from app.core.settings import Settings
from app.main import create_app
from app.users.models import User
from app.users.services import UserService
from tests.conftest import Login, MakeUser
from tests.helpers import PASSWORD, bearer

pytestmark = pytest.mark.anyio

NUL = "\x00"


def signup(username: str = "ann", **overrides: object) -> dict[str, object]:
    return {"name": "Ann Smith", "username": username, "email": f"{username}@example.com", "password": PASSWORD} | (
        overrides
    )


def assert_validation_error(response: object, key: str | None = None) -> None:
    assert response.status_code == 422, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["detail"].startswith("Validation failed for ")
    if key is not None:
        assert [item["key"] for item in body["extra"]] == [key]


# --- whole-value patterns -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"username": "admin\n"}, "username"),
        ({"username": "me\n"}, "username"),
        ({"email": "a@b.co\n"}, "email"),
        ({"username": "\nadmin"}, "username"),
    ],
    ids=["username + newline", "reserved name + newline", "email + newline", "newline + username"],
)
async def test_patterns_match_the_whole_value(
    client: AsyncTestClient[Litestar], make_user: MakeUser, overrides: dict[str, object], key: str
) -> None:
    await make_user("admin", email="a@b.co")
    assert_validation_error(await client.post("/api/v1/user", json=signup("bob") | overrides), key)


async def test_a_trailing_newline_is_no_way_round_a_taken_email_on_update(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login
) -> None:
    await make_user("ann")
    await make_user("bob")
    token = await login("bob")
    response = await client.patch("/api/v1/user/bob", json={"email": "ann@example.com\n"}, headers=bearer(token))
    assert_validation_error(response, "email")


async def test_free_text_keeps_its_newlines(client: AsyncTestClient[Litestar]) -> None:
    response = await client.post("/api/v1/user", json=signup(name="Ann\nSmith\n"))
    assert response.status_code == 201
    assert response.json()["name"] == "Ann\nSmith\n"


# --- NUL ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["name", "password", "username", "email"])
async def test_nul_in_a_json_body_is_422(client: AsyncTestClient[Litestar], field: str) -> None:
    body = signup()
    body[field] = f"{body[field]}{NUL}x"
    assert_validation_error(await client.post("/api/v1/user", json=body), field)


async def test_nul_in_an_update_is_422(client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login) -> None:
    await make_user("ann")
    token = await login("ann")
    for field, value in [("name", f"An{NUL}n"), ("profile_image_url", f"https://a.b/{NUL}")]:
        response = await client.patch("/api/v1/user/ann", json={field: value}, headers=bearer(token))
        assert_validation_error(response, field)


@pytest.mark.parametrize(
    "form",
    [{"username": f"ann{NUL}", "password": PASSWORD}, {"username": "ann", "password": f"{PASSWORD}{NUL}"}],
    ids=["username", "password"],
)
async def test_nul_in_the_login_form_is_an_unknown_account(
    client: AsyncTestClient[Litestar], make_user: MakeUser, form: dict[str, str]
) -> None:
    await make_user("ann")
    response = await client.post("/api/v1/login", data=form)
    assert response.status_code == 401
    assert response.json() == {"status_code": 401, "detail": "Wrong username, email or password."}
    email = await client.post("/api/v1/login", data={"username": f"ann@example.com{NUL}", "password": PASSWORD})
    assert email.status_code == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/user/ann%00"),
        ("GET", "/api/v1/user/ann%00/tier"),
        ("PATCH", "/api/v1/user/ann%00"),
        ("DELETE", "/api/v1/user/ann%00"),
        ("DELETE", "/api/v1/db_user/ann%00"),
        ("GET", "/api/v1/user/ann%00/rate_limits"),
        ("PATCH", "/api/v1/user/ann%00/tier"),
    ],
)
async def test_nul_in_a_path_is_the_routes_404(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, method: str, path: str
) -> None:
    await make_user("boss", superuser=True)
    token = await login("boss")
    body = {"tier_id": 1} if path.endswith("/tier") else {}
    response = await client.request(method, path, headers=bearer(token), json=body if method == "PATCH" else None)
    assert response.status_code == 404, response.text
    assert response.json() == {"status_code": 404, "detail": "User not found"}


# --- integers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("page=63085878583530217472", "page"),
        ("page=2147483648", "page"),
        ("items_per_page=18446744073709551617", "items_per_page"),
        ("page=-9223372036854775809", "page"),
    ],
)
async def test_integers_beyond_the_column_range_are_422_in_queries(
    client: AsyncTestClient[Litestar], query: str, key: str
) -> None:
    response = await client.get(f"/api/v1/users?{query}")
    assert response.status_code == 422
    assert [(item["key"], item["source"]) for item in response.json()["extra"]] == [(key, "query")]


async def test_the_last_page_number_is_answered(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/api/v1/users?page=2147483647&items_per_page=100")
    assert response.status_code == 200
    assert response.json()["data"] == []


@pytest.mark.parametrize("tier_id", [2**63, 2**31, 0, -1])
async def test_integers_beyond_the_column_range_are_422_in_bodies(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, tier_id: int
) -> None:
    await make_user("boss", superuser=True)
    token = await login("boss")
    response = await client.patch("/api/v1/user/boss/tier", json={"tier_id": tier_id}, headers=bearer(token))
    assert_validation_error(response, "tier_id")


# --- URLs and nesting -----------------------------------------------------------------------------------------


async def test_urls_are_at_most_2048_characters(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login
) -> None:
    await make_user("ann")
    token = await login("ann")
    base = "https://example.com/"
    longest = base + "a" * (2048 - len(base))
    ok = await client.patch("/api/v1/user/ann", json={"profile_image_url": longest}, headers=bearer(token))
    assert ok.status_code == 200
    too_long = await client.patch("/api/v1/user/ann", json={"profile_image_url": f"{longest}a"}, headers=bearer(token))
    assert_validation_error(too_long, "profile_image_url")


@pytest.mark.parametrize(
    "body",
    ["[" * 100_000, '{"name": ' + '{"a": ' * 10_000 + "1" + "}" * 10_000 + "}"],
    ids=["unclosed arrays", "nested objects"],
)
async def test_deeply_nested_json_is_422(client: AsyncTestClient[Litestar], body: str) -> None:
    response = await client.post("/api/v1/user", content=body, headers={"Content-Type": "application/json"})
    assert_validation_error(response, "body")


# --- advanced-alchemy's errors --------------------------------------------------------------------------------


@pytest.fixture
def app_with_service_routes(settings: Settings) -> Litestar:
    """The app plus two routes that call the user service the way a feature would, without any try/except."""
    app = create_app(settings)
    alchemy: SQLAlchemyAsyncConfig = app.state.alchemy

    @get("/probe/users/{user_id:int}", exclude_from_auth=True)
    async def get_user(user_id: FromPath[int]) -> dict[str, str]:
        async with session_scope(alchemy) as session:
            user = await UserService(session=session).get(user_id)
        return {"username": user.username}

    @post("/probe/users", exclude_from_auth=True, status_code=201)
    async def create_user(data: JSONBody[dict[str, str]]) -> dict[str, int]:
        async with session_scope(alchemy) as session:
            user = await UserService(session=session).create(
                {**data, "name": "Copy", "hashed_password": "x"}, auto_commit=False
            )
            return {"id": user.id}

    app.register(get_user)
    app.register(create_user)
    return app


async def test_a_missing_row_from_service_get_is_the_services_404(
    app_with_service_routes: Litestar, make_user: MakeUser
) -> None:
    await make_user("ann")
    async with AsyncTestClient(app_with_service_routes) as client:
        assert (await client.get("/probe/users/1")).json() == {"username": "ann"}
        response = await client.get("/probe/users/999")
    assert response.status_code == 404
    assert response.json() == {"status_code": 404, "detail": "User not found"}


async def test_a_duplicate_from_service_create_is_422_not_500(
    app_with_service_routes: Litestar, make_user: MakeUser, db_session: AsyncSession
) -> None:
    await make_user("ann")
    async with AsyncTestClient(app_with_service_routes) as client:
        response = await client.post("/probe/users", json={"username": "ann", "email": "ann@example.com"})
    assert response.status_code == 422
    body = response.json()
    assert list(body) == ["status_code", "detail"]
    assert "ann@example.com" not in body["detail"]  # no SQL or values leak into the message
    assert await db_session.scalar(select(func.count()).select_from(User)) == 1

"""U1–U10 (SPEC §4.3)."""

from __future__ import annotations

import re

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import TokenBlacklist
from app.posts.models import Post
from app.tiers.models import RateLimit, Tier
from app.users.models import User
from app.users.schemas import RESERVED_USERNAMES
from tests.conftest import Login, MakeUser
from tests.helpers import PASSWORD, bearer, claims

pytestmark = pytest.mark.anyio

USER_READ_KEYS = ["id", "name", "username", "email", "profile_image_url", "tier_id"]


def signup(username: str = "ann", **overrides: object) -> dict[str, object]:
    return {
        "name": "Ann Smith",
        "username": username,
        "email": f"{username}@example.com",
        "password": PASSWORD,
    } | overrides


async def make_tier(db_session: AsyncSession, name: str = "pro", limits: int = 0) -> Tier:
    tier = Tier(name=name)
    db_session.add(tier)
    await db_session.flush()
    for index in range(limits):
        db_session.add(RateLimit(tier_id=tier.id, name=f"{name}-{index}", path=f"api_v1_p{index}", limit=10, period=60))
    await db_session.commit()
    return tier


# --- U1 register --------------------------------------------------------------------------------------------


async def test_register_creates_a_user(client: AsyncTestClient[Litestar], db_session: AsyncSession) -> None:
    response = await client.post("/api/v1/user", json=signup(email="Ann@Example.COM"))
    assert response.status_code == 201
    body = response.json()
    assert list(body) == USER_READ_KEYS
    assert body == {
        "id": 1,
        "name": "Ann Smith",
        "username": "ann",
        "email": "Ann@example.com",
        "profile_image_url": "https://profileimageurl.com",
        "tier_id": None,
    }
    user = (await db_session.scalars(select(User))).one()
    assert user.hashed_password.startswith("$argon2id$")
    assert user.is_superuser is False
    assert user.updated_at is None
    assert user.created_at.tzinfo is not None


async def test_register_checks_email_before_username(client: AsyncTestClient[Litestar], make_user: MakeUser) -> None:
    await make_user("ann", email="ann@example.com")
    both = await client.post("/api/v1/user", json=signup("ann", email="ANN@EXAMPLE.COM".lower()))
    assert both.status_code == 422
    assert both.json() == {"status_code": 422, "detail": "Email is already registered"}
    name = await client.post("/api/v1/user", json=signup("ann", email="other@example.com"))
    assert name.json() == {"status_code": 422, "detail": "Username not available"}


async def test_soft_deleted_users_keep_their_name_and_email(
    client: AsyncTestClient[Litestar], make_user: MakeUser
) -> None:
    await make_user("gone", deleted=True)
    assert (await client.post("/api/v1/user", json=signup("gone", email="new@example.com"))).status_code == 422
    assert (await client.post("/api/v1/user", json=signup("fresh", email="gone@example.com"))).status_code == 422


@pytest.mark.parametrize(
    "username", ["me", "user", "users", "tier", "tiers", "tasks", "login", "logout", "refresh", "health"]
)
async def test_reserved_usernames_are_not_available(client: AsyncTestClient[Litestar], username: str) -> None:
    response = await client.post("/api/v1/user", json=signup(username))
    assert response.status_code == 422
    assert response.json()["detail"] == "Username not available"


def test_every_static_segment_beside_username_is_reserved(app: Litestar) -> None:
    """Static path segments win over ``{username}`` in routing (SPEC §4.1): a new route such as
    ``/api/v1/stats`` beside ``/api/v1/{username}/post`` makes "stats" a name nobody may register."""
    templates = [route.path.split("/") for route in app.routes]
    beside: set[str] = set()
    for parts in templates:
        for position, part in enumerate(parts):
            if part.startswith("{username"):
                beside |= {
                    other[position]
                    for other in templates
                    if len(other) > position and other[:position] == parts[:position] and "{" not in other[position]
                }
    possible_usernames = {segment for segment in beside if re.fullmatch(r"[a-z0-9]{2,20}", segment)}
    assert "me" in possible_usernames  # /api/v1/user/me beside /api/v1/user/{username}
    assert possible_usernames <= RESERVED_USERNAMES


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"name": "A"}, "name"),
        ({"name": "A" * 31}, "name"),
        ({"username": "Ann"}, "username"),
        ({"username": "a"}, "username"),
        ({"username": "a" * 21}, "username"),
        ({"username": "ann-smith"}, "username"),
        ({"email": "not-an-email"}, "email"),
        ({"email": f"{'a' * 40}@example.com"}, "email"),
        ({"password": "short"}, "password"),
        ({"password": "p" * 129}, "password"),
        ({"profile_image_url": "https://example.com/a.png"}, "profile_image_url"),
        ({"name": None}, "name"),
    ],
)
async def test_register_validation_errors_are_422_with_the_field(
    client: AsyncTestClient[Litestar], overrides: dict[str, object], key: str
) -> None:
    response = await client.post("/api/v1/user", json=signup(**overrides))
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "Validation failed for POST /api/v1/user"
    assert [(item["key"], item["source"]) for item in body["extra"]] == [(key, "body")]


async def test_register_without_a_field_and_with_malformed_json(client: AsyncTestClient[Litestar]) -> None:
    missing = await client.post("/api/v1/user", json={k: v for k, v in signup().items() if k != "email"})
    assert missing.status_code == 422
    assert missing.json()["extra"][0]["key"] == "email"
    malformed = await client.post("/api/v1/user", content=b"{not json", headers={"Content-Type": "application/json"})
    assert malformed.status_code == 422
    assert malformed.json()["extra"][0]["source"] == "body"


# --- U2 list, U3 me, U4 read --------------------------------------------------------------------------------


async def test_users_page_excludes_deleted_users_and_orders_by_id(
    client: AsyncTestClient[Litestar], make_user: MakeUser
) -> None:
    for name in ("aa", "bb", "cc"):
        await make_user(name)
    await make_user("gone", deleted=True)
    first = await client.get("/api/v1/users", params={"page": 1, "items_per_page": 2})
    assert first.status_code == 200
    body = first.json()
    assert list(body) == ["data", "total_count", "has_more", "page", "items_per_page"]
    assert [user["username"] for user in body["data"]] == ["aa", "bb"]
    assert (body["total_count"], body["has_more"], body["page"], body["items_per_page"]) == (3, True, 1, 2)
    second = (await client.get("/api/v1/users?page=2&items_per_page=2")).json()
    assert [user["username"] for user in second["data"]] == ["cc"]
    assert second["has_more"] is False
    past_end = (await client.get("/api/v1/users?page=9")).json()
    assert past_end["data"] == []
    assert (past_end["total_count"], past_end["has_more"]) == (3, False)  # still counts every matching row
    default = (await client.get("/api/v1/users/")).json()
    assert (default["page"], default["items_per_page"], default["total_count"]) == (1, 10, 3)


@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("page=0", "page"),
        ("items_per_page=0", "items_per_page"),
        ("items_per_page=101", "items_per_page"),
        ("page=x", "page"),
    ],
)
async def test_pagination_bounds_are_422(client: AsyncTestClient[Litestar], query: str, key: str) -> None:
    response = await client.get(f"/api/v1/users?{query}")
    assert response.status_code == 422
    assert [(item["key"], item["source"]) for item in response.json()["extra"]] == [(key, "query")]


@pytest.mark.parametrize("path", ["/api/v1/user/me", "/api/v1/user/me/"])
async def test_me_returns_the_caller(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, path: str
) -> None:
    await make_user("ann")
    response = await client.get(path, headers=bearer(await login("ann")))
    assert response.status_code == 200
    assert response.json()["username"] == "ann"
    assert response.headers["cache-control"] == "private, max-age=30"
    anonymous = await client.get(path)
    assert anonymous.status_code == 401
    assert anonymous.json()["detail"] == "Not authenticated"
    assert anonymous.headers["www-authenticate"] == "Bearer"


async def test_me_only_answers_get(client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login) -> None:
    await make_user("ann")
    token = await login("ann")
    for method in ("PATCH", "DELETE", "POST"):
        response = await client.request(method, "/api/v1/user/me", headers=bearer(token), json={})
        assert response.status_code == 405, method


async def test_read_user(client: AsyncTestClient[Litestar], make_user: MakeUser) -> None:
    await make_user("ann")
    await make_user("gone", deleted=True)
    assert (await client.get("/api/v1/user/ann")).json()["username"] == "ann"
    for name in ("nobody", "gone"):
        response = await client.get(f"/api/v1/user/{name}")
        assert response.status_code == 404
        assert response.json() == {"status_code": 404, "detail": "User not found"}


# --- U5 update ----------------------------------------------------------------------------------------------


async def test_owner_updates_only_the_fields_sent(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, db_session: AsyncSession
) -> None:
    user = await make_user("ann")
    token = await login("ann")
    response = await client.patch(
        "/api/v1/user/ann",
        headers=bearer(token),
        json={"name": "Annie", "email": "Annie@Example.COM", "profile_image_url": "https://img.example.com/a.png"},
    )
    assert response.status_code == 200
    assert response.json() == {"message": "User updated"}
    await db_session.refresh(user)
    assert (user.name, user.email, user.username) == ("Annie", "Annie@example.com", "ann")
    assert user.profile_image_url == "https://img.example.com/a.png"
    assert user.updated_at is not None


async def test_an_empty_update_only_touches_updated_at(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, db_session: AsyncSession
) -> None:
    user = await make_user("ann")
    response = await client.patch("/api/v1/user/ann", headers=bearer(await login("ann")), json={})
    assert response.status_code == 200
    await db_session.refresh(user)
    assert user.updated_at is not None
    assert user.name == "Ann"


async def test_update_order_404_then_403_then_conflicts(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login
) -> None:
    await make_user("ann")
    await make_user("bob")
    await make_user("boss", superuser=True)
    await make_user("gone", deleted=True)
    token = await login("ann")
    assert (await client.patch("/api/v1/user/nobody", headers=bearer(token), json={})).json()["detail"] == (
        "User not found"
    )
    for target in ("bob", "gone"):
        forbidden = await client.patch(f"/api/v1/user/{target}", headers=bearer(token), json={})
        assert forbidden.status_code == 403
        assert forbidden.json()["detail"] == "Request forbidden -- authorization will not help"
    boss = await client.patch("/api/v1/user/ann", headers=bearer(await login("boss")), json={"name": "Hacked"})
    assert boss.status_code == 403

    taken = await client.patch("/api/v1/user/ann", headers=bearer(token), json={"username": "bob"})
    assert (taken.status_code, taken.json()["detail"]) == (422, "Username not available")
    reserved = await client.patch("/api/v1/user/ann", headers=bearer(token), json={"username": "tiers"})
    assert reserved.json()["detail"] == "Username not available"
    email = await client.patch("/api/v1/user/ann", headers=bearer(token), json={"email": "bob@example.com"})
    assert (email.status_code, email.json()["detail"]) == (422, "Email is already registered")
    same = await client.patch(
        "/api/v1/user/ann", headers=bearer(token), json={"username": "ann", "email": "ann@example.com"}
    )
    assert same.status_code == 200


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"name": None}, "name"),
        ({"username": None}, "username"),
        ({"email": None}, "email"),
        ({"profile_image_url": None}, "profile_image_url"),
        ({"profile_image_url": "not a url"}, "profile_image_url"),
        ({"is_superuser": True}, "is_superuser"),
        ({"tier_id": 1}, "tier_id"),
    ],
)
async def test_update_validation(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, body: dict[str, object], key: str
) -> None:
    await make_user("ann")
    response = await client.patch("/api/v1/user/ann", headers=bearer(await login("ann")), json=body)
    assert response.status_code == 422
    assert [(item["key"], item["source"]) for item in response.json()["extra"]] == [(key, "body")]


async def test_update_requires_a_token_before_validating(client: AsyncTestClient[Litestar]) -> None:
    response = await client.patch("/api/v1/user/ann", json={"name": None})
    assert response.status_code == 401
    assert response.json()["detail"] == "Not authenticated"


async def test_renaming_invalidates_the_old_tokens(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login
) -> None:
    await make_user("ann")
    token = await login("ann")
    assert (await client.patch("/api/v1/user/ann", headers=bearer(token), json={"username": "anne"})).status_code == 200
    assert (await client.get("/api/v1/user/me", headers=bearer(token))).status_code == 401
    assert (await client.get("/api/v1/user/anne")).status_code == 200
    assert (await client.get("/api/v1/user/me", headers=bearer(await login("anne")))).status_code == 200


# --- U6 delete own account, U7 erase ------------------------------------------------------------------------


async def test_deleting_ones_account_soft_deletes_and_revokes_both_tokens(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, db_session: AsyncSession
) -> None:
    user = await make_user("ann")
    token = await login("ann")
    refresh = client.cookies["refresh_token"]
    response = await client.delete("/api/v1/user/ann", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"message": "User deleted"}
    assert 'refresh_token=""' in response.headers["set-cookie"]
    assert "Max-Age=0" in response.headers["set-cookie"]

    await db_session.refresh(user)
    assert user.is_deleted is True
    assert user.deleted_at is not None
    revoked = set((await db_session.scalars(select(TokenBlacklist.token))).all())
    assert revoked == {claims(token)["jti"], claims(refresh)["jti"]}
    assert (await client.get("/api/v1/user/me", headers=bearer(token))).status_code == 401
    assert (await client.post("/api/v1/refresh", headers={"Cookie": f"refresh_token={refresh}"})).status_code == 401
    assert (await client.post("/api/v1/user", json=signup("ann", email="new@example.com"))).status_code == 422


async def test_deleting_without_a_refresh_cookie_sets_no_cookie(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login
) -> None:
    await make_user("ann")
    token = await login("ann")
    client.cookies.clear()
    response = await client.delete("/api/v1/user/ann", headers=bearer(token))
    assert response.status_code == 200
    assert "set-cookie" not in response.headers


async def test_deleting_someone_else_is_403_and_unknown_is_404(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login
) -> None:
    await make_user("ann")
    await make_user("bob")
    token = await login("ann")
    assert (await client.delete("/api/v1/user/bob", headers=bearer(token))).status_code == 403
    missing = await client.delete("/api/v1/user/nobody", headers=bearer(token))
    assert (missing.status_code, missing.json()["detail"]) == (404, "User not found")


async def test_superuser_erases_a_user_with_their_posts(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, db_session: AsyncSession
) -> None:
    await make_user("boss", superuser=True)
    ann = await make_user("ann", deleted=True)
    db_session.add(Post(created_by_user_id=ann.id, title="Hello", text="World"))
    await db_session.commit()
    token = await login("boss")

    response = await client.delete("/api/v1/db_user/ann", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"message": "User deleted from the database"}
    db_session.expire_all()
    assert (await db_session.scalars(select(User.username))).all() == ["boss"]
    assert (await db_session.scalars(select(Post))).all() == []
    assert (await client.get("/api/v1/user/me", headers=bearer(token))).status_code == 200
    again = await client.delete("/api/v1/db_user/ann", headers=bearer(token))
    assert (again.status_code, again.json()["detail"]) == (404, "User not found")


# --- superuser-only routes: 401 → 403 → lookups -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("DELETE", "/api/v1/db_user/ann", None),
        ("GET", "/api/v1/user/ann/rate_limits", None),
        ("PATCH", "/api/v1/user/ann/tier", {"tier_id": "not-an-int"}),
    ],
)
async def test_superuser_routes_reject_anonymous_and_normal_users(
    client: AsyncTestClient[Litestar],
    make_user: MakeUser,
    login: Login,
    method: str,
    path: str,
    body: dict[str, object] | None,
) -> None:
    await make_user("ann")
    anonymous = await client.request(method, path, json=body)
    assert (anonymous.status_code, anonymous.json()["detail"]) == (401, "Not authenticated")
    normal = await client.request(method, path, json=body, headers=bearer(await login("ann")))
    assert (normal.status_code, normal.json()["detail"]) == (403, "You do not have enough privileges.")


# --- U8 rate limits, U9/U10 tier ----------------------------------------------------------------------------


async def test_user_rate_limits_list_the_tier_limits(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, db_session: AsyncSession
) -> None:
    tier = await make_tier(db_session, limits=2)
    await make_user("boss", superuser=True)
    await make_user("ann", tier_id=tier.id)
    await make_user("bob")
    token = await login("boss")

    response = await client.get("/api/v1/user/ann/rate_limits", headers=bearer(token))
    assert response.status_code == 200
    body = response.json()
    assert list(body) == [*USER_READ_KEYS, "tier_rate_limits"]
    assert body["tier_id"] == tier.id
    assert body["tier_rate_limits"] == [
        {"path": "api_v1_p0", "limit": 10, "period": 60, "id": 1, "tier_id": tier.id, "name": "pro-0"},
        {"path": "api_v1_p1", "limit": 10, "period": 60, "id": 2, "tier_id": tier.id, "name": "pro-1"},
    ]
    assert (await client.get("/api/v1/user/bob/rate_limits", headers=bearer(token))).json()["tier_rate_limits"] == []
    missing = await client.get("/api/v1/user/nobody/rate_limits", headers=bearer(token))
    assert (missing.status_code, missing.json()["detail"]) == (404, "User not found")


async def test_user_tier_is_public_and_null_without_a_tier(
    client: AsyncTestClient[Litestar], make_user: MakeUser, db_session: AsyncSession
) -> None:
    tier = await make_tier(db_session)
    await make_user("ann", tier_id=tier.id)
    await make_user("bob")
    await make_user("gone", deleted=True)
    with_tier = (await client.get("/api/v1/user/ann/tier")).json()
    assert list(with_tier) == [*USER_READ_KEYS, "tier_name", "tier_created_at"]
    assert (with_tier["tier_id"], with_tier["tier_name"]) == (tier.id, "pro")
    assert with_tier["tier_created_at"].endswith("Z")
    without = (await client.get("/api/v1/user/bob/tier")).json()
    assert (without["tier_id"], without["tier_name"], without["tier_created_at"]) == (None, None, None)
    assert (await client.get("/api/v1/user/gone/tier")).status_code == 404


async def test_superuser_sets_a_users_tier(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, db_session: AsyncSession
) -> None:
    tier = await make_tier(db_session)
    await make_user("boss", superuser=True)
    ann = await make_user("ann")
    token = await login("boss")

    response = await client.patch(
        "/api/v1/user/ann/tier", headers=bearer(token), json={"tier_id": tier.id, "ignored": True}
    )
    assert response.status_code == 200
    assert response.json() == {"message": "User Ann Tier updated"}
    await db_session.refresh(ann)
    assert ann.tier_id == tier.id

    no_tier = await client.patch("/api/v1/user/ann/tier", headers=bearer(token), json={"tier_id": 999})
    assert (no_tier.status_code, no_tier.json()["detail"]) == (404, "Tier not found")
    no_user = await client.patch("/api/v1/user/nobody/tier", headers=bearer(token), json={"tier_id": 999})
    assert (no_user.status_code, no_user.json()["detail"]) == (404, "User not found")
    invalid = await client.patch("/api/v1/user/ann/tier", headers=bearer(token), json={})
    assert invalid.status_code == 422


async def test_deleting_a_tier_leaves_users_without_one(
    client: AsyncTestClient[Litestar], make_user: MakeUser, db_session: AsyncSession
) -> None:
    tier = await make_tier(db_session, limits=1)
    ann_id = (await make_user("ann", tier_id=tier.id)).id
    await db_session.delete(tier)
    await db_session.commit()
    db_session.expire_all()
    assert (await db_session.scalar(select(User.tier_id).where(User.id == ann_id))) is None
    assert (await db_session.scalars(select(RateLimit))).all() == []


async def test_validation_errors_list_every_failing_field(client: AsyncTestClient[Litestar]) -> None:
    response = await client.post(
        "/api/v1/user", json={"name": "A", "username": "Not Valid", "password": "short", "color": "red"}
    )
    assert response.status_code == 422
    assert [(item["key"], item["source"]) for item in response.json()["extra"]] == [
        ("name", "body"),
        ("username", "body"),
        ("email", "body"),
        ("password", "body"),
        ("color", "body"),
    ]

"""T1–T5 and R1–R5 (SPEC §4.5, §4.6), and the path sanitisation of §5.1."""

from __future__ import annotations

from typing import Any

import pytest
from httpx import Response
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import UnprocessableError
from app.core.paths import sanitize_path
from app.tiers.models import RateLimit, Tier
from app.tiers.schemas import RateLimitCreate, TierCreate
from app.tiers.services import RateLimitService, TierService
from app.users.models import User
from tests.conftest import Login, MakeUser
from tests.helpers import bearer

pytestmark = pytest.mark.anyio

TIER_READ_KEYS = ["name", "id", "created_at"]
RATE_LIMIT_READ_KEYS = ["path", "limit", "period", "id", "tier_id", "name"]
PAGE_KEYS = ["data", "total_count", "has_more", "page", "items_per_page"]
TASKS = {"path": "/api/v1/tasks/task/", "limit": 10, "period": 3600}

Headers = dict[str, str]


@pytest.fixture
async def admin(make_user: MakeUser, login: Login) -> Headers:
    await make_user("boss", superuser=True)
    return bearer(await login("boss"))


@pytest.fixture
async def normal_user(make_user: MakeUser, login: Login) -> Headers:
    await make_user("ann")
    return bearer(await login("ann"))


def error(response: Response, status: int, detail: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"status_code": status, "detail": detail}


def validation_error(response: Response, key: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["detail"].startswith("Validation failed for ")
    assert [item["key"] for item in body["extra"]] == [key]


async def make_tier(client: AsyncTestClient[Litestar], admin: Headers, name: str = "pro") -> dict[str, Any]:
    response = await client.post("/api/v1/tier", json={"name": name}, headers=admin)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def make_limit(
    client: AsyncTestClient[Litestar], admin: Headers, tier: str = "pro", **body: Any
) -> dict[str, Any]:
    response = await client.post(f"/api/v1/tier/{tier}/rate_limit", json=TASKS | body, headers=admin)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# --- §5.1 sanitize_path -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/v1/tasks/task", "api_v1_tasks_task"),
        ("api/v1/tasks/task/", "api_v1_tasks_task"),
        ("//a//b//", "a__b"),
        ("api_v1_tasks_task", "api_v1_tasks_task"),
        ("/Api/V1/", "Api_V1"),
        ("///", ""),
    ],
)
def test_sanitize_path_follows_the_spec_table(path: str, expected: str) -> None:
    assert sanitize_path(path) == expected
    assert sanitize_path(sanitize_path(path)) == expected


# --- auth on every write ------------------------------------------------------------------------------------

WRITES = [
    ("POST", "/api/v1/tier", {"name": "x"}),
    ("PATCH", "/api/v1/tier/pro", {"name": "x"}),
    ("DELETE", "/api/v1/tier/pro", None),
    ("POST", "/api/v1/tier/pro/rate_limit", TASKS),
    ("PATCH", "/api/v1/tier/pro/rate_limit/1", {"limit": 1}),
    ("DELETE", "/api/v1/tier/pro/rate_limit/1", None),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
async def test_writes_need_a_token_then_a_superuser(
    client: AsyncTestClient[Litestar],
    admin: Headers,
    normal_user: Headers,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    await make_tier(client, admin)
    await make_limit(client, admin)
    anonymous = await client.request(method, path, json=body)
    error(anonymous, 401, "Not authenticated")
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    error(await client.request(method, path, json=body, headers=normal_user), 403, "You do not have enough privileges.")


# --- T1 create ----------------------------------------------------------------------------------------------


async def test_create_tier_returns_the_tier_and_ignores_unknown_fields(
    client: AsyncTestClient[Litestar], admin: Headers, db_session: AsyncSession
) -> None:
    response = await client.post("/api/v1/tier", json={"name": "pro", "colour": "gold"}, headers=admin)
    assert response.status_code == 201
    body = response.json()
    assert list(body) == TIER_READ_KEYS
    assert body["name"] == "pro"
    assert body["id"] == 1
    assert body["created_at"].endswith("Z")
    tier = (await db_session.scalars(select(Tier))).one()
    assert tier.updated_at is None


async def test_create_tier_rejects_a_taken_name(client: AsyncTestClient[Litestar], admin: Headers) -> None:
    await make_tier(client, admin)
    error(await client.post("/api/v1/tier", json={"name": "pro"}, headers=admin), 422, "Tier Name not available")


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": "a\x00b"}, {"name": None}, {"name": "x" * 256}])
async def test_create_tier_validates_the_name(
    client: AsyncTestClient[Litestar], admin: Headers, body: dict[str, Any]
) -> None:
    validation_error(await client.post("/api/v1/tier", json=body, headers=admin), "name")


# --- T2 list, T3 read ---------------------------------------------------------------------------------------


async def test_list_tiers_is_paginated_by_id(client: AsyncTestClient[Litestar], admin: Headers) -> None:
    for name in ("free", "pro", "max"):
        await make_tier(client, admin, name)
    first = await client.get("/api/v1/tiers", params={"items_per_page": 2})
    assert first.status_code == 200
    body = first.json()
    assert list(body) == PAGE_KEYS
    assert [tier["name"] for tier in body["data"]] == ["free", "pro"]
    assert list(body["data"][0]) == TIER_READ_KEYS
    assert (body["total_count"], body["has_more"], body["page"], body["items_per_page"]) == (3, True, 1, 2)
    second = (await client.get("/api/v1/tiers", params={"items_per_page": 2, "page": 2})).json()
    assert ([tier["name"] for tier in second["data"]], second["has_more"]) == (["max"], False)
    beyond = (await client.get("/api/v1/tiers", params={"page": 5})).json()
    assert (beyond["data"], beyond["total_count"], beyond["has_more"]) == ([], 3, False)
    validation_error(await client.get("/api/v1/tiers", params={"page": 0}), "page")


async def test_read_tier_is_public(client: AsyncTestClient[Litestar], admin: Headers) -> None:
    created = await make_tier(client, admin)
    response = await client.get("/api/v1/tier/pro/")
    assert response.status_code == 200
    assert response.json() == created


@pytest.mark.parametrize("name", ["nope", "pro%00"])
async def test_read_missing_tier_is_404(client: AsyncTestClient[Litestar], admin: Headers, name: str) -> None:
    await make_tier(client, admin)
    error(await client.get(f"/api/v1/tier/{name}"), 404, "Tier not found")


# --- T4 update ----------------------------------------------------------------------------------------------


async def test_update_tier_renames_it(
    client: AsyncTestClient[Litestar], admin: Headers, db_session: AsyncSession
) -> None:
    await make_tier(client, admin)
    response = await client.patch("/api/v1/tier/pro", json={"name": "gold", "x": 1}, headers=admin)
    assert response.status_code == 200
    assert response.json() == {"message": "Tier updated"}
    tier = (await db_session.scalars(select(Tier))).one()
    assert tier.name == "gold"
    assert tier.updated_at is not None
    error(await client.get("/api/v1/tier/pro"), 404, "Tier not found")


async def test_update_tier_to_its_own_name_or_nothing_is_no_conflict(
    client: AsyncTestClient[Litestar], admin: Headers
) -> None:
    await make_tier(client, admin)
    for body in ({"name": "pro"}, {}):
        response = await client.patch("/api/v1/tier/pro", json=body, headers=admin)
        assert response.json() == {"message": "Tier updated"}


async def test_update_tier_rejects_another_tiers_name(client: AsyncTestClient[Litestar], admin: Headers) -> None:
    await make_tier(client, admin, "free")
    await make_tier(client, admin, "pro")
    response = await client.patch("/api/v1/tier/pro", json={"name": "free"}, headers=admin)
    error(response, 422, "Tier Name not available")


@pytest.mark.parametrize("body", [{"name": None}, {"name": ""}, {"name": "\x00"}])
async def test_update_tier_validates_the_name(
    client: AsyncTestClient[Litestar], admin: Headers, body: dict[str, Any]
) -> None:
    await make_tier(client, admin)
    validation_error(await client.patch("/api/v1/tier/pro", json=body, headers=admin), "name")


async def test_update_missing_tier_is_404(client: AsyncTestClient[Litestar], admin: Headers) -> None:
    error(await client.patch("/api/v1/tier/pro", json={"name": "x"}, headers=admin), 404, "Tier not found")
    error(await client.patch("/api/v1/tier/pro%00", json={"name": "x"}, headers=admin), 404, "Tier not found")


# --- T5 delete ----------------------------------------------------------------------------------------------


async def test_delete_tier_cascades_to_rate_limits_and_users(
    client: AsyncTestClient[Litestar], admin: Headers, make_user: MakeUser, db_session: AsyncSession
) -> None:
    pro = await make_tier(client, admin)
    await make_tier(client, admin, "free")
    await make_limit(client, admin)
    await make_limit(client, admin, "free", name="free-tasks")
    await make_user("carl", tier_id=pro["id"])
    response = await client.delete("/api/v1/tier/pro", headers=admin)
    assert response.status_code == 200
    assert response.json() == {"message": "Tier deleted"}
    db_session.expire_all()
    assert (await db_session.scalars(select(Tier.name))).all() == ["free"]
    assert [limit.tier_id for limit in (await db_session.scalars(select(RateLimit))).all()] == [2]
    carl = (await db_session.scalars(select(User).where(User.username == "carl"))).one()
    assert carl.tier_id is None
    error(await client.delete("/api/v1/tier/pro", headers=admin), 404, "Tier not found")


async def test_delete_missing_tier_is_404(client: AsyncTestClient[Litestar], admin: Headers) -> None:
    error(await client.delete("/api/v1/tier/pro%00", headers=admin), 404, "Tier not found")


# --- R1 create ----------------------------------------------------------------------------------------------


async def test_create_rate_limit_sanitises_the_path_and_names_it(
    client: AsyncTestClient[Litestar], admin: Headers
) -> None:
    await make_tier(client, admin)
    response = await client.post("/api/v1/tier/pro/rate_limit", json=TASKS, headers=admin)
    assert response.status_code == 201
    body = response.json()
    assert list(body) == RATE_LIMIT_READ_KEYS
    assert body == {
        "path": "api_v1_tasks_task",
        "limit": 10,
        "period": 3600,
        "id": 1,
        "tier_id": 1,
        "name": "api_v1_tasks_task:10:3600",
    }


async def test_create_rate_limit_keeps_a_given_name_and_allows_limit_0(
    client: AsyncTestClient[Litestar], admin: Headers
) -> None:
    await make_tier(client, admin)
    body = await make_limit(client, admin, path="//a//b//", limit=0, period=1, name="blocked")
    assert (body["path"], body["limit"], body["period"], body["name"]) == ("a__b", 0, 1, "blocked")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"period": 0}, "period"),
        ({"period": 2**31}, "period"),
        ({"limit": -1}, "limit"),
        ({"limit": 2**31}, "limit"),
        ({"path": "///"}, "path"),
        ({"path": ""}, "path"),
        ({"path": "a\x00"}, "path"),
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_create_rate_limit_validates_the_body(
    client: AsyncTestClient[Litestar], admin: Headers, override: dict[str, Any], key: str
) -> None:
    await make_tier(client, admin)
    response = await client.post("/api/v1/tier/pro/rate_limit", json=TASKS | override, headers=admin)
    validation_error(response, key)


async def test_create_rate_limit_checks_the_tier_then_the_name_then_the_path(
    client: AsyncTestClient[Litestar], admin: Headers
) -> None:
    await make_tier(client, admin, "free")
    await make_tier(client, admin, "pro")
    await make_limit(client, admin, "free", name="shared")
    await make_limit(client, admin, "pro")
    url = "/api/v1/tier/{}/rate_limit"
    error(await client.post(url.format("nope"), json=TASKS, headers=admin), 404, "Tier not found")
    # "shared" is taken in another tier and the path in this one: the name is reported first.
    both = await client.post(url.format("pro"), json=TASKS | {"name": "shared"}, headers=admin)
    error(both, 422, "Rate Limit Name not available")
    path = await client.post(url.format("pro"), json=TASKS | {"path": "api/v1/tasks/task", "name": "n"}, headers=admin)
    error(path, 422, "Rate Limit Path already defined for this tier")
    # The default name of the same path and numbers is taken too.
    error(await client.post(url.format("free"), json=TASKS, headers=admin), 422, "Rate Limit Name not available")
    # A path is only unique within its tier.
    await make_tier(client, admin, "max")
    other_tier = await client.post(url.format("max"), json=TASKS | {"name": "max-tasks"}, headers=admin)
    assert other_tier.status_code == 201


# --- R2 list, R3 read ---------------------------------------------------------------------------------------


async def test_list_rate_limits_of_a_tier_is_paginated(client: AsyncTestClient[Litestar], admin: Headers) -> None:
    await make_tier(client, admin, "free")
    await make_tier(client, admin, "pro")
    await make_limit(client, admin, "free", path="other")
    for index in range(3):
        await make_limit(client, admin, "pro", path=f"p{index}")
    response = await client.get("/api/v1/tier/pro/rate_limits", params={"items_per_page": 2})
    assert response.status_code == 200
    body = response.json()
    assert list(body) == PAGE_KEYS
    assert [limit["path"] for limit in body["data"]] == ["p0", "p1"]
    assert list(body["data"][0]) == RATE_LIMIT_READ_KEYS
    assert (body["total_count"], body["has_more"], body["page"], body["items_per_page"]) == (3, True, 1, 2)
    last = (await client.get("/api/v1/tier/pro/rate_limits", params={"items_per_page": 2, "page": 2})).json()
    assert ([limit["path"] for limit in last["data"]], last["has_more"]) == (["p2"], False)
    error(await client.get("/api/v1/tier/nope/rate_limits"), 404, "Tier not found")
    error(await client.get("/api/v1/tier/pro%00/rate_limits"), 404, "Tier not found")


async def test_read_rate_limit_is_public(client: AsyncTestClient[Litestar], admin: Headers) -> None:
    await make_tier(client, admin)
    created = await make_limit(client, admin)
    response = await client.get("/api/v1/tier/pro/rate_limit/1")
    assert response.status_code == 200
    assert response.json() == created


async def test_read_rate_limit_404s(client: AsyncTestClient[Litestar], admin: Headers) -> None:
    await make_tier(client, admin, "free")
    await make_tier(client, admin, "pro")
    await make_limit(client, admin, "free")
    error(await client.get("/api/v1/tier/nope/rate_limit/1"), 404, "Tier not found")
    error(await client.get("/api/v1/tier/pro%00/rate_limit/1"), 404, "Tier not found")
    # A rate limit of another tier is as absent as a missing one.
    error(await client.get("/api/v1/tier/pro/rate_limit/1"), 404, "Rate Limit not found")
    for missing in (2, 0, -1, 2**40):
        error(await client.get(f"/api/v1/tier/free/rate_limit/{missing}"), 404, "Rate Limit not found")


@pytest.mark.parametrize("id_", ["abc", "1.5"])
async def test_a_non_integer_rate_limit_id_is_422(client: AsyncTestClient[Litestar], admin: Headers, id_: str) -> None:
    await make_tier(client, admin)
    response = await client.get(f"/api/v1/tier/pro/rate_limit/{id_}")
    assert response.status_code == 422
    assert [(item["key"], item["source"]) for item in response.json()["extra"]] == [("id", "path")]


# --- R4 update ----------------------------------------------------------------------------------------------


async def test_update_rate_limit_changes_only_what_is_sent(
    client: AsyncTestClient[Litestar], admin: Headers, db_session: AsyncSession
) -> None:
    await make_tier(client, admin)
    await make_limit(client, admin)
    response = await client.patch(
        "/api/v1/tier/pro/rate_limit/1", json={"path": "/api/v1/posts/", "limit": 0, "x": 1}, headers=admin
    )
    assert response.status_code == 200
    assert response.json() == {"message": "Rate Limit updated"}
    limit = (await db_session.scalars(select(RateLimit))).one()
    assert (limit.path, limit.limit, limit.period, limit.name) == ("api_v1_posts", 0, 3600, "api_v1_tasks_task:10:3600")
    assert limit.updated_at is not None


async def test_update_rate_limit_to_its_own_values_is_no_conflict(
    client: AsyncTestClient[Litestar], admin: Headers
) -> None:
    await make_tier(client, admin)
    created = await make_limit(client, admin)
    own = {"path": "api/v1/tasks/task/", "name": created["name"], "limit": 10, "period": 3600}
    for body in (own, {}):
        response = await client.patch("/api/v1/tier/pro/rate_limit/1", json=body, headers=admin)
        assert response.json() == {"message": "Rate Limit updated"}


async def test_update_rate_limit_rejects_another_limits_name_or_path(
    client: AsyncTestClient[Litestar], admin: Headers
) -> None:
    await make_tier(client, admin, "free")
    await make_tier(client, admin, "pro")
    await make_limit(client, admin, "free", name="elsewhere")
    await make_limit(client, admin, "pro", path="taken")
    mine = await make_limit(client, admin, "pro", path="mine")
    url = f"/api/v1/tier/pro/rate_limit/{mine['id']}"
    both = await client.patch(url, json={"name": "elsewhere", "path": "/taken/"}, headers=admin)
    error(both, 422, "Rate Limit Name not available")
    error(
        await client.patch(url, json={"path": "/taken/"}, headers=admin),
        422,
        "Rate Limit Path already defined for this tier",
    )
    # The path is only taken in this tier: "free" has no "mine".
    free_limit = await client.patch("/api/v1/tier/free/rate_limit/1", json={"path": "mine"}, headers=admin)
    assert free_limit.status_code == 200


@pytest.mark.parametrize(
    ("body", "key"),
    [({"name": None}, "name"), ({"path": None}, "path"), ({"limit": None}, "limit"), ({"period": 0}, "period")],
)
async def test_update_rate_limit_validates_the_body(
    client: AsyncTestClient[Litestar], admin: Headers, body: dict[str, Any], key: str
) -> None:
    await make_tier(client, admin)
    await make_limit(client, admin)
    validation_error(await client.patch("/api/v1/tier/pro/rate_limit/1", json=body, headers=admin), key)


async def test_update_rate_limit_404s(client: AsyncTestClient[Litestar], admin: Headers) -> None:
    await make_tier(client, admin, "free")
    await make_tier(client, admin, "pro")
    await make_limit(client, admin, "free")
    body = {"limit": 1}
    error(await client.patch("/api/v1/tier/nope/rate_limit/1", json=body, headers=admin), 404, "Tier not found")
    error(await client.patch("/api/v1/tier/pro/rate_limit/1", json=body, headers=admin), 404, "Rate Limit not found")
    huge = await client.patch(f"/api/v1/tier/free/rate_limit/{2**40}", json=body, headers=admin)
    error(huge, 404, "Rate Limit not found")


# --- R5 delete ----------------------------------------------------------------------------------------------


async def test_delete_rate_limit(client: AsyncTestClient[Litestar], admin: Headers, db_session: AsyncSession) -> None:
    await make_tier(client, admin, "free")
    await make_tier(client, admin, "pro")
    await make_limit(client, admin, "free")
    error(await client.delete("/api/v1/tier/pro/rate_limit/1", headers=admin), 404, "Rate Limit not found")
    error(await client.delete(f"/api/v1/tier/free/rate_limit/{2**40}", headers=admin), 404, "Rate Limit not found")
    error(await client.delete("/api/v1/tier/nope/rate_limit/1", headers=admin), 404, "Tier not found")
    response = await client.delete("/api/v1/tier/free/rate_limit/1", headers=admin)
    assert response.status_code == 200
    assert response.json() == {"message": "Rate Limit deleted"}
    assert (await db_session.scalars(select(RateLimit))).all() == []
    error(await client.delete("/api/v1/tier/free/rate_limit/1", headers=admin), 404, "Rate Limit not found")


# --- races (the pre-check passes, the UNIQUE constraint still rejects) --------------------------------------


async def never_taken(*_: Any, **__: Any) -> bool:
    return False


async def test_a_tier_name_lost_to_a_concurrent_request_is_the_same_422(
    db_session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_session.add(Tier(name="pro"))
    await db_session.commit()
    tiers = TierService(session=db_session)
    monkeypatch.setattr(tiers, "exists", never_taken)
    with pytest.raises(UnprocessableError) as rejected:
        await tiers.create_tier(TierCreate(name="pro"))
    assert rejected.value.detail == "Tier Name not available"
    assert (await db_session.scalars(select(Tier.name))).all() == ["pro"]  # the transaction is still usable


async def test_a_rate_limit_lost_to_a_concurrent_request_is_the_same_422(db_session: AsyncSession) -> None:
    tier = Tier(name="pro")
    db_session.add(tier)
    await db_session.flush()
    db_session.add(RateLimit(tier_id=tier.id, name="first", path="api_v1_x", limit=1, period=1))
    await db_session.commit()
    limits = RateLimitService(session=db_session)
    checks = iter([False, False, False, True])  # pre-checks pass; the re-check after the violation sees the path

    async def racing(*_: Any, **__: Any) -> bool:
        return next(checks)

    limits.exists = racing  # type: ignore[method-assign]
    with pytest.raises(UnprocessableError) as rejected:
        await limits.create_in("pro", RateLimitCreate(path="/api/v1/x", limit=1, period=1, name="second"))
    assert rejected.value.detail == "Rate Limit Path already defined for this tier"

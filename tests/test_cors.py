"""CORS from an explicit allow-list, and the Origin check of the auth routes (issue 13; notes §C6)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.core.settings import Settings, SettingsError
from app.main import create_app
from tests.conftest import MakeUser
from tests.helpers import PASSWORD, bearer

pytestmark = pytest.mark.anyio

AppClient = AsyncTestClient[Litestar]
APP, ADMIN, EVIL = "https://app.example.com", "https://admin.example.com", "https://evil.example"
OWN = "https://testserver.local"  # the test client's base URL
FORBIDDEN = {"status_code": 403, "detail": "Origin not allowed."}
MOUNTS = ["/api/v1", "/api/auth"]


@pytest.fixture
def app_with(settings_with: Callable[..., Settings]) -> Callable[..., Any]:
    """``async with app_with(CORS_ALLOW_ORIGINS=...) as client``."""

    @asynccontextmanager
    async def build(**env: str) -> AsyncIterator[AppClient]:
        async with AsyncTestClient(create_app(settings_with(**env)), base_url=OWN) as client:
            yield client

    return build


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type",
    }


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("access-control-")}


async def test_cors_is_off_by_default(app_with: Callable[..., Any]) -> None:
    # The default rate limit is 1 per minute: preflights must neither count nor be refused.
    async with app_with(DEFAULT_RATE_LIMIT_LIMIT="1") as client:
        simple = await client.get("/api/v1/health", headers={"Origin": APP})
        preflights = [await client.options("/api/v1/tasks/task", headers=preflight(APP)) for _ in range(3)]
        auth_preflight = await client.options("/api/v1/refresh", headers=preflight(EVIL))
        limited = await client.post("/api/v1/tasks/task", params={"message": "hi"})
    for response in (simple, *preflights, auth_preflight):
        assert cors_headers(response) == {}, response.headers
    assert [response.status_code for response in preflights] == [204] * 3  # not 405, not 429
    assert auth_preflight.status_code == 204  # the Origin guard is on the POST handlers only
    assert limited.headers["ratelimit-remaining"] == "0"  # this POST was the first request counted


async def test_a_listed_origin_gets_exactly_its_own_cors_headers(app_with: Callable[..., Any]) -> None:
    async with app_with(CORS_ALLOW_ORIGINS=f"{APP}, {ADMIN}/", DEFAULT_RATE_LIMIT_LIMIT="1") as client:
        preflights = [await client.options("/api/v1/tasks/task", headers=preflight(APP)) for _ in range(3)]
        simple = await client.get("/api/v1/health", headers={"Origin": ADMIN})
        limited = await client.post("/api/v1/tasks/task", params={"message": "hi"}, headers={"Origin": APP})
    allowed = preflights[0]
    assert [response.status_code for response in preflights] == [204] * 3
    assert allowed.headers["access-control-allow-origin"] == APP
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "Origin" in allowed.headers.get_list("vary")
    assert {"POST", "PATCH", "DELETE"} <= set(allowed.headers["access-control-allow-methods"].split(", "))
    assert {"authorization", "content-type"} <= set(allowed.headers["access-control-allow-headers"].split(", "))
    assert simple.headers["access-control-allow-origin"] == ADMIN
    assert "Origin" in simple.headers.get_list("vary")
    assert "ratelimit-remaining" in simple.headers["access-control-expose-headers"].lower()
    assert limited.headers["ratelimit-remaining"] == "0"  # the three preflights were not counted
    assert limited.headers["access-control-allow-origin"] == APP
    for response in (*preflights, simple, limited):
        assert "*" not in response.headers.get("access-control-allow-origin", "")


@pytest.mark.parametrize("origin", [EVIL, "https://app.example.com.evil.example", "http://app.example.com", "null"])
async def test_an_unlisted_origin_is_never_reflected(app_with: Callable[..., Any], origin: str) -> None:
    async with app_with(CORS_ALLOW_ORIGINS=APP) as client:
        refused_preflight = await client.options("/api/v1/tasks/task", headers=preflight(origin))
        simple = await client.get("/api/v1/health", headers={"Origin": origin})
    assert "access-control-allow-origin" not in refused_preflight.headers
    assert "access-control-allow-origin" not in simple.headers
    assert simple.status_code == 200  # CORS only tells the browser; the request itself is served


@pytest.mark.parametrize("origins", ["*", "https://*.example.com", "app.example.com", f"{APP}/path"])
def test_a_wildcard_or_malformed_origin_is_refused_at_startup(
    settings_with: Callable[..., Settings], origins: str
) -> None:
    with pytest.raises(SettingsError, match="CORS_ALLOW_ORIGINS"):
        create_app(settings_with(CORS_ALLOW_ORIGINS=origins))


async def log_in(client: AppClient, make_user: MakeUser) -> dict[str, str]:
    await make_user("ann")
    response = await client.post("/api/v1/login", data={"username": "ann", "password": PASSWORD})
    assert response.status_code == 200, response.text
    return bearer(response.json()["access_token"])


@pytest.mark.parametrize("mount", MOUNTS)
async def test_refresh_and_logout_refuse_a_foreign_origin_before_using_the_cookie(
    client: AppClient, make_user: MakeUser, mount: str
) -> None:
    auth = await log_in(client, make_user)
    cookie = client.cookies["refresh_token"]
    refused = [
        await client.post(f"{mount}/refresh", headers={"Origin": origin}) for origin in (EVIL, "null", "garbage")
    ]
    logout_refused = await client.post(f"{mount}/logout", headers={**auth, "Origin": EVIL})
    assert client.cookies["refresh_token"] == cookie  # nothing rotated or expired it
    for response in (*refused, logout_refused):
        assert response.status_code == 403
        assert response.json() == FORBIDDEN
        assert response.headers["cache-control"] == "no-store"
        assert "set-cookie" not in response.headers
    # The refused requests left both tokens usable: no Origin (curl, mobile apps) passes.
    refreshed = await client.post(f"{mount}/refresh")
    assert refreshed.status_code == 200
    assert (await client.post(f"{mount}/logout", headers=auth)).status_code == 200


async def test_an_invalid_cookie_from_a_foreign_origin_is_403_not_401(client: AppClient) -> None:
    client.cookies.set("refresh_token", "not-a-token", domain="testserver.local")
    foreign = await client.post("/api/v1/refresh", headers={"Origin": EVIL})
    own = await client.post("/api/v1/refresh", headers={"Origin": OWN})
    assert foreign.status_code == 403
    assert own.status_code == 401


@pytest.mark.parametrize("mount", MOUNTS)
async def test_the_apis_own_origin_and_listed_origins_pass(
    app_with: Callable[..., Any], make_user: MakeUser, mount: str
) -> None:
    async with app_with(CORS_ALLOW_ORIGINS=APP) as client:
        auth = await log_in(client, make_user)
        statuses = [
            (await client.post(f"{mount}/refresh", headers={"Origin": origin})).status_code
            for origin in (OWN, "https://TESTSERVER.local:443", APP)
        ]
        logout = await client.post(f"{mount}/logout", headers={**auth, "Origin": APP})
    assert statuses == [200, 200, 200]
    assert logout.status_code == 200


async def test_the_own_origin_behind_a_trusted_proxy_is_the_forwarded_one(
    app_with: Callable[..., Any], make_user: MakeUser
) -> None:
    # nginx terminates TLS: the app sees http and its upstream name, the browser https://api.example.com.
    proxied = {"Origin": "https://api.example.com", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"}
    async with app_with(FORWARDED_ALLOW_IPS="*") as client:
        await log_in(client, make_user)
        behind_proxy = await client.post("/api/v1/refresh", headers=proxied)
        wrong_scheme = await client.post("/api/v1/refresh", headers={**proxied, "X-Forwarded-Proto": "http"})
    async with app_with() as client:  # the test client's peer is not a trusted proxy: its headers are ignored
        untrusted = await client.post("/api/v1/refresh", headers=proxied)
    assert behind_proxy.status_code == 200
    assert wrong_scheme.status_code == 403
    assert untrusted.status_code == 403


async def test_login_refuses_a_foreign_origin(client: AppClient, make_user: MakeUser) -> None:
    """Login CSRF: a foreign page must not log the browser into an account the attacker controls."""
    await make_user("ann")
    form = {"username": "ann", "password": PASSWORD}
    foreign = await client.post("/api/v1/login", data=form, headers={"Origin": EVIL})
    own = await client.post("/api/auth/login", data=form, headers={"Origin": OWN})
    assert foreign.status_code == 403
    assert foreign.json() == FORBIDDEN
    assert "set-cookie" not in foreign.headers
    assert own.status_code == 200

"""Tokens really expire at their ``exp`` (SPEC §3.5 check 2: ``exp`` in the future, no leeway).

The app runs in the test's process, so moving the clock with time-machine moves it for the app and for
PyJWT's ``exp`` check too. The clock is frozen on a whole second: ``exp`` is a whole second as well, so the
last accepted and the first rejected moment are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.core.settings import Settings
from app.main import create_app
from tests.conftest import Login, MakeUser
from tests.helpers import PASSWORD, bearer, claims

pytestmark = pytest.mark.anyio

USER_NOT_AUTHENTICATED = {"status_code": 401, "detail": "User not authenticated."}
INVALID_REFRESH_TOKEN = {"status_code": 401, "detail": "Invalid refresh token."}


def whole_second_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


async def refresh_with(client: AsyncTestClient[Litestar], refresh_token: str) -> tuple[int, dict[str, object]]:
    response = await client.post("/api/v1/refresh", headers={"Cookie": f"refresh_token={refresh_token}"})
    return response.status_code, response.json()


async def test_an_access_token_is_accepted_until_its_exp_and_rejected_from_exp_on(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, settings: Settings
) -> None:
    await make_user("ann")
    start = whole_second_now()
    with time_machine.travel(start, tick=False) as traveller:
        access = await login("ann")
        exp = claims(access)["exp"]
        assert exp == start.timestamp() + settings.jwt.access_token_expire_minutes * 60
        assert (await client.get("/api/v1/user/me", headers=bearer(access))).status_code == 200

        traveller.move_to(datetime.fromtimestamp(exp - 1, UTC))
        assert (await client.get("/api/v1/user/me", headers=bearer(access))).status_code == 200

        traveller.move_to(datetime.fromtimestamp(exp, UTC))
        response = await client.get("/api/v1/user/me", headers=bearer(access))
        assert response.status_code == 401
        assert response.json() == USER_NOT_AUTHENTICATED


async def test_a_refresh_token_is_accepted_until_its_exp_and_rejected_from_exp_on(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, settings: Settings
) -> None:
    await make_user("ann")
    start = whole_second_now()
    with time_machine.travel(start, tick=False) as traveller:
        # Two logins in the same second: two refresh tokens with one `exp`, since a refresh rotates (uses up) one.
        await login("ann")
        used_just_before_exp = client.cookies["refresh_token"]
        client.cookies.clear()
        await login("ann")
        presented_at_exp = client.cookies["refresh_token"]
        client.cookies.clear()
        exp = claims(presented_at_exp)["exp"]
        assert claims(used_just_before_exp)["exp"] == exp
        assert exp == start.timestamp() + settings.jwt.refresh_token_expire_days * 86400

        traveller.move_to(datetime.fromtimestamp(exp - 1, UTC))
        response = await client.post("/api/v1/refresh", headers={"Cookie": f"refresh_token={used_just_before_exp}"})
        assert response.status_code == 200
        rotated = client.cookies["refresh_token"]
        client.cookies.clear()

        traveller.move_to(datetime.fromtimestamp(exp, UTC))
        assert await refresh_with(client, presented_at_exp) == (401, INVALID_REFRESH_TOKEN)
        # The rotated token, issued a second before, is still good: only the expired one is refused.
        assert (await refresh_with(client, rotated))[0] == 200


async def test_a_one_minute_access_token_works_at_59_seconds_and_expires_at_60(
    settings_with: Callable[..., Settings], make_user: MakeUser
) -> None:
    await make_user("ann")
    app = create_app(settings_with(ACCESS_TOKEN_EXPIRE_MINUTES="1"))
    start = whole_second_now()
    async with AsyncTestClient(app, base_url="https://testserver.local") as client:
        with time_machine.travel(start, tick=False) as traveller:
            response = await client.post("/api/v1/login", data={"username": "ann", "password": PASSWORD})
            access = response.json()["access_token"]
            assert claims(access)["exp"] == claims(access)["iat"] + 60 == start.timestamp() + 60

            traveller.move_to(start + timedelta(seconds=59))
            assert (await client.get("/api/v1/user/me", headers=bearer(access))).status_code == 200

            traveller.move_to(start + timedelta(seconds=60))
            response = await client.get("/api/v1/user/me", headers=bearer(access))
            assert response.status_code == 401
            assert response.json() == USER_NOT_AUTHENTICATED

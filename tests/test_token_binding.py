"""Token binding and revocation (SPEC §2.5, §3.2, §3.5, §3.7, amended 2026-12-01).

Every hole here was confirmed from outside against an earlier build: a revoked token kept working with
``==`` appended, a token kept working for whoever registered its username next, and a replayed refresh
token left both the thief and the victim logged in.
"""

from __future__ import annotations

import logging

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import TokenBlacklist
from tests.conftest import Login, MakeUser
from tests.helpers import PASSWORD, bearer, claims, remove_user

pytestmark = pytest.mark.anyio


def padded(token: str) -> str:
    """Another valid spelling of the same JWT: PyJWT ignores base64 padding on the signature."""
    return f"{token}=="


def with_cookie(refresh: str) -> dict[str, str]:
    return {"Cookie": f"refresh_token={refresh}"}


async def test_a_padded_token_is_the_same_token(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login
) -> None:
    """The premise of the tests below: the padded spelling is accepted while the token is valid."""
    await make_user("ann")
    access = await login("ann")
    assert (await client.get("/api/v1/user/me", headers=bearer(padded(access)))).status_code == 200


async def test_padded_spellings_of_logged_out_tokens_are_rejected(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login
) -> None:
    await make_user("ann")
    access = await login("ann")
    refresh = client.cookies["refresh_token"]
    assert (await client.post("/api/v1/logout", headers=bearer(access))).status_code == 200
    client.cookies.clear()

    me = await client.get("/api/v1/user/me", headers=bearer(padded(access)))
    assert me.status_code == 401
    assert me.json()["detail"] == "User not authenticated."
    again = await client.post("/api/v1/refresh", headers=with_cookie(padded(refresh)))
    assert again.status_code == 401
    assert again.json()["detail"] == "Invalid refresh token."
    logout = await client.post("/api/v1/logout", headers={**bearer(padded(access)), **with_cookie(padded(refresh))})
    assert logout.status_code == 401
    assert logout.json()["detail"] == "Invalid token."


async def test_the_blacklist_stores_jtis_not_encodings(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, db_session: AsyncSession
) -> None:
    await make_user("ann")
    access = await login("ann")
    assert (await client.post("/api/v1/logout", headers=bearer(access))).status_code == 200
    stored = set((await db_session.scalars(select(TokenBlacklist.token))).all())
    assert claims(access)["jti"] in stored
    assert access not in stored


async def test_a_padded_rotated_refresh_token_is_a_replay(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login
) -> None:
    await make_user("ann")
    await login("ann")
    first = client.cookies["refresh_token"]
    assert (await client.post("/api/v1/refresh")).status_code == 200
    client.cookies.clear()
    replay = await client.post("/api/v1/refresh", headers=with_cookie(padded(first)))
    assert replay.status_code == 401
    assert replay.json()["detail"] == "Invalid refresh token."


@pytest.mark.parametrize("released_by", ["rename", "hard delete"])
async def test_tokens_never_act_for_the_next_owner_of_a_username(
    client: AsyncTestClient[Litestar],
    make_user: MakeUser,
    login: Login,
    db_session: AsyncSession,
    released_by: str,
) -> None:
    ann = await make_user("ann")
    access = await login("ann")
    refresh = client.cookies["refresh_token"]
    client.cookies.clear()
    if released_by == "rename":
        response = await client.patch("/api/v1/user/ann", json={"username": "annie"}, headers=bearer(access))
        assert response.status_code == 200
    else:
        await remove_user(db_session, ann, "hard")
    newcomer = await client.post(
        "/api/v1/user",
        json={"name": "Another Ann", "username": "ann", "email": "other@example.com", "password": PASSWORD},
    )
    assert newcomer.status_code == 201
    assert newcomer.json()["id"] != claims(access)["uid"]

    me = await client.get("/api/v1/user/me", headers=bearer(access))
    assert me.status_code == 401
    assert me.json()["detail"] == "User not authenticated."
    assert (await client.patch("/api/v1/user/ann", json={"name": "Taken"}, headers=bearer(access))).status_code == 401
    stolen = await client.post("/api/v1/refresh", headers=with_cookie(refresh))
    assert stolen.status_code == 401
    assert stolen.json()["detail"] == "Invalid refresh token."
    # The newcomer's own session works.
    assert (await client.get("/api/v1/user/me", headers=bearer(await login("ann")))).status_code == 200


async def test_replaying_a_rotated_refresh_token_revokes_its_whole_family(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, caplog: pytest.LogCaptureFixture
) -> None:
    await make_user("ann")
    await login("ann")
    stolen = client.cookies["refresh_token"]
    rotated = await client.post("/api/v1/refresh")  # the victim refreshes first
    assert rotated.status_code == 200
    victim_refresh = client.cookies["refresh_token"]
    victim_access = rotated.json()["access_token"]
    assert (await client.get("/api/v1/user/me", headers=bearer(victim_access))).status_code == 200
    client.cookies.clear()

    with caplog.at_level(logging.WARNING, logger="app.auth"):
        replay = await client.post("/api/v1/refresh", headers=with_cookie(stolen))  # the thief comes back
    assert replay.status_code == 401
    assert replay.json()["detail"] == "Invalid refresh token."
    assert any("family is revoked" in record.getMessage() for record in caplog.records)

    # Neither side keeps the session: the family's current refresh token and its access token are revoked too.
    victim = await client.post("/api/v1/refresh", headers=with_cookie(victim_refresh))
    assert victim.status_code == 401
    assert victim.json()["detail"] == "Invalid refresh token."
    assert (await client.get("/api/v1/user/me", headers=bearer(victim_access))).status_code == 401
    # Logging in again starts a new family.
    assert (await client.get("/api/v1/user/me", headers=bearer(await login("ann")))).status_code == 200
    assert (await client.post("/api/v1/refresh")).status_code == 200


async def test_a_revoked_family_leaves_other_logins_alone(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login
) -> None:
    await make_user("ann")
    other_device = await login("ann")
    other_refresh = client.cookies["refresh_token"]
    await login("ann")
    stolen = client.cookies["refresh_token"]
    assert (await client.post("/api/v1/refresh")).status_code == 200
    client.cookies.clear()
    assert (await client.post("/api/v1/refresh", headers=with_cookie(stolen))).status_code == 401

    assert (await client.get("/api/v1/user/me", headers=bearer(other_device))).status_code == 200
    assert (await client.post("/api/v1/refresh", headers=with_cookie(other_refresh))).status_code == 200


async def test_family_revocation_survives_the_401_rollback(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, db_session: AsyncSession
) -> None:
    await make_user("ann")
    await login("ann")
    stolen = client.cookies["refresh_token"]
    assert (await client.post("/api/v1/refresh")).status_code == 200
    client.cookies.clear()
    assert (await client.post("/api/v1/refresh", headers=with_cookie(stolen))).status_code == 401
    stored = set((await db_session.scalars(select(TokenBlacklist.token))).all())
    assert claims(stolen)["fid"] in stored

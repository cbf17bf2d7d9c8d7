"""A1–A3 and token validation (SPEC §3, §4.2) on both path families."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from pathlib import Path

import bcrypt
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import TokenBlacklist
from app.core.keys import load_signing_keys
from app.core.settings import Settings, SettingsError
from app.main import create_app
from app.users.models import User
from tests.conftest import Login, MakeUser
from tests.helpers import PASSWORD, bearer, claims, header, remove_user

pytestmark = pytest.mark.anyio

FAMILIES = ["/api/v1", "/api/auth"]


def refresh_cookie_of(response: object) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])  # type: ignore[attr-defined]
    return cookie


def sign(settings: Settings, payload: dict[str, object], *, algorithm: str = "RS256", key: object = None) -> str:
    """A token signed like the app would, with any payload (expired, untyped, …)."""
    signing_key = key if key is not None else load_signing_keys(settings.jwt).signing
    return jwt.encode(payload, signing_key, algorithm=algorithm)  # type: ignore[arg-type]


def payload(sub: str = "ann", kind: str = "access", *, minutes: int = 30, uid: object = 1) -> dict[str, object]:
    """Claims like the app's for the first user of a test (``uid`` 1: identities restart for every test)."""
    now = datetime.now(UTC)
    return {"sub": sub, "uid": uid, "exp": now + timedelta(minutes=minutes), "iat": now, "jti": "x", "type": kind}


# --- A1 login -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
async def test_login_returns_a_bearer_token_and_the_refresh_cookie(
    client: AsyncTestClient[Litestar], make_user: MakeUser, family: str
) -> None:
    await make_user("ann")
    response = await client.post(f"{family}/login", data={"username": "ann", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["access_token", "token_type"]
    assert body["token_type"] == "bearer"
    assert response.headers["cache-control"] == "no-store"

    access = claims(body["access_token"])
    assert header(body["access_token"])["alg"] == "RS256"
    assert access["sub"] == "ann"
    assert access["type"] == "access"
    assert access["exp"] - access["iat"] == 30 * 60
    assert len(access["jti"]) == 32
    assert access["uid"] == 1

    assert len(response.headers.get_list("set-cookie")) == 1
    cookie = refresh_cookie_of(response)["refresh_token"]
    assert claims(cookie.value)["type"] == "refresh"
    assert claims(cookie.value)["fid"] == access["fid"]  # one login, one refresh family
    assert claims(cookie.value)["exp"] - claims(cookie.value)["iat"] == 7 * 86400
    assert cookie["httponly"] is True
    assert cookie["secure"] is True
    assert cookie["samesite"].lower() == "lax"
    assert cookie["max-age"] == str(7 * 86400)
    assert cookie["path"] == "/"


async def test_login_by_email_lowercases_the_domain_and_keeps_sub_the_username(
    client: AsyncTestClient[Litestar], make_user: MakeUser
) -> None:
    await make_user("ann", email="Ann.Smith@example.com")
    response = await client.post("/api/v1/login", data={"username": "Ann.Smith@EXAMPLE.com", "password": PASSWORD})
    assert response.status_code == 200
    assert claims(response.json()["access_token"])["sub"] == "ann"


async def test_two_logins_in_the_same_second_give_different_tokens(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login
) -> None:
    await make_user("ann")
    assert await login("ann") != await login("ann")


async def test_login_accepts_multipart_and_the_password_grant(
    client: AsyncTestClient[Litestar], make_user: MakeUser
) -> None:
    await make_user("ann")
    multipart = await client.post("/api/v1/login", files={"username": (None, "ann"), "password": (None, PASSWORD)})
    assert multipart.status_code == 200
    grant = await client.post(
        "/api/v1/login",
        data={"username": "ann", "password": PASSWORD, "grant_type": "password", "scope": "", "client_id": "x"},
    )
    assert grant.status_code == 200


@pytest.mark.parametrize(
    ("username", "password"),
    [("ann", "wrong-password"), ("nobody", PASSWORD), ("gone", PASSWORD), ("nobody@example.com", PASSWORD)],
    ids=["wrong password", "unknown user", "soft-deleted user", "unknown email"],
)
async def test_login_failures_share_one_message(
    client: AsyncTestClient[Litestar], make_user: MakeUser, username: str, password: str
) -> None:
    await make_user("ann")
    await make_user("gone", deleted=True)
    response = await client.post("/api/auth/login", data={"username": username, "password": password})
    assert response.status_code == 401
    assert response.json() == {"status_code": 401, "detail": "Wrong username, email or password."}
    assert response.headers["cache-control"] == "no-store"
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize(
    ("form", "key"),
    [({"username": "ann"}, "password"), ({"password": PASSWORD}, "username")],
)
async def test_login_without_a_field_is_422(client: AsyncTestClient[Litestar], form: dict[str, str], key: str) -> None:
    response = await client.post("/api/v1/login", data=form)
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "Validation failed for POST /api/v1/login"
    assert [(item["key"], item["source"]) for item in body["extra"]] == [(key, "body")]


async def test_login_with_another_grant_type_is_422(client: AsyncTestClient[Litestar], make_user: MakeUser) -> None:
    await make_user("ann")
    response = await client.post(
        "/api/v1/login", data={"username": "ann", "password": PASSWORD, "grant_type": "client_credentials"}
    )
    assert response.status_code == 422
    assert response.json()["extra"][0]["key"] == "grant_type"


async def test_login_upgrades_a_legacy_bcrypt_hash(
    client: AsyncTestClient[Litestar], make_user: MakeUser, db_session: AsyncSession
) -> None:
    legacy = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    user = await make_user("ann", hashed_password=legacy)
    response = await client.post("/api/v1/login", data={"username": "ann", "password": PASSWORD})
    assert response.status_code == 200
    await db_session.refresh(user)
    assert user.hashed_password.startswith("$argon2id$")
    again = await client.post("/api/v1/login", data={"username": "ann", "password": PASSWORD})
    assert again.status_code == 200


# --- A2 refresh ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
async def test_refresh_rotates_the_cookie_and_rejects_a_replay(
    client: AsyncTestClient[Litestar],
    make_user: MakeUser,
    login: Login,
    family: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await make_user("ann")
    await login("ann")
    first_refresh = client.cookies["refresh_token"]

    response = await client.post(f"{family}/refresh")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    new_access = response.json()["access_token"]
    assert claims(new_access)["sub"] == "ann"
    assert claims(new_access)["type"] == "access"
    rotated = refresh_cookie_of(response)["refresh_token"]
    assert rotated.value != first_refresh
    assert rotated["path"] == "/"
    assert (await client.get("/api/v1/user/me", headers=bearer(new_access))).status_code == 200

    client.cookies.clear()
    with caplog.at_level(logging.WARNING, logger="app.auth"):
        replay = await client.post(f"{family}/refresh", headers={"Cookie": f"refresh_token={first_refresh}"})
    assert replay.status_code == 401
    assert replay.json()["detail"] == "Invalid refresh token."
    assert any("possible replay" in record.getMessage() for record in caplog.records)

    # The replay revoked the whole family, the rotated token included (SPEC §3.7).
    after = await client.post(f"{family}/refresh", headers={"Cookie": f"refresh_token={rotated.value}"})
    assert after.status_code == 401


async def test_refresh_without_a_cookie_is_401(client: AsyncTestClient[Litestar]) -> None:
    response = await client.post("/api/v1/refresh")
    assert response.status_code == 401
    assert response.json() == {"status_code": 401, "detail": "Refresh token missing."}
    assert response.headers["cache-control"] == "no-store"


async def test_refresh_rejects_an_access_token(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login
) -> None:
    await make_user("ann")
    access = await login("ann")
    client.cookies.clear()
    response = await client.post("/api/v1/refresh", headers={"Cookie": f"refresh_token={access}"})
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid refresh token."


@pytest.mark.parametrize("deleted", ["soft", "hard"])
async def test_refresh_rejects_tokens_of_deleted_users(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, db_session: AsyncSession, deleted: str
) -> None:
    user = await make_user("ann")
    await login("ann")
    await remove_user(db_session, user, deleted)
    response = await client.post("/api/v1/refresh")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid refresh token."


# --- A3 logout ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
async def test_logout_blacklists_both_tokens_and_expires_the_cookie(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, db_session: AsyncSession, family: str
) -> None:
    await make_user("ann")
    access = await login("ann")
    refresh = client.cookies["refresh_token"]

    response = await client.post(f"{family}/logout", headers=bearer(access))
    assert response.status_code == 200
    assert response.json() == {"message": "Logged out successfully"}
    assert response.headers["cache-control"] == "no-store"
    expired = refresh_cookie_of(response)["refresh_token"]
    assert expired.value == ""
    assert expired["max-age"] == "0"
    assert expired["path"] == "/"
    assert expired["secure"] is True
    assert expired["httponly"] is True

    rows = (await db_session.scalars(select(TokenBlacklist).order_by(TokenBlacklist.id))).all()
    assert [row.token for row in rows] == [claims(access)["jti"], claims(refresh)["jti"]]
    assert [int(row.expires_at.timestamp()) for row in rows] == [claims(access)["exp"], claims(refresh)["exp"]]

    me = await client.get("/api/v1/user/me", headers=bearer(access))
    assert me.status_code == 401
    assert me.json()["detail"] == "User not authenticated."
    reuse = await client.post("/api/v1/refresh", headers={"Cookie": f"refresh_token={refresh}"})
    assert reuse.status_code == 401

    twice = await client.post(f"{family}/logout", headers={**bearer(access), "Cookie": f"refresh_token={refresh}"})
    assert twice.status_code == 401
    assert twice.json()["detail"] == "Invalid token."


async def test_logout_checks_in_order(client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login) -> None:
    await make_user("ann")
    access = await login("ann")
    refresh = client.cookies["refresh_token"]
    client.cookies.clear()

    no_bearer = await client.post("/api/v1/logout", headers={"Cookie": f"refresh_token={refresh}"})
    assert no_bearer.status_code == 401
    assert no_bearer.json()["detail"] == "Not authenticated"
    assert no_bearer.headers["www-authenticate"] == "Bearer"

    no_cookie = await client.post("/api/v1/logout", headers=bearer(access))
    assert no_cookie.status_code == 401
    assert no_cookie.json()["detail"] == "Refresh token not found"

    swapped = await client.post("/api/v1/logout", headers={**bearer(refresh), "Cookie": f"refresh_token={access}"})
    assert swapped.status_code == 401
    assert swapped.json()["detail"] == "Invalid token."


async def test_logout_does_not_need_the_user_to_exist(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, db_session: AsyncSession
) -> None:
    user = await make_user("ann")
    access = await login("ann")
    await db_session.delete(user)
    await db_session.commit()
    assert (await client.post("/api/v1/logout", headers=bearer(access))).status_code == 200


# --- token validation (SPEC §3.5) ---------------------------------------------------------------------------


async def test_bearer_scheme_is_case_insensitive_and_other_schemes_are_no_token(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login
) -> None:
    await make_user("ann")
    access = await login("ann")
    assert (await client.get("/api/v1/user/me", headers={"Authorization": f"bEaReR {access}"})).status_code == 200
    basic = await client.get("/api/v1/user/me", headers={"Authorization": f"Basic {access}"})
    assert basic.status_code == 401
    assert basic.json()["detail"] == "Not authenticated"
    assert basic.headers["www-authenticate"] == "Bearer"


def _tampered(token: str) -> str:
    head, body, signature = token.split(".")
    return f"{head}.{body}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"


def _unsigned(_: Settings) -> str:
    return jwt.encode(payload(), key=None, algorithm="none")  # type: ignore[arg-type]


def _hs256_with_public_key(settings: Settings) -> str:
    # Algorithm confusion: the public key (known to anyone) used as an HMAC secret.
    import hmac  # noqa: PLC0415
    import json  # noqa: PLC0415
    from base64 import urlsafe_b64encode  # noqa: PLC0415

    def b64(data: bytes) -> str:
        return urlsafe_b64encode(data).rstrip(b"=").decode()

    body = {**payload(), "exp": int(datetime.now(UTC).timestamp()) + 600, "iat": int(datetime.now(UTC).timestamp())}
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(body).encode())}"
    secret = settings.jwt.public_key_path.read_bytes()
    signature = hmac.new(secret, signing_input.encode(), "sha256").digest()
    return f"{signing_input}.{b64(signature)}"


def _other_key(settings: Settings) -> str:
    return sign(settings, payload(), key=rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda s: sign(s, payload(minutes=-1)), id="expired"),
        pytest.param(lambda s: sign(s, {k: v for k, v in payload().items() if k != "sub"}), id="no sub"),
        pytest.param(lambda s: sign(s, {k: v for k, v in payload().items() if k != "exp"}), id="no exp"),
        pytest.param(lambda s: sign(s, {k: v for k, v in payload().items() if k != "type"}), id="no type"),
        pytest.param(lambda s: sign(s, {k: v for k, v in payload().items() if k != "uid"}), id="no uid"),
        pytest.param(lambda s: sign(s, {k: v for k, v in payload().items() if k != "jti"}), id="no jti"),
        pytest.param(lambda s: sign(s, payload(uid=2)), id="uid of another user"),
        pytest.param(lambda s: sign(s, payload(uid="1")), id="uid as text"),
        pytest.param(lambda s: sign(s, payload(uid=2**70)), id="uid beyond the id range"),
        pytest.param(lambda s: sign(s, payload(kind="refresh")), id="refresh as access"),
        pytest.param(lambda s: sign(s, payload(sub="nobody")), id="unknown user"),
        pytest.param(lambda s: _tampered(sign(s, payload())), id="tampered"),
        pytest.param(_unsigned, id="alg none"),
        pytest.param(_hs256_with_public_key, id="hs256 with the public key"),
        pytest.param(_other_key, id="signed by another key"),
        pytest.param(lambda s: "not-a-jwt", id="garbage"),
    ],
)
async def test_rejected_tokens_are_401(
    client: AsyncTestClient[Litestar], make_user: MakeUser, settings: Settings, forge: Callable[[Settings], str]
) -> None:
    await make_user("ann")
    assert (await client.get("/api/v1/user/me", headers=bearer(sign(settings, payload())))).status_code == 200
    response = await client.get("/api/v1/user/me", headers=bearer(forge(settings)))
    assert response.status_code == 401
    assert response.json() == {"status_code": 401, "detail": "User not authenticated."}


async def test_iat_is_optional_and_sub_may_be_an_email(
    client: AsyncTestClient[Litestar], make_user: MakeUser, settings: Settings
) -> None:
    await make_user("ann")
    minimal = {"sub": "ann@EXAMPLE.com", "uid": 1, "jti": "j", "exp": datetime.now(UTC) + timedelta(minutes=5)}
    response = await client.get("/api/v1/user/me", headers=bearer(sign(settings, minimal | {"type": "access"})))
    assert response.status_code == 200
    assert response.json()["username"] == "ann"


@pytest.mark.parametrize("deleted", ["soft", "hard"])
async def test_tokens_of_deleted_users_are_rejected(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, db_session: AsyncSession, deleted: str
) -> None:
    user = await make_user("ann")
    access = await login("ann")
    await remove_user(db_session, user, deleted)
    response = await client.get("/api/v1/user/me", headers=bearer(access))
    assert response.status_code == 401
    assert response.json()["detail"] == "User not authenticated."


async def test_hs256_with_the_original_claim_name(settings_with: Callable[..., Settings], make_user: MakeUser) -> None:
    """TOKEN_TYPE_FIELD=token_type + HS256 + SECRET_KEY issue tokens shaped like the original's, but the
    original's own tokens (no ``uid``, no ``jti``) are refused: they are not bound to a user row (SPEC §3.2)."""
    await make_user("ann")
    secret = "s" * 64
    settings = settings_with(ALGORITHM="HS256", SECRET_KEY=secret, TOKEN_TYPE_FIELD="token_type")
    original = jwt.encode(
        {"sub": "ann", "exp": datetime.now(UTC) + timedelta(minutes=5), "token_type": "access"}, secret, "HS256"
    )
    async with AsyncTestClient(create_app(settings), base_url="https://testserver.local") as client:
        assert (await client.get("/api/v1/user/me", headers=bearer(original))).status_code == 401
        issued = await client.post("/api/v1/login", data={"username": "ann", "password": PASSWORD})
        token = issued.json()["access_token"]
        assert header(token)["alg"] == "HS256"
        assert claims(token)["token_type"] == "access"
        assert "type" not in claims(token)
        assert (await client.get("/api/v1/user/me", headers=bearer(token))).status_code == 200


def test_startup_fails_clearly_without_readable_keys(settings_with: Callable[..., Settings], tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="JWT_PRIVATE_KEY_PATH"):
        create_app(settings_with(JWT_PRIVATE_KEY_PATH=str(tmp_path / "missing.pem")))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(SettingsError, match="JWT_PUBLIC_KEY_PATH"):
        create_app(settings_with(JWT_PUBLIC_KEY_PATH=str(garbage)))


def test_key_pair_generation_writes_usable_pem_files(tmp_path: Path) -> None:
    from app.core.keys import write_key_pair  # noqa: PLC0415

    write_key_pair(tmp_path / "private.pem", tmp_path / "public.pem")
    private = serialization.load_pem_private_key((tmp_path / "private.pem").read_bytes(), None)
    public = serialization.load_pem_public_key((tmp_path / "public.pem").read_bytes())
    token = jwt.encode({"sub": "x"}, private, algorithm="RS256")  # type: ignore[arg-type]
    assert jwt.decode(token, public, algorithms=["RS256"]) == {"sub": "x"}  # type: ignore[arg-type]
    assert (tmp_path / "private.pem").stat().st_mode & 0o777 == 0o600


async def test_an_authenticated_request_costs_one_query_before_the_handler(
    settings_with: Callable[..., Settings], make_user: MakeUser, caplog: pytest.LogCaptureFixture
) -> None:
    await make_user("ann")
    settings = settings_with(DB__ECHO="true")
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.post("/api/v1/login", data={"username": "ann", "password": PASSWORD})
        access = response.json()["access_token"]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"):
            assert (await client.get("/api/v1/user/me", headers=bearer(access))).status_code == 200
    statements = [r.getMessage() for r in caplog.records if r.getMessage().lstrip().upper().startswith("SELECT")]
    assert len(statements) == 1
    assert "token_blacklist" in statements[0]


async def test_users_are_stored_unchanged_by_auth(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, db_session: AsyncSession
) -> None:
    await make_user("ann")
    await login("ann")
    assert (await db_session.scalars(select(User.username))).all() == ["ann"]


async def test_a_json_login_is_told_a_form_is_expected(client: AsyncTestClient[Litestar], make_user: MakeUser) -> None:
    await make_user("ann")
    response = await client.post("/api/v1/login", json={"username": "ann", "password": PASSWORD})
    assert response.status_code == 422
    [error] = response.json()["extra"]
    assert error["key"] == "body"
    assert "form" in error["message"]

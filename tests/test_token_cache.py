"""The cache of verified tokens (``app.core.token_cache``): RS256 verification once per token string, every
revocation rule of SPEC §3.5 on every request.

``verifications`` counts the calls of ``jwt.decode`` — the signature check and JSON decoding the cache saves.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import jwt
import pytest
import time_machine
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.security import AppToken, TokenCodec
from app.core.settings import Settings
from app.core.token_cache import DEFAULT_MAX_ENTRIES, VerifiedTokens
from app.main import create_app
from tests.conftest import Login, MakeUser
from tests.helpers import bearer, claims, remove_user
from tests.ratelimit_app import add_probe_routes

pytestmark = pytest.mark.anyio

ME = "/api/v1/user/me"


class Verifications:
    def __init__(self) -> None:
        self.count = 0


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> Verifications:
    counter = Verifications()
    verify = jwt.decode

    def counted(*args: object, **kwargs: object) -> object:
        counter.count += 1
        return verify(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jwt, "decode", counted)
    return counter


def codec_of(app: Litestar) -> TokenCodec:
    codec: TokenCodec = app.dependencies["token_codec"].dependency()
    return codec


def tampered(token: str) -> str:
    """One character of the signature changed (in its middle, so the signature bytes really differ)."""
    position = len(token) - 20
    return token[:position] + ("A" if token[position] != "A" else "B") + token[position + 1 :]


async def me(client: AsyncTestClient[Litestar], token: str) -> int:
    return (await client.get(ME, headers=bearer(token))).status_code


async def test_a_repeated_token_is_verified_once(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, verifications: Verifications
) -> None:
    await make_user("ann")
    access = await login("ann")
    assert verifications.count == 0
    assert [await me(client, access) for _ in range(3)] == [200, 200, 200]
    assert verifications.count == 1


async def test_another_spelling_is_verified_in_full_and_a_tampered_signature_is_refused(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, verifications: Verifications
) -> None:
    await make_user("ann")
    access = await login("ann")
    assert await me(client, access) == 200
    assert await me(client, tampered(access)) == 401
    assert verifications.count == 2
    assert await me(client, f"{access}==") == 200  # PyJWT accepts the padded spelling: verified, then cached
    assert verifications.count == 3
    assert await me(client, tampered(access)) == 401  # failures are never cached as successes, nor at all
    assert verifications.count == 4


async def test_failures_are_not_cached(
    app: Litestar, client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login
) -> None:
    await make_user("ann")
    access = await login("ann")
    forged = jwt.encode({**claims(access), "jti": "forged"}, "x" * 32, algorithm="HS256")
    for token in ("not-a-token", tampered(access), forged, f"{access}.extra"):
        assert await me(client, token) == 401
    assert len(codec_of(app).verified) == 0


async def test_a_logout_is_honoured_at_once_for_a_cached_token(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, verifications: Verifications
) -> None:
    await make_user("ann")
    access = await login("ann")
    assert await me(client, access) == 200
    assert (await client.post("/api/v1/logout", headers=bearer(access))).status_code == 200
    before = verifications.count
    assert await me(client, access) == 401
    assert verifications.count == before  # still cached: the blacklist refused it, not a new verification
    assert await me(client, f"{access}==") == 401


async def test_a_family_revocation_is_honoured_at_once_for_cached_tokens(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, verifications: Verifications
) -> None:
    await make_user("ann")
    first_access = await login("ann")
    stolen = client.cookies["refresh_token"]
    rotated = await client.post("/api/v1/refresh")
    assert rotated.status_code == 200
    access = rotated.json()["access_token"]
    assert await me(client, first_access) == 200
    assert await me(client, access) == 200
    client.cookies.clear()
    replay = await client.post("/api/v1/refresh", headers={"Cookie": f"refresh_token={stolen}"})
    assert replay.status_code == 401
    before = verifications.count
    assert await me(client, access) == 401
    assert await me(client, first_access) == 401
    assert verifications.count == before


@pytest.mark.parametrize("how", ["soft", "hard"])
async def test_a_deleted_user_is_refused_at_once_with_a_cached_token(
    client: AsyncTestClient[Litestar],
    make_user: MakeUser,
    login: Login,
    db_session: AsyncSession,
    verifications: Verifications,
    how: str,
) -> None:
    ann = await make_user("ann")
    access = await login("ann")
    assert await me(client, access) == 200
    await remove_user(db_session, ann, how)
    assert await me(client, access) == 401
    assert verifications.count == 1


async def test_a_cached_token_stops_working_exactly_at_exp_and_is_not_served_before_iat(
    client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, verifications: Verifications
) -> None:
    await make_user("ann")
    start = datetime.now(UTC).replace(microsecond=0)
    with time_machine.travel(start, tick=False) as traveller:
        access = await login("ann")
        exp = claims(access)["exp"]
        assert await me(client, access) == 200

        # A clock moved back before `iat`: verification refuses the token, so the cache must not serve it.
        traveller.move_to(start - timedelta(seconds=1))
        assert await me(client, access) == 401
        traveller.move_to(start)
        assert await me(client, access) == 200
        verified = verifications.count

        traveller.move_to(datetime.fromtimestamp(exp - 1, UTC))
        assert await me(client, access) == 200
        assert verifications.count == verified  # served from the cache up to the last valid second

        traveller.move_to(datetime.fromtimestamp(exp, UTC))
        assert await me(client, access) == 401
        traveller.move_to(datetime.fromtimestamp(exp + 3600, UTC))
        assert await me(client, access) == 401


async def test_the_rate_limiters_user_check_uses_the_cache_and_honours_a_logout(
    settings_with: Callable[..., Settings], make_user: MakeUser, verifications: Verifications
) -> None:
    await make_user("ann")
    app = add_probe_routes(create_app(settings_with(DEFAULT_RATE_LIMIT_LIMIT="10", DEFAULT_RATE_LIMIT_PERIOD="60")))
    async with AsyncTestClient(app, base_url="https://testserver.local") as client:
        response = await client.post("/api/v1/login", data={"username": "ann", "password": "password1"})
        access = response.json()["access_token"]
        first = await client.get("/probe/limited", headers=bearer(access))
        anonymous = await client.get("/probe/limited")
        second = await client.get("/probe/limited", headers=bearer(access))
        assert verifications.count == 1
        assert (await client.post("/api/v1/logout", headers=bearer(access))).status_code == 200
        logged_out = await client.get("/probe/limited", headers=bearer(access))
    remaining = [int(r.headers["ratelimit-remaining"]) for r in (first, anonymous, second, logged_out)]
    # The user and the anonymous address count apart; after logout the token's requests count as anonymous.
    assert remaining[0] - remaining[2] == 1
    assert remaining[1] - remaining[3] == 1


async def test_the_cache_is_bounded_and_drops_the_least_recently_used_token(
    app: Litestar, client: AsyncTestClient[Litestar], make_user: MakeUser, login: Login, verifications: Verifications
) -> None:
    cache = codec_of(app).verified
    assert cache.max_entries == DEFAULT_MAX_ENTRIES
    cache.max_entries = 2
    await make_user("ann")
    tokens = [await login("ann") for _ in range(3)]
    for token in (tokens[0], tokens[1], tokens[0], tokens[2]):  # tokens[1] is now the least recently used
        assert await me(client, token) == 200
    assert len(cache) == 2
    assert verifications.count == 3
    assert await me(client, tokens[0]) == 200
    assert verifications.count == 3
    assert await me(client, tokens[1]) == 200
    assert verifications.count == 4
    assert len(cache) == 2


def test_the_store_never_holds_more_than_its_bound() -> None:
    cache: VerifiedTokens[str] = VerifiedTokens(max_entries=3)
    for number in range(10):
        cache.put(f"token-{number}", f"claims-{number}", valid_from=0, valid_until=2**40)
    assert len(cache) == 3
    assert [cache.get(f"token-{number}") for number in (6, 7, 8, 9)] == [None, "claims-7", "claims-8", "claims-9"]


def test_an_entry_is_only_served_inside_its_window() -> None:
    cache: VerifiedTokens[AppToken] = VerifiedTokens()
    token = AppToken(sub="ann", uid=1, exp=datetime.now(UTC) + timedelta(minutes=1), jti="j")
    now = datetime.now(UTC).timestamp()
    cache.put("a", token, valid_from=now - 10, valid_until=now + 60)
    cache.put("b", token, valid_from=now - 10, valid_until=now)
    cache.put("c", token, valid_from=now + 10, valid_until=now + 60)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (token, None, None)
    assert len(cache) == 1  # entries out of their window are dropped

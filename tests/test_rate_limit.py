"""The rate limiter (SPEC §5) on test-only probe routes (tests/ratelimit_app.py), with real Redis and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Container, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio.to_thread
import asyncpg
import httpx
import pytest
import redis
import redis.asyncio.connection
from asyncpg.prepared_stmt import PreparedStatement
from litestar import Litestar, Request
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.rate_limit import Counted, Decision, Hit, MemoryCounter, RulesMissing, TierRules, client_address
from app.core.settings import Settings, TrustedProxies
from app.main import create_app
from app.tiers.models import RateLimit, Tier
from tests.conftest import REDIS_DB, REDIS_HOST, REDIS_PORT, MakeUser
from tests.helpers import PASSWORD, bearer
from tests.ratelimit_app import FACTORY, add_probe_routes
from tests.servers import LiveServer, free_port, live_server

pytestmark = pytest.mark.anyio

HEADERS = ("ratelimit-policy", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")
REQUEST_TIMEOUT = 20.0
AppClient = AsyncTestClient[Litestar]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "app.log"


@pytest.fixture
def limited(settings_with: Callable[..., Settings], log_file: Path) -> Callable[..., Any]:
    """``async with limited(DEFAULT_RATE_LIMIT_LIMIT="3") as client``: the app with the probe routes."""

    @asynccontextmanager
    async def build(**env: str) -> AsyncIterator[AppClient]:
        settings = settings_with(**{"LOG_FILE_PATH": str(log_file), **env})
        async with AsyncTestClient(add_probe_routes(create_app(settings))) as client:
            yield client

    return build


def logged(log_file: Path, level: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    return [line for line in lines if line.get("level") == level and line.get("logger") == "app.rate_limit"]


def limits_of(response: httpx.Response) -> dict[str, str]:
    return {name: response.headers[name] for name in HEADERS if name in response.headers}


async def make_tier(db_session: AsyncSession, name: str, **limits: tuple[int, int]) -> Tier:
    """A tier with rules ``path=(limit, period)``."""
    tier = Tier(name=name)
    db_session.add(tier)
    await db_session.flush()
    for path, (limit, period) in limits.items():
        db_session.add(RateLimit(tier_id=tier.id, name=f"{name}:{path}", path=path, limit=limit, period=period))
    await db_session.commit()
    return tier


async def log_in(client: AppClient, username: str) -> dict[str, str]:
    response = await client.post("/api/v1/login", data={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return bearer(response.json()["access_token"])


def wait_for_fresh_window(period: int, margin: float = 0.3) -> None:
    """Start right after a window boundary, so a sequence of requests stays within one window."""
    time.sleep(period - time.time() % period + 0.05 if time.time() % period > period - margin - 1 else 0)


async def test_headers_count_down_and_the_request_after_the_limit_is_429(limited: Callable[..., Any]) -> None:
    async with limited(DEFAULT_RATE_LIMIT_LIMIT="3", DEFAULT_RATE_LIMIT_PERIOD="60") as client:
        responses = [await client.get("/probe/limited") for _ in range(5)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    assert [r.headers["ratelimit-remaining"] for r in responses] == ["2", "1", "0", "0", "0"]
    for response in responses:
        assert response.headers["ratelimit-policy"] == "3; w=60"
        assert response.headers["ratelimit-limit"] == "3"
        assert 1 <= int(response.headers["ratelimit-reset"]) <= 60
    assert "retry-after" not in responses[0].headers
    refused = responses[3]
    assert refused.json() == {"status_code": 429, "detail": "Rate limit exceeded."}
    assert refused.headers["retry-after"] == refused.headers["ratelimit-reset"]


async def test_the_counter_starts_again_in_the_next_window(limited: Callable[..., Any]) -> None:
    async with limited(DEFAULT_RATE_LIMIT_LIMIT="1", DEFAULT_RATE_LIMIT_PERIOD="2") as client:
        wait_for_fresh_window(2)
        first, second = await client.get("/probe/limited"), await client.get("/probe/limited")
        await anyio.sleep(2 - time.time() % 2 + 0.05)
        third = await client.get("/probe/limited")
    assert [first.status_code, second.status_code, third.status_code] == [200, 429, 200]
    assert third.headers["ratelimit-remaining"] == "0"


async def test_errors_after_the_check_carry_headers_and_count(limited: Callable[..., Any]) -> None:
    async with limited(DEFAULT_RATE_LIMIT_LIMIT="2", DEFAULT_RATE_LIMIT_PERIOD="60") as client:
        invalid = await client.post("/probe/item/a", json={"unknown": 1})
        valid = await client.post("/probe/item/a", json={"count": 1})
        refused = await client.post("/probe/item/a", json={"unknown": 1})  # 429 comes before 422 (SPEC §4.1)
    assert (invalid.status_code, valid.status_code, refused.status_code) == (422, 201, 429)
    assert invalid.headers["ratelimit-remaining"] == "1"
    assert valid.headers["ratelimit-remaining"] == "0"


async def test_a_tier_rule_overrides_the_default_and_the_route_template_matches(
    limited: Callable[..., Any], db_session: AsyncSession, make_user: MakeUser, log_file: Path
) -> None:
    tier = await make_tier(db_session, "pro", probe_item_special=(3, 60), **{"probe_item_{name}": (2, 30)})
    await make_user("ann", tier_id=tier.id)
    async with limited(DEFAULT_RATE_LIMIT_LIMIT="1", DEFAULT_RATE_LIMIT_PERIOD="60") as client:
        auth = await log_in(client, "ann")
        templated = [await client.get("/probe/item/a", headers=auth) for _ in range(3)]
        other_item = await client.get("/probe/item/b", headers=auth)  # the key has the concrete path
        special = [await client.get("/probe/item/special", headers=auth) for _ in range(4)]
        unlisted = [await client.get("/probe/limited", headers=auth) for _ in range(2)]
    assert [r.status_code for r in templated] == [200, 200, 429]
    assert templated[0].headers["ratelimit-policy"] == "2; w=30"
    assert other_item.status_code == 200
    assert [r.status_code for r in special] == [200, 200, 200, 429]  # the concrete path wins over the template
    assert special[0].headers["ratelimit-policy"] == "3; w=60"
    assert [r.status_code for r in unlisted] == [200, 429]
    assert unlisted[0].headers["ratelimit-policy"] == "1; w=60"
    warnings = logged(log_file, "warning")
    assert {
        "event": "User 1 with tier 'pro' has no specific rate limit for path 'probe_limited'. "
        "Applying default rate limit.",
        "user_id": 1,
        "tier": "pro",
        "path": "probe_limited",
    }.items() <= warnings[-1].items()


async def test_a_user_without_tier_gets_the_defaults_and_a_warning(
    limited: Callable[..., Any], make_user: MakeUser, log_file: Path
) -> None:
    await make_user("ann")
    async with limited(DEFAULT_RATE_LIMIT_LIMIT="1", DEFAULT_RATE_LIMIT_PERIOD="60") as client:
        auth = await log_in(client, "ann")
        responses = [await client.get("/probe/private", headers=auth) for _ in range(2)]
        anonymous = await client.get("/probe/limited")  # the same address has its own anonymous counter
    assert [r.status_code for r in responses] == [200, 429]
    assert anonymous.status_code == 200
    warning = logged(log_file, "warning")[-1]
    assert warning["event"] == "User 1 has no assigned tier. Applying default rate limit."
    assert (warning["user_id"], warning["path"]) == (1, "probe_private")


async def test_an_invalid_token_on_a_public_route_is_anonymous_and_401_is_not_counted(
    limited: Callable[..., Any], make_user: MakeUser
) -> None:
    await make_user("ann")
    async with limited(DEFAULT_RATE_LIMIT_LIMIT="2", DEFAULT_RATE_LIMIT_PERIOD="60") as client:
        forged = await client.get("/probe/limited", headers=bearer("not-a-token"))
        unauthenticated = await client.get("/probe/private")
        auth = await log_in(client, "ann")
        private = await client.get("/probe/private", headers=auth)
        anonymous = await client.get("/probe/limited")
    assert forged.status_code == 200
    assert unauthenticated.status_code == 401
    assert not limits_of(unauthenticated)  # SPEC §5.5: a 401 never reaches the limiter
    assert private.headers["ratelimit-remaining"] == "1"
    assert anonymous.headers["ratelimit-remaining"] == "0"  # the forged token's request counted as anonymous


async def test_anonymous_callers_are_keyed_by_the_forwarded_address_only_from_a_trusted_peer(
    limited: Callable[..., Any],
) -> None:
    env = {"DEFAULT_RATE_LIMIT_LIMIT": "1", "DEFAULT_RATE_LIMIT_PERIOD": "60"}
    one, two = {"X-Forwarded-For": "203.0.113.1, 10.0.0.9"}, {"X-Real-IP": "203.0.113.2"}
    async with limited(FORWARDED_ALLOW_IPS="*", **env) as client:
        trusted = [await client.get("/probe/limited", headers=headers) for headers in (one, two, one)]
    async with limited(FORWARDED_ALLOW_IPS="10.0.0.1", **env) as client:
        untrusted = [await client.get("/probe/limited", headers=headers) for headers in (one, two)]
    assert [r.status_code for r in trusted] == [200, 200, 429]
    assert [r.status_code for r in untrusted] == [200, 429]  # both keyed by the peer itself
    keys = redis.Redis(host=REDIS_HOST, port=int(REDIS_PORT), db=int(REDIS_DB)).keys("ratelimit:203.0.113.*")
    assert sorted(key.decode().rsplit(":", 1)[0] for key in keys) == [
        "ratelimit:203.0.113.1:probe_limited",
        "ratelimit:203.0.113.2:probe_limited",
    ]


@pytest.mark.parametrize(
    ("client", "headers", "trusted", "expected"),
    [
        (("10.0.0.1", 1), {"x-forwarded-for": "203.0.113.1, 10.0.0.9"}, frozenset({"10.0.0.1"}), "203.0.113.1"),
        (("10.0.0.1", 1), {"x-real-ip": "203.0.113.2"}, frozenset({"10.0.0.1"}), "203.0.113.2"),
        (("10.0.0.1", 1), {}, frozenset({"10.0.0.1"}), "10.0.0.1"),
        (("10.0.0.1", 1), {"x-forwarded-for": "not an address"}, frozenset({"10.0.0.1"}), "10.0.0.1"),
        (("10.0.0.7", 1), {"x-forwarded-for": "203.0.113.1"}, frozenset({"10.0.0.1"}), "10.0.0.7"),
        (("10.0.0.7", 1), {"x-forwarded-for": "203.0.113.1"}, TrustedProxies.parse("10.0.0.0/24"), "203.0.113.1"),
        (("10.0.1.7", 1), {"x-forwarded-for": "203.0.113.1"}, TrustedProxies.parse("10.0.0.0/24"), "10.0.1.7"),
        (("10.0.0.7", 1), {"x-forwarded-for": "203.0.113.1"}, None, "203.0.113.1"),
        (None, {"x-forwarded-for": "203.0.113.1"}, None, "unknown"),
        # One client, one subject: an IPv6 address counts by its /64, however spelled; IPv4-mapped as IPv4.
        (("10.0.0.1", 1), {"x-forwarded-for": "2001:DB8:1:2:0:0:0:9"}, None, "2001:db8:1:2::/64"),
        (("10.0.0.1", 1), {"x-real-ip": "2001:db8:1:2:ffff::1%eth0"}, None, "2001:db8:1:2::/64"),
        (("10.0.0.1", 1), {"x-forwarded-for": "::ffff:203.0.113.1"}, None, "203.0.113.1"),
        (("2001:db8:5:6::7", 1), {}, None, "2001:db8:5:6::/64"),
        (("2001:db8:5:6::7", 1), {"x-forwarded-for": "203.0.113.1"}, frozenset({"10.0.0.1"}), "2001:db8:5:6::/64"),
        (("::1", 1), {}, None, "::1"),
    ],
)
def test_client_address(
    client: tuple[str, int] | None, headers: dict[str, str], trusted: Container[str] | None, expected: str
) -> None:
    scope: Any = {
        "type": "http",
        "client": client,
        "headers": [(name.encode(), value.encode()) for name, value in headers.items()],
    }
    assert client_address(Request(scope), trusted) == expected


async def test_rules_survive_a_redis_flush(
    limited: Callable[..., Any], db_session: AsyncSession, make_user: MakeUser
) -> None:
    tier = await make_tier(db_session, "pro", probe_limited=(2, 60))
    await make_user("ann", tier_id=tier.id)
    async with limited(DEFAULT_RATE_LIMIT_LIMIT="1", DEFAULT_RATE_LIMIT_PERIOD="60") as client:
        auth = await log_in(client, "ann")
        before = [(await client.get("/probe/limited", headers=auth)).status_code for _ in range(3)]
        redis.Redis(host=REDIS_HOST, port=int(REDIS_PORT), db=int(REDIS_DB)).flushdb()
        after = [(await client.get("/probe/limited", headers=auth)).status_code for _ in range(3)]
    assert before == after == [200, 200, 429]


async def test_an_unreachable_redis_lets_requests_through_without_headers(
    limited: Callable[..., Any], log_file: Path
) -> None:
    async with limited(REDIS_RATE_LIMIT_PORT=str(free_port()), DEFAULT_RATE_LIMIT_LIMIT="1") as client:
        started = time.monotonic()
        responses = [await client.get("/probe/limited") for _ in range(3)]
        elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert not any(limits_of(r) for r in responses)
    assert elapsed < 5
    errors = logged(log_file, "error")
    assert len(errors) == 3
    assert {"event": "rate limiter unavailable", "user_id": None, "path": "probe_limited"}.items() <= errors[0].items()


async def test_a_limited_request_costs_one_redis_round_trip_and_no_database_query(
    limited: Callable[..., Any], db_session: AsyncSession, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    tier = await make_tier(db_session, "pro", probe_private=(100, 60))
    await make_user("ann", tier_id=tier.id)
    sent: list[int] = []
    original = redis.asyncio.connection.AbstractConnection.send_packed_command

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        await original(self, command, check_health)

    monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "send_packed_command", counting)
    # Statements where asyncpg sends them: SQLAlchemy's (prepared) and the FastRows of GET requests.
    statements: list[str] = []
    fetch, fetchrow = PreparedStatement.fetch, asyncpg.Connection.fetchrow

    async def counted_fetch(statement: PreparedStatement, *args: Any, **kwargs: Any) -> Any:
        statements.append(statement.get_query())
        return await fetch(statement, *args, **kwargs)

    async def counted_fetchrow(connection: asyncpg.Connection[Any], query: str, *args: Any, **kwargs: Any) -> Any:
        statements.append(query)
        return await fetchrow(connection, query, *args, **kwargs)

    monkeypatch.setattr(PreparedStatement, "fetch", counted_fetch)
    monkeypatch.setattr(asyncpg.Connection, "fetchrow", counted_fetchrow)
    async with limited() as client:
        auth = await log_in(client, "ann")
        await client.get("/probe/private", headers=auth)  # first use: the script is loaded, the rules too
        sent.clear()
        statements.clear()
        responses = [await client.get("/probe/private", headers=auth) for _ in range(10)]
        await client.get("/probe/limited")
    assert [r.status_code for r in responses] == [200] * 10
    assert len(sent) == 11  # one EVALSHA each
    assert len(statements) == 10  # only the authentication's own user check


@pytest.fixture
def servers(test_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    with ExitStack() as stack:

        def start(**env: str) -> LiveServer:
            return stack.enter_context(live_server({**test_env, **env}, tmp_path, workers=2, factory=FACTORY))

        yield start


def _parallel(urls: list[str], headers: dict[str, str] | None = None) -> list[int]:
    """Every request on its own connection, opened first, then all released at once by a barrier."""
    barrier = threading.Barrier(len(urls), timeout=REQUEST_TIMEOUT)

    def run(url: str) -> int:
        base, _, path = url.partition("/probe")
        with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT, headers=headers) as client:
            assert client.get("/api/v1/health").status_code == 200
            barrier.wait()
            return client.get(f"/probe{path}").status_code

    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        return sorted(pool.map(run, urls))


async def parallel(urls: list[str], headers: dict[str, str] | None = None) -> list[int]:
    return await anyio.to_thread.run_sync(_parallel, urls, headers)


LIMIT_10 = {"DEFAULT_RATE_LIMIT_LIMIT": "10", "DEFAULT_RATE_LIMIT_PERIOD": "3600"}


async def test_40_parallel_requests_on_two_workers_admit_exactly_the_limit(
    servers: Callable[..., LiveServer],
) -> None:
    server = servers(**LIMIT_10)
    wait_for_fresh_window(3600, margin=30)
    for run in range(5):
        statuses = await parallel([f"{server.base_url}/probe/item/run{run}"] * 40)
        assert statuses.count(200) == 10, (run, statuses)
        assert statuses.count(429) == 30, (run, statuses)
    assert "Traceback" not in server.log()


async def test_two_servers_sharing_redis_admit_exactly_the_limit(servers: Callable[..., LiveServer]) -> None:
    first, second = servers(**LIMIT_10), servers(**LIMIT_10)
    wait_for_fresh_window(3600, margin=30)
    for run in range(5):
        urls = [f"{server.base_url}/probe/item/shared{run}" for server in (first, second) for _ in range(20)]
        statuses = await parallel(urls)
        assert statuses.count(200) == 10, (run, statuses)


async def test_a_rule_change_applies_on_every_worker_within_a_second(
    servers: Callable[..., LiveServer], db_session: AsyncSession, make_user: MakeUser
) -> None:
    tier = await make_tier(db_session, "pro", probe_limited=(1, 3600))
    await make_user("ann", tier_id=tier.id)
    await make_user("root", superuser=True)
    server = servers()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as client:

        async def token(username: str) -> dict[str, str]:
            response = await client.post("/api/v1/login", data={"username": username, "password": PASSWORD})
            return bearer(response.json()["access_token"])

        ann, root = await token("ann"), await token("root")
        before = [(await client.get("/probe/limited", headers=ann)).status_code for _ in range(4)]
        assert before == [200, 429, 429, 429]
        rule = (await client.get("/api/v1/tier/pro/rate_limits")).json()["data"][0]
        changed = await client.patch(f"/api/v1/tier/pro/rate_limit/{rule['id']}", json={"limit": 100}, headers=root)
        assert changed.status_code == 200, changed.text
        changed_at = time.monotonic()
        while True:
            # Separate connections, so both workers answer some of them.
            statuses = await parallel([f"{server.base_url}/probe/limited"] * 8, headers=ann)
            if statuses == [200] * 8 or time.monotonic() - changed_at > 1:
                break
    assert statuses == [200] * 8
    assert time.monotonic() - changed_at <= 1.5


async def test_the_embedded_counter_keeps_the_same_fixed_windows_and_rules() -> None:
    counter = MemoryCounter()
    hit = Hit(subject="1", path="probe_item_a", template="probe_item_{name}", tier_id=7, now=1000, default=(1, 60))
    assert await counter.hit(hit) == RulesMissing(0)
    await counter.store_rules(7, TierRules("pro", {"probe_item_{name}": (2, 30)}), 0)
    counted = [await counter.hit(hit) for _ in range(3)]
    assert [(c.decision.count, c.decision.exceeded, c.matched) for c in counted if isinstance(c, Counted)] == [
        (1, False, "template"),
        (2, False, "template"),
        (3, True, "template"),
    ]
    assert counted[0] == Counted(Decision(limit=2, period=30, count=1, reset=20), "template", "pro")
    next_window = await counter.hit(replace(hit, now=1020))
    assert isinstance(next_window, Counted)
    assert next_window.decision.count == 1
    await counter.invalidate_rules()
    await counter.store_rules(7, TierRules("pro", {}), 0)  # read before the invalidation: ignored
    assert await counter.hit(hit) == RulesMissing(1)


async def test_a_route_with_the_guard_documents_429(limited: Callable[..., Any]) -> None:
    async with limited() as client:
        document = (await client.get("/schema/openapi.json")).json()
    assert "429" in document["paths"]["/probe/limited"]["get"]["responses"]
    assert "429" not in document["paths"]["/api/v1/tiers"]["get"]["responses"]


async def test_every_rule_write_applies_at_once(
    limited: Callable[..., Any], db_session: AsyncSession, make_user: MakeUser, log_file: Path
) -> None:
    tier = await make_tier(db_session, "pro")
    await make_user("ann", tier_id=tier.id)
    await make_user("root", superuser=True)
    async with limited(DEFAULT_RATE_LIMIT_LIMIT="100", DEFAULT_RATE_LIMIT_PERIOD="60") as client:
        ann, root = await log_in(client, "ann"), await log_in(client, "root")

        async def policy() -> str:
            return (await client.get("/probe/limited", headers=ann)).headers["ratelimit-policy"]

        assert await policy() == "100; w=60"
        created = await client.post(
            "/api/v1/tier/pro/rate_limit", json={"path": "/probe/limited", "limit": 5, "period": 50}, headers=root
        )
        assert created.status_code == 201, created.text
        assert await policy() == "5; w=50"
        rule = created.json()["id"]
        assert (await client.patch(f"/api/v1/tier/pro/rate_limit/{rule}", json={"limit": 7}, headers=root)).is_success
        assert await policy() == "7; w=50"
        assert (await client.patch("/api/v1/tier/pro", json={"name": "gold"}, headers=root)).is_success
        await client.get("/probe/item/x", headers=ann)
        assert logged(log_file, "warning")[-1]["tier"] == "gold"  # the renamed tier, in the log of the fallback
        assert (await client.delete(f"/api/v1/tier/gold/rate_limit/{rule}", headers=root)).is_success
        assert await policy() == "100; w=60"
        failed = await client.post(
            "/api/v1/tier/gold/rate_limit", json={"path": "/probe/limited", "limit": 1}, headers=root
        )
        assert failed.status_code == 422
        assert (await client.delete("/api/v1/tier/gold", headers=root)).is_success
        assert await policy() == "100; w=60"

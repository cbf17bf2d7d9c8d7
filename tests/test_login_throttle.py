"""Login throttling (issue 13, OWASP API2/API4): failed logins per account and address, and per address."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.auth.throttle import LocalCounts
from app.core.settings import Settings
from app.main import create_app
from tests.conftest import REDIS_DB, REDIS_HOST, REDIS_PORT, MakeUser
from tests.faults import wait_until
from tests.helpers import PASSWORD
from tests.servers import REQUEST_TIMEOUT, free_port, simultaneously

pytestmark = pytest.mark.anyio

AppClient = AsyncTestClient[Litestar]
THROTTLED = {"status_code": 429, "detail": "Too many failed login attempts. Try again later."}
WRONG = {"status_code": 401, "detail": "Wrong username, email or password."}
ATTACKER, OWNER = "203.0.113.66", "198.51.100.7"


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "app.log"


@pytest.fixture
def throttled(settings_with: Callable[..., Settings], log_file: Path) -> Callable[..., Any]:
    """``async with throttled(LOGIN_MAX_FAILURES="3") as client``; every peer may set its address with
    X-Forwarded-For (``log_in(client, ..., address=...)``)."""

    @asynccontextmanager
    async def build(**env: str) -> AsyncIterator[AppClient]:
        settings = settings_with(**{"FORWARDED_ALLOW_IPS": "*", "LOG_FILE_PATH": str(log_file), **env})
        async with AsyncTestClient(create_app(settings), base_url="https://testserver.local") as client:
            yield client

    return build


async def log_in(client: AppClient, username: str, password: str, *, address: str = ATTACKER) -> httpx.Response:
    form = {"username": username, "password": password}
    return await client.post("/api/v1/login", data=form, headers={"X-Forwarded-For": address})


def counters() -> redis.Redis:
    return redis.Redis(host=REDIS_HOST, port=int(REDIS_PORT), db=int(REDIS_DB), decode_responses=True)


def auth_log(log_file: Path, level: str = "error") -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    return [line for line in lines if line.get("level") == level and line.get("logger") == "app.auth"]


async def test_a_brute_force_is_refused_after_the_limit_without_verifying_passwords(
    throttled: Callable[..., Any], make_user: MakeUser
) -> None:
    await make_user("ann")
    async with throttled() as client:
        durations, responses = [], []
        for attempt in range(100):
            started = time.perf_counter()
            responses.append(await log_in(client, "ann", f"guess-{attempt}"))
            durations.append(time.perf_counter() - started)
        from_owner = await log_in(client, "ann", PASSWORD, address=OWNER)
        right_password_from_attacker = await log_in(client, "ann", PASSWORD)
    statuses = [response.status_code for response in responses]
    assert statuses == [401] * 5 + [429] * 95  # LOGIN_MAX_FAILURES=5 per account and address
    assert all(response.json() == THROTTLED for response in responses[5:])
    assert all(response.headers["cache-control"] == "no-store" for response in responses)
    retry_after = int(responses[-1].headers["retry-after"])
    assert 1 <= retry_after <= 900
    # A refused attempt verifies nothing: typically it takes a fraction of the quickest Argon2 verification.
    assert statistics.median(durations[5:]) < min(durations[:5]) / 4, (durations[:5], durations[5:])
    assert from_owner.status_code == 200  # the owner elsewhere is not locked out by the attacker
    assert right_password_from_attacker.status_code == 429  # not even the right password gets checked


async def test_an_ipv6_client_rotating_through_its_own_64_gets_no_fresh_counters(
    throttled: Callable[..., Any], make_user: MakeUser, log_file: Path
) -> None:
    await make_user("ann")
    network, neighbour = "2001:db8:a:b:", "2001:db8:a:c::1"  # the next /64: another subscriber
    async with throttled(LOGIN_MAX_FAILURES="3", LOGIN_MAX_FAILURES_PER_ADDRESS="3") as client:
        # One guess per address, each spelled its own way: full, upper case, compressed, with a zone.
        guesses = [
            await log_in(client, "ann", "nope", address=address)
            for address in (f"{network}0:0:0:1", f"{network.upper()}FFFF::2", f"{network}:3", f"{network}:4%eth0")
        ]
        sprayed = await log_in(client, "bob", "nope", address=f"{network}:5")
        neighbour_logs_in = await log_in(client, "ann", PASSWORD, address=neighbour)
    assert [response.status_code for response in guesses] == [401, 401, 401, 429]  # 3 per account and /64
    assert sprayed.status_code == 429  # its 3 failures reached the address limit of the /64 too
    assert neighbour_logs_in.status_code == 200
    with counters() as store:
        assert sorted(store.keys("ratelimit:login:address:*")) == ["ratelimit:login:address:2001:db8:a:b::/64"]
    assert {(line["limit"], line["address"]) for line in auth_log(log_file, "warning")} == {
        ("account", "2001:db8:a:b::/64"),
        ("address", "2001:db8:a:b::/64"),
    }


async def test_the_lockout_ends_with_its_window(throttled: Callable[..., Any], make_user: MakeUser) -> None:
    await make_user("ann")
    async with throttled(LOGIN_MAX_FAILURES="2", LOGIN_FAILURE_WINDOW="1") as client:
        failures = [(await log_in(client, "ann", "nope")).status_code for _ in range(3)]
        with counters() as store:
            keys = store.keys("ratelimit:login:*")
            assert len(keys) == 2
            assert all(0 < store.pttl(key) <= 1000 for key in keys)  # counted and given their window at once
            wait_until(lambda: not store.keys("ratelimit:login:*"), timeout=5, what="the window's end")
        after_the_window = await log_in(client, "ann", PASSWORD)
    assert failures == [401, 401, 429]
    assert after_the_window.status_code == 200


async def test_the_per_address_limit_stops_spraying_over_many_accounts(
    throttled: Callable[..., Any], make_user: MakeUser
) -> None:
    await make_user("ann")
    async with throttled(LOGIN_MAX_FAILURES_PER_ADDRESS="6") as client:
        # Known and unknown accounts count alike: same answers, so nothing tells which ones exist.
        sprayed = [await log_in(client, name, "Summer2024!") for name in ("ann", "bob", "cy", "dee", "eve", "fay")]
        next_account = await log_in(client, "gus@example.com", "Summer2024!")
        ann_from_the_sprayer = await log_in(client, "ann", PASSWORD)
        ann_from_elsewhere = await log_in(client, "ann", PASSWORD, address=OWNER)
    assert [response.json() for response in sprayed] == [WRONG] * 6
    assert next_account.json() == THROTTLED
    assert ann_from_the_sprayer.status_code == 429
    assert ann_from_elsewhere.status_code == 200


async def test_a_successful_login_clears_the_account_counter_only(
    throttled: Callable[..., Any], make_user: MakeUser
) -> None:
    await make_user("ann")
    async with throttled(LOGIN_MAX_FAILURES="3") as client:
        before = [(await log_in(client, "Ann ", "nope")).status_code for _ in range(2)]  # the same account as "ann"
        success = await log_in(client, "ann", PASSWORD)
        after = [(await log_in(client, "ann", "nope")).status_code for _ in range(4)]
    assert before == [401, 401]
    assert success.status_code == 200
    assert after == [401, 401, 401, 429]  # three fresh failures: the two before the success were forgotten
    with counters() as store:
        # The address counts every verified failure (5); a success never counted there.
        assert store.get(f"ratelimit:login:address:{ATTACKER}") == "5"


async def test_throttling_can_be_disabled(throttled: Callable[..., Any], make_user: MakeUser) -> None:
    await make_user("ann")
    async with throttled(LOGIN_THROTTLE_ENABLED="false", LOGIN_MAX_FAILURES="1") as client:
        statuses = [(await log_in(client, "ann", "nope")).status_code for _ in range(4)]
    assert statuses == [401] * 4
    with counters() as store:
        assert store.keys("ratelimit:login:*") == []


async def test_an_unreachable_redis_still_throttles_in_the_process_and_never_500s(
    throttled: Callable[..., Any], make_user: MakeUser, log_file: Path
) -> None:
    await make_user("ann")
    async with throttled(REDIS_RATE_LIMIT_PORT=str(free_port()), LOGIN_MAX_FAILURES="3") as client:
        statuses = [(await log_in(client, "ann", "nope")).status_code for _ in range(6)]
        from_owner = await log_in(client, "ann", PASSWORD, address=OWNER)
    assert statuses == [401, 401, 401, 429, 429, 429]  # fail closed, through the in-process counters
    assert from_owner.status_code == 200
    errors = auth_log(log_file)
    assert errors
    assert all(error["event"] == "login throttle store unavailable, counting in this process" for error in errors)


def test_the_in_process_counters_stay_bounded() -> None:
    counts = LocalCounts(capacity=10)
    for n in range(100):
        assert counts.reserve((f"account:{n}", f"address:{n}"), (2, 1), window=60).wait == 0
        assert counts.failed(f"address:{n}", window=60) == 1
    assert len(counts.entries) <= 10
    # The newest entries are kept: the latest address is still counted.
    assert counts.reserve(("account:new", "address:99"), (2, 1), window=60).wait > 0


async def test_two_workers_share_the_counters(start_server: Callable[..., Any], make_user: MakeUser) -> None:
    await make_user("ann")
    server = start_server(workers=2, LOGIN_MAX_FAILURES="4")  # 127.0.0.1 is a trusted proxy by default

    def guess(http: httpx.Client) -> httpx.Response:
        form = {"username": "ann", "password": "nope"}
        return http.post("/api/v1/login", data=form, headers={"X-Forwarded-For": ATTACKER})

    responses = await simultaneously(server.base_url, [guess] * 12)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as http:
        form = {"username": "ann", "password": PASSWORD}
        owner = await http.post("/api/v1/login", data=form, headers={"X-Forwarded-For": OWNER})
    # Per-process counters would let each worker admit 4.
    assert sorted(response.status_code for response in responses) == [401] * 4 + [429] * 8
    assert owner.status_code == 200
    assert '"status_code":500' not in server.log().replace(" ", "")


async def test_many_users_behind_one_address_log_in_at_once(
    start_server: Callable[..., Any], make_user: MakeUser
) -> None:
    """Only verified failures count on the address: parallel logins in flight never use up its limit (a NAT, an
    office proxy, W5 of the benchmark), while the per-account reservation stays exact."""
    names = [f"user{number}" for number in range(8)]
    for name in names:
        await make_user(name)
    server = start_server(workers=2, LOGIN_MAX_FAILURES_PER_ADDRESS="2")

    def log_in_as(name: str) -> Callable[[httpx.Client], httpx.Response]:
        form = {"username": name, "password": PASSWORD}
        return lambda http: http.post("/api/v1/login", data=form, headers={"X-Forwarded-For": ATTACKER})

    responses = await simultaneously(server.base_url, [log_in_as(name) for name in names])
    assert [response.status_code for response in responses] == [200] * len(names)
    with counters() as store:
        assert store.get(f"ratelimit:login:address:{ATTACKER}") is None

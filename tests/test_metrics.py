"""Prometheus metrics (SPEC §14.3): ``GET /metrics`` in-process and from a real 2-worker server, where one scrape
must add up every worker's counts; and the Grafana dashboard queries only metrics the app exports."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from saq.queue.redis import RedisQueue
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from app.__main__ import MULTIPROC_DIR, metrics_directory
from app.core.db import ENGINE_STATE_KEY
from app.core.metrics import DURATION_BUCKETS, mark_dead_workers
from app.core.queue import QUEUE_NAME
from app.core.request_metrics import FLUSH_SECONDS
from app.core.settings import Settings
from app.main import create_app
from app.users.models import User
from tests.conftest import Login, MakeUser
from tests.helpers import PASSWORD, bearer
from tests.servers import PROJECT_ROOT, LiveServer, free_port, live_server
from tests.test_posts import make_posts
from tests.test_rate_limit import make_tier

pytestmark = pytest.mark.anyio

Client = AsyncTestClient[Litestar]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
DASHBOARD = PROJECT_ROOT / "deploy/grafana/dashboards/litestar.json"
HEALTH = "/api/v1/health"
USERS_PAGE = "/api/v1/users?page=1&items_per_page=1"


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels`` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in found.items() if n == name and wanted <= have)


async def scrape(client: Client) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return samples(response.text)


async def write_worker_stats(queue: RedisQueue, worker_id: str, **outcomes: int) -> None:
    """What a SAQ worker publishes every 10 s: its totals, through SAQ's own ``worker_info``."""
    for outcome, count in outcomes.items():
        setattr(queue, outcome, count)
    await queue.worker_info(worker_id, queue_key=queue.name, ttl=60)


# --- in-process: one worker, the normal registry -------------------------------------------------------------


async def test_metrics_has_the_request_app_and_queue_families_after_traffic(client: Client, settings: Settings) -> None:
    assert (await client.get(HEALTH)).status_code == 200
    response = await client.get("/metrics")

    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    for name in (
        "litestar_requests",
        "litestar_request_duration_seconds",
        "litestar_requests_in_progress",
        "litestar_response_cache_lookups",
        "litestar_app_info",
        "litestar_queue_up",
        "litestar_queue_jobs",
        "litestar_queue_workers",
    ):
        assert name in families, name
    assert families["litestar_request_duration_seconds"].type == "histogram"
    found = samples(response.text)
    app = settings.app
    info = {"app_name": app.name, "version": app.version, "environment": app.environment}
    assert value(found, "litestar_app_info", **info) == 1
    assert value(found, "litestar_requests_total", method="GET", path=HEALTH, status_code="200") >= 1
    assert value(found, "litestar_queue_up", queue=QUEUE_NAME) == 1


async def test_one_route_with_many_ids_is_one_path_label(client: Client) -> None:
    before = await scrape(client)
    for number in range(100):
        assert (await client.get(f"/api/v1/user/nobody{number}")).status_code == 404
    after = await scrape(client)

    paths = {dict(labels)["path"] for name, labels in after if name == "litestar_requests_total"}
    assert "/api/v1/user/{username}" in paths
    assert not [path for path in paths if "nobody" in path]
    counted = {"path": "/api/v1/user/{username}", "status_code": "404"}
    assert (
        value(after, "litestar_requests_total", **counted) - value(before, "litestar_requests_total", **counted) == 100
    )


async def test_requests_that_match_no_route_are_counted_as_path_none(client: Client) -> None:
    """404 and 405 from the router (a scanner, a wrong method) reach no route's middleware: counted with the path
    ``none``, a made-up method as OTHER, so neither URLs nor methods can add series."""
    before = await scrape(client)
    for number in range(20):
        assert (await client.get(f"/wp-admin/{number}.php")).status_code == 404
    assert (await client.delete(HEALTH)).status_code == 405
    assert (await client.request("BREW", "/coffee")).status_code == 404
    assert (await client.get(HEALTH)).status_code == 200
    assert (await client.get("/api/v1/user/nobody")).status_code == 404  # a route's own 404: its path template
    after = await scrape(client)

    def delta(**labels: str) -> float:
        return value(after, "litestar_requests_total", **labels) - value(before, "litestar_requests_total", **labels)

    assert delta(method="GET", path="none", status_code="404") == 20
    assert delta(method="DELETE", path="none", status_code="405") == 1
    assert delta(method="OTHER", path="none", status_code="404") == 1
    assert delta(path="none") == 22
    assert delta(method="GET", path=HEALTH, status_code="200") == 1  # a routed request is counted once, as before
    paths = {dict(labels)["path"] for name, labels in after if name == "litestar_requests_total"}
    assert not [path for path in paths if "wp-admin" in path or "coffee" in path]


async def test_batched_counts_match_what_each_request_observed(client: Client, settings: Settings) -> None:
    """Counted in the process, written in batches: the histogram's buckets, count and sum still add up, and the
    in-progress gauge is back to zero."""
    before = await scrape(client)
    for _ in range(30):
        assert (await client.get(HEALTH)).status_code == 200
    after = await scrape(client)
    labels = {"method": "GET", "path": HEALTH, "status_code": "200", "app_name": settings.app.name}

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert delta("litestar_requests_total") == 30
    assert delta("litestar_request_duration_seconds_count") == 30
    assert delta("litestar_request_duration_seconds_bucket", le="+Inf") == 30
    assert 0 < delta("litestar_request_duration_seconds_sum") < 30  # seconds: each request well under one
    buckets = sorted(
        (float(dict(found)["le"]), count)
        for (name, found), count in after.items()
        if name == "litestar_request_duration_seconds_bucket" and set(labels.items()) <= found
    )
    assert len(buckets) == len(DURATION_BUCKETS) + 1  # one series: every bound and +Inf
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)  # cumulative
    in_progress = {"method": "GET", "path": HEALTH, "app_name": settings.app.name}
    assert value(after, "litestar_requests_in_progress", **in_progress) == 0


async def test_counts_are_written_within_the_flush_interval_without_a_scrape(
    client: Client, settings: Settings
) -> None:
    def written() -> float:
        labels = {"method": "GET", "path": HEALTH, "status_code": "200", "app_name": settings.app.name}
        return REGISTRY.get_sample_value("litestar_requests_total", labels) or 0.0

    await scrape(client)  # writes what is pending
    start = written()
    assert (await client.get(HEALTH)).status_code == 200
    assert written() == start  # counted in the process, not written yet
    for _ in range(30):  # three seconds at most: FLUSH_SECONDS is 1
        if written() == start + 1:
            break
        await asyncio.sleep(0.1)
    assert written() == start + 1


async def test_metrics_is_public_no_store_undocumented_and_not_counted(client: Client) -> None:
    response = await client.get("/metrics", headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert "ratelimit-limit" not in response.headers
    assert value(samples(response.text), "litestar_requests_total", path="/metrics") == 0
    document = (await client.get("/openapi.json")).json()
    assert not [path for path in document["paths"] if "metrics" in path]


async def test_a_refused_token_is_counted_as_401(client: Client) -> None:
    """The auth middleware refuses by raising, inside the metrics middleware: the status is the 401 sent."""
    counted = {"path": "/api/v1/user/me", "status_code": "401"}
    before = value(await scrape(client), "litestar_requests_total", **counted)
    assert (await client.get("/api/v1/user/me", headers=bearer("forged"))).status_code == 401
    assert value(await scrape(client), "litestar_requests_total", **counted) - before == 1


async def test_rate_limit_rejections_are_counted_by_route_and_tier(
    client: Client, db_session: AsyncSession, make_user: MakeUser, login: Login
) -> None:
    tier = await make_tier(db_session, "pro", api_v1_tasks_task=(1, 3600))
    await make_user("ann", tier_id=tier.id)
    auth = bearer(await login("ann"))
    task = "/api/v1/tasks/task"
    before = await scrape(client)

    as_ann = [await client.post(task, params={"message": "a"}, headers=auth) for _ in range(3)]
    anonymous = [await client.post(task, params={"message": "b"}) for _ in range(2)]  # the default: 1 a minute

    assert [r.status_code for r in as_ann + anonymous] == [201, 429, 429, 201, 429]
    after = await scrape(client)
    for tier_name, refused in (("pro", 2), ("none", 1)):
        labels = {"path": task, "tier": tier_name}
        moved = value(after, "litestar_rate_limited_total", **labels) - value(
            before, "litestar_rate_limited_total", **labels
        )
        assert moved == refused, tier_name


async def test_cache_hits_and_misses_are_counted(client: Client, ann: User, db_session: AsyncSession) -> None:
    (post,) = await make_posts(db_session, ann, 1)
    before = await scrape(client)
    for _ in range(3):
        assert (await client.get(f"/api/v1/ann/post/{post.id}")).status_code == 200
    after = await scrape(client)

    def moved(result: str) -> float:
        name = "litestar_response_cache_lookups_total"
        return value(after, name, result=result) - value(before, name, result=result)

    assert (moved("miss"), moved("hit")) == (1, 2)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_token_rejections_are_counted_by_kind_and_reason_and_a_refresh_replay_once(
    client: Client, make_user: MakeUser, login: Login
) -> None:
    await make_user("ann")
    access = await login("ann")
    refresh = client.cookies["refresh_token"]
    before = await scrape(client)

    assert (await client.get("/api/v1/user/me")).status_code == 401  # missing
    assert (await client.get("/api/v1/user/me", headers=bearer("forged"))).status_code == 401  # malformed
    assert (await client.post("/api/v1/logout", headers=bearer(access))).status_code == 200
    assert (await client.get("/api/v1/user/me", headers=bearer(access))).status_code == 401  # revoked
    client.cookies.clear()
    logged_out = await client.post("/api/v1/refresh", headers={"Cookie": f"refresh_token={refresh}"})
    assert logged_out.status_code == 401  # revoked by the logout
    await login("ann")
    rotated = client.cookies["refresh_token"]
    assert (await client.post("/api/v1/refresh")).status_code == 200
    client.cookies.clear()
    replay = await client.post("/api/v1/refresh", headers={"Cookie": f"refresh_token={rotated}"})
    assert replay.status_code == 401  # revoked, and a replay: the family goes too
    after = await scrape(client)

    rejected = "litestar_tokens_rejected_total"
    counts = {
        (kind, reason): moved(before, after, rejected, kind=kind, reason=reason)
        for kind in ("access", "refresh")
        for reason in ("missing", "malformed", "revoked", "expired")
    }
    assert {key: count for key, count in counts.items() if count} == {
        ("access", "missing"): 1,
        ("access", "malformed"): 1,
        ("access", "revoked"): 1,
        ("refresh", "revoked"): 2,
    }
    # Both refresh tokens came back after their jti was blacklisted (logout, rotation): each a possible replay.
    assert moved(before, after, "litestar_refresh_token_reuse_total") == 2


async def test_an_unreachable_redis_is_counted_where_each_path_goes_on_without_it(
    settings_with: Any, make_user: MakeUser, db_session: AsyncSession
) -> None:
    ann = await make_user("ann")
    (post,) = await make_posts(db_session, ann, 1)
    down = str(free_port())
    app = create_app(settings_with(REDIS_RATE_LIMIT_PORT=down, REDIS_CACHE_PORT=down))
    async with AsyncTestClient(app, base_url="https://testserver.local") as client:
        before = await scrape(client)
        login = await client.post("/api/v1/login", data={"username": "ann", "password": PASSWORD})
        assert login.status_code == 200  # the login throttle counted in this process
        auth = bearer(login.json()["access_token"])
        assert (await client.get(f"/api/v1/ann/post/{post.id}")).status_code == 200  # the cache bypassed
        assert (await client.post("/api/v1/tasks/task", params={"message": "m"})).status_code == 201  # not limited
        patched = await client.patch(f"/api/v1/ann/post/{post.id}", json={"title": "New"}, headers=auth)
        assert patched.status_code == 200
        after = await scrape(client)

    fallbacks = {
        (sample_labels["component"], sample_labels["operation"]): count
        for (name, labels), count in after.items()
        if name == "litestar_redis_fallbacks_total" and (sample_labels := dict(labels))
    }
    for key in list(fallbacks):
        fallbacks[key] -= value(before, "litestar_redis_fallbacks_total", component=key[0], operation=key[1])
    assert {key: count for key, count in fallbacks.items() if count} == {
        ("login_throttle", "reserve"): 1,
        ("login_throttle", "succeeded"): 1,
        ("response_cache", "get"): 1,
        ("response_cache", "set"): 1,
        ("response_cache", "invalidate"): 1,
        ("rate_limiter", "count"): 1,  # the task route, the one rate-limited here
    }
    assert moved(before, after, "litestar_response_cache_invalidations_total") == 1


async def test_queue_depth_and_job_outcomes_come_from_the_queue(client: Client, queue: RedisQueue) -> None:
    for number in range(3):
        assert await queue.enqueue("sample_background_task", message=str(number)) is not None
    assert await queue.dequeue() is not None  # one job taken by a "worker": active
    await write_worker_stats(queue, "w1", complete=5, failed=2, retried=1, aborted=0)

    found = await scrape(client)

    jobs = {state: value(found, "litestar_queue_jobs", queue=QUEUE_NAME, state=state) for state in ("queued", "active")}
    assert jobs == {"queued": 2, "active": 1}
    assert value(found, "litestar_queue_workers", queue=QUEUE_NAME) == 1
    outcomes = {
        outcome: value(found, "litestar_queue_job_outcomes_total", worker="w1", outcome=outcome)
        for outcome in ("complete", "failed", "retried", "aborted")
    }
    assert outcomes == {"complete": 5, "failed": 2, "retried": 1, "aborted": 0}


async def test_an_unreachable_queue_leaves_the_scrape_answering(settings_with: Any) -> None:
    app = create_app(settings_with(REDIS_QUEUE_PORT=str(free_port())))
    async with AsyncTestClient(app) as client:
        started = time.monotonic()
        found = await scrape(client)
    assert time.monotonic() - started < 2
    assert value(found, "litestar_queue_up", queue=QUEUE_NAME) == 0
    assert value(found, "litestar_app_info") == 1


async def test_the_pool_gauges_show_connections_in_use_and_overflow_and_timeouts_are_counted(
    settings_with: Any,
) -> None:
    app = create_app(settings_with(DB__POOL_SIZE="2", DB__MAX_OVERFLOW="1", DB__CONNECT_TIMEOUT="1"))
    async with AsyncTestClient(app) as client:
        engine: AsyncEngine = app.state[ENGINE_STATE_KEY]

        def check_out() -> AsyncConnection:
            """A connection of the app's pool, held by the test (checked out on the app's own event loop)."""
            connection = engine.connect()
            client.blocking_portal.call(connection.start)
            return connection

        assert (await client.get(USERS_PAGE)).status_code == 200  # one connection opened, and back in the pool
        idle = await scrape(client)
        held = [check_out(), check_out()]
        busy = await scrape(client)
        held.append(check_out())  # beyond the pool size: the one overflow connection allowed
        full = await scrape(client)
        started = time.monotonic()
        refused = await client.get(USERS_PAGE)  # a fourth connection: none comes free within 1 s
        waited = time.monotonic() - started
        after_timeout = await scrape(client)
        for connection in held:
            client.blocking_portal.call(connection.close)
        released = await scrape(client)

    def pool(found: Samples) -> list[float]:
        return [value(found, f"litestar_db_pool_{name}") for name in ("size", "checked_out", "overflow")]

    assert [pool(found) for found in (idle, busy, full, released)] == [[2, 0, 0], [2, 2, 0], [2, 3, 1], [2, 0, 0]]
    assert (refused.status_code, refused.json()["detail"], refused.headers["retry-after"]) == (
        503,
        "Service Unavailable",
        "5",
    )
    assert 1 <= waited < 3
    timeouts = "litestar_db_pool_timeouts_total"
    assert value(after_timeout, timeouts) - value(full, timeouts) == 1
    assert value(released, timeouts) == value(after_timeout, timeouts)


# --- the multiprocess directory of `python -m app` -----------------------------------------------------------


def test_the_launcher_gives_workers_a_private_directory_and_removes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_DIR, raising=False)
    with metrics_directory() as directory:
        assert os.environ[MULTIPROC_DIR] == str(directory)
        (directory / "counter_1.db").write_bytes(b"")
    assert not directory.exists()
    assert MULTIPROC_DIR not in os.environ


def test_directories_of_killed_servers_are_removed_at_the_next_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(MULTIPROC_DIR, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    orphan = tmp_path / f"app-metrics-{int(gone.stdout)}-abc"
    alive = tmp_path / f"app-metrics-{os.getpid()}-def"  # a server still running (this process)
    for directory in (orphan, alive):
        directory.mkdir()
    with metrics_directory() as directory:
        assert directory.parent == tmp_path
    assert not orphan.exists()
    assert alive.exists()


def test_an_operators_directory_is_kept_but_emptied_of_stale_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "counter_99999.db").write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("not ours")
    monkeypatch.setenv(MULTIPROC_DIR, str(tmp_path / "."))
    with metrics_directory():
        assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
    assert tmp_path.is_dir()


def test_the_launcher_does_not_import_prometheus_client() -> None:
    """Forked workers inherit imported modules: one imported before the directory is set stays single-process."""
    code = "import sys, app.__main__; sys.exit('prometheus_client' in sys.modules)"
    launcher = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT / "src", check=False)  # noqa: S603
    assert launcher.returncode == 0


# --- a real server with two Granian workers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path]]:
    """``python -m app`` with 2 workers; its private metrics directory is created under a known TMPDIR."""
    temp = tmp_path_factory.mktemp("server-tmp")
    with live_server({**test_env, "TMPDIR": str(temp)}, tmp_path_factory.mktemp("server-log"), workers=2) as running:
        (directory,) = temp.glob("app-metrics-*")
        yield running, directory
    assert not directory.exists()  # removed when the server stops


def requests_per_worker(directory: Path, path: str) -> dict[int, float]:
    """Each worker's own count of ``path``, read from its file alone."""
    counts = {}
    for file in directory.glob("counter_*.db"):
        merged = MultiProcessCollector.merge([str(file)], accumulate=False)  # type: ignore[no-untyped-call]
        counts[int(file.stem.split("_")[1])] = sum(
            sample.value
            for metric in merged
            for sample in metric.samples
            if sample.name == "litestar_requests_total" and sample.labels.get("path") == path
        )
    return counts


def written_within_a_flush(directory: Path, total: float) -> None:
    """Each worker writes its counts in batches: all of them are in the files within FLUSH_SECONDS (and a bit)."""
    deadline = time.monotonic() + 3 * FLUSH_SECONDS
    while sum(requests_per_worker(directory, HEALTH).values()) < total and time.monotonic() < deadline:
        time.sleep(FLUSH_SECONDS / 10)
    assert sum(requests_per_worker(directory, HEALTH).values()) == total


def test_one_scrape_adds_up_every_worker(server: tuple[LiveServer, Path]) -> None:
    running, directory = server
    time.sleep(1.5 * FLUSH_SECONDS)  # the readiness checks' counts are written by now
    before = value(samples(httpx.get(f"{running.base_url}/metrics").text), "litestar_requests_total", path=HEALTH)
    sent = 0
    with ThreadPoolExecutor(8) as pool:
        # Fresh connections, several at a time, until the kernel handed some to each worker.
        while sent < 400 and sum(1 for count in requests_per_worker(directory, HEALTH).values() if count) < 2:
            statuses = list(pool.map(lambda _: httpx.get(f"{running.base_url}{HEALTH}").status_code, range(40)))
            assert statuses == [200] * 40
            sent += 40
            written_within_a_flush(directory, before + sent)
    per_worker = [count for count in requests_per_worker(directory, HEALTH).values() if count]

    after = value(samples(httpx.get(f"{running.base_url}/metrics").text), "litestar_requests_total", path=HEALTH)

    assert after - before == sent
    assert len(per_worker) == 2  # both workers counted, neither saw all the requests
    assert sum(per_worker) == after
    assert all(count < after for count in per_worker)


def pool_per_worker(directory: Path) -> dict[int, tuple[float, float]]:
    """Each worker's own pool size and connections in use, read from its file alone (no scrape)."""
    pools = {}
    for file in directory.glob("gauge_livesum_*.db"):
        merged = MultiProcessCollector.merge([str(file)], accumulate=False)  # type: ignore[no-untyped-call]
        found = {sample.name: sample.value for metric in merged for sample in metric.samples}
        pools[int(file.stem.rsplit("_", 1)[1])] = (
            found["litestar_db_pool_size"],
            found["litestar_db_pool_checked_out"],
        )
    return pools


async def test_each_worker_writes_its_pool_gauges_by_itself_and_a_scrape_adds_them_up(
    server: tuple[LiveServer, Path], settings: Settings
) -> None:
    """A request waiting on a lock holds its worker's connection: that worker's own file shows it within
    FLUSH_SECONDS without any scrape, and a scrape, whichever worker answers it, adds up both workers."""
    running, directory = server
    size = settings.db.pool_size

    async def until(wanted: list[tuple[float, float]]) -> list[tuple[float, float]]:
        deadline = time.monotonic() + 3 * FLUSH_SECONDS
        while True:
            seen = sorted(pool_per_worker(directory).values())
            if seen == wanted or time.monotonic() > deadline:
                return seen
            await asyncio.sleep(FLUSH_SECONDS / 10)

    def scraped(found: Samples) -> tuple[float, float]:
        return value(found, "litestar_db_pool_size"), value(found, "litestar_db_pool_checked_out")

    locker = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            assert await until([(size, 0), (size, 0)]) == [(size, 0), (size, 0)]
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute('LOCK TABLE "user" IN ACCESS EXCLUSIVE MODE')
            stuck = asyncio.create_task(http.get(f"{running.base_url}{USERS_PAGE}"))
            assert await until([(size, 0), (size, 1)]) == [(size, 0), (size, 1)]
            during = samples((await http.get(f"{running.base_url}/metrics")).text)
            await transaction.rollback()
            assert (await stuck).status_code == 200
            assert await until([(size, 0), (size, 0)]) == [(size, 0), (size, 0)]
            after = samples((await http.get(f"{running.base_url}/metrics")).text)
    finally:
        await locker.close()

    assert (scraped(during), scraped(after)) == ((2 * size, 1), (2 * size, 0))


def dashboard_metric_names() -> set[str]:
    """Every metric name in the dashboard's queries (panels and variables), with its constant variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    constants = {v["name"]: v["query"] for v in dashboard["templating"]["list"] if v["type"] == "constant"}
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert queries
    return {name for query in queries for name in metric_names(query, constants)}


def metric_names(query: str, constants: dict[str, str]) -> set[str]:
    """The metric names of one PromQL query: what is left once functions, labels, ranges and groupings are gone."""
    text = query
    for name, constant in constants.items():
        text = text.replace(f"${{{name}}}", constant).replace(f"${name}", constant)
    text = re.sub(r"label_values\(([^,]+),[^)]*\)", r"\1", text)  # a variable's (metric, label)
    text = re.sub(r'"[^"]*"', "", text)  # label values
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)  # label matchers, ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\b\s*(\([^)]*\))?", "", text)
    text = re.sub(r"\b[a-zA-Z_]\w*\s*\(", "(", text)  # functions and aggregations
    return {token for token in re.findall(r"\b[a-zA-Z_:][\w:]*\b", text) if token not in {"or", "and", "unless"}}


async def test_the_dashboard_queries_only_exported_metrics(server: tuple[LiveServer, Path], queue: RedisQueue) -> None:
    running, _ = server
    task = f"{running.base_url}/api/v1/tasks/task"
    async with httpx.AsyncClient() as http:
        statuses = [(await http.post(task, params={"message": "m"})).status_code for _ in range(2)]
        assert statuses == [201, 429]  # the default limit, 1 a minute: a rejection
        await write_worker_stats(queue, "w1", complete=1)
        exported = {name for name, _ in samples((await http.get(f"{running.base_url}/metrics")).text)}

    used = dashboard_metric_names()
    assert {
        "litestar_requests_total",
        "litestar_queue_jobs",
        "litestar_rate_limited_total",
        "litestar_db_pool_checked_out",
        "litestar_tokens_rejected_total",
        "litestar_redis_fallbacks_total",
    } <= used
    assert used - exported == set()


def test_a_scrape_forgets_the_in_progress_gauge_of_a_dead_worker(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    dead, alive = int(finished.stdout), os.getpid()
    for name in (f"gauge_livesum_{dead}.db", f"gauge_livesum_{alive}.db", f"counter_{dead}.db"):
        (tmp_path / name).write_bytes(b"")

    mark_dead_workers(tmp_path)

    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [f"counter_{dead}.db", f"gauge_livesum_{alive}.db"]
    )

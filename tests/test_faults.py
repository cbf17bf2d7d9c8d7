"""Fault injection against real servers (SPEC §1.3, §5.7, §6.5, §10; notes §D3, §D4, §D6).

Each test breaks a dependency the test owns while a Granian server of the app is serving: a private redis-server is
killed and started again on its port, a relay in front of PostgreSQL is cut and restored, the only pooled
connection is held on a lock. Every request is bounded; the app is never restarted to recover.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from uuid import uuid4

import anyio
import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient
from saq.queue.redis import RedisQueue

from app.core.queue import JOB_OPTIONS, QUEUE_NAME
from app.core.settings import Settings
from app.main import create_app
from tests.conftest import MakeUser, StartServer
from tests.faults import (
    BOUND,
    PrivateRedis,
    assert_never_500,
    cpu_seconds,
    logged,
    postgres_relay,
    private_redis,
    timed,
    wait_async,
    wait_until,
)
from tests.helpers import PASSWORD, bearer
from tests.servers import LiveServer
from tests.test_tasks import Workers, poll_task

pytestmark = pytest.mark.anyio

LIMIT = 3
RATE_LIMIT_HEADERS = ("RateLimit-Policy", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def no_rate_limit_headers(response: httpx.Response) -> bool:
    return not any(name in response.headers for name in RATE_LIMIT_HEADERS)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path) as server:
        yield server


# --- Redis stopped while serving (SPEC §5.7, §6.5, §10) -------------------------------------------------------


class Api:
    """The routes the Redis test drives, on one live server, as ``ann``."""

    def __init__(self, server: LiveServer) -> None:
        self.url = f"{server.base_url}/api/v1"
        login = httpx.post(f"{self.url}/login", data={"username": "ann", "password": PASSWORD}, timeout=BOUND)
        assert login.status_code == 200, login.text
        self.auth = bearer(login.json()["access_token"])

    def enqueue(self) -> httpx.Response:
        return timed(httpx.post, f"{self.url}/tasks/task", params={"message": "hello"})

    def task(self, task_id: str) -> httpx.Response:
        return timed(httpx.get, f"{self.url}/tasks/task/{task_id}")

    def create_post(self, title: str) -> httpx.Response:
        return timed(httpx.post, f"{self.url}/ann/post", json={"title": title, "text": "text"}, headers=self.auth)

    def rename_post(self, post_id: int, title: str) -> httpx.Response:
        return timed(httpx.patch, f"{self.url}/ann/post/{post_id}", json={"title": title}, headers=self.auth)

    def post(self, post_id: int) -> httpx.Response:
        return timed(httpx.get, f"{self.url}/ann/post/{post_id}")

    def posts(self) -> httpx.Response:
        return timed(httpx.get, f"{self.url}/ann/posts")


def cached_keys(redis_server: PrivateRedis) -> set[str]:
    with redis_server.client() as client:
        return {key.decode() for key in client.scan_iter("response_cache:*")}


async def test_redis_outage_fails_open_then_recovers_without_restart(
    start_server: StartServer, redis_server: PrivateRedis, make_user: MakeUser, tmp_path: Path
) -> None:
    await make_user("ann")
    log_file = tmp_path / "faults.log"
    server = start_server(
        workers=2,
        REDIS_CLIENT_HOST="127.0.0.1",
        REDIS_CLIENT_PORT=str(redis_server.port),
        REDIS_CLIENT_DB="0",
        DEFAULT_RATE_LIMIT_LIMIT=str(LIMIT),
        DEFAULT_RATE_LIMIT_PERIOD="86400",
        LOG_FILE_PATH=str(log_file),
    )
    api = Api(server)
    first = api.create_post("First").json()["id"]
    assert api.post(first).status_code == api.posts().status_code == 200
    assert cached_keys(redis_server)  # the reads are cached in the private Redis

    redis_server.kill()
    # SPEC §5.7: the limiter lets every request through (more than LIMIT), without its headers.
    created = [api.create_post(f"Down {n}") for n in range(LIMIT + 1)]
    assert [response.status_code for response in created] == [201] * (LIMIT + 1)
    assert all(no_rate_limit_headers(response) for response in created)
    # SPEC §6.5: writes succeed (their invalidation fails, logged), reads fall through to the database.
    assert api.rename_post(first, "Renamed").status_code == 200
    assert api.post(first).json()["title"] == "Renamed"
    assert api.posts().json()["total_count"] == LIMIT + 2
    # SPEC §10: the queue routes are 503, after the limiter let K1 through.
    for response in (api.enqueue(), api.task("some-task")):
        assert response.status_code == 503
        assert response.json() == {"status_code": 503, "detail": "Queue is not available"}
    assert no_rate_limit_headers(api.enqueue())
    errors = {line["event"] for line in logged(log_file, "error")}
    assert {"rate limiter unavailable", "response cache invalidation failed", "queue unavailable"} <= errors

    redis_server.start()  # same port, empty (no persistence)
    task_id = wait_until(lambda: api.enqueue().json().get("id"), timeout=BOUND, what="K1 answering 201")
    assert api.task(task_id).json()["status"] == "queued"
    assert api.post(first).status_code == 200
    assert any(key.endswith(f"ann_post_cache:{first}") for key in cached_keys(redis_server))
    # The limiter counts again, also after its Lua script was flushed (notes §D4: NOSCRIPT after a restart).
    assert api.enqueue().headers["RateLimit-Remaining"] == str(LIMIT - 2)
    with redis_server.client() as client:
        client.script_flush()
    last = api.enqueue()
    assert last.status_code == 201
    assert last.headers["RateLimit-Remaining"] == "0"
    assert api.enqueue().status_code == 429
    assert_never_500(log_file)


# --- the worker across a Redis restart (SPEC §10) ---------------------------------------------------------------

OUTAGE = 1.5


async def test_the_worker_picks_up_new_jobs_after_a_redis_restart(
    test_env: dict[str, str], redis_server: PrivateRedis, tmp_path: Path
) -> None:
    env = {**test_env, "REDIS_CLIENT_HOST": "127.0.0.1", "REDIS_CLIENT_PORT": str(redis_server.port)}
    env["REDIS_CLIENT_DB"] = "0"
    workers = Workers(env, tmp_path)
    app = create_app(Settings.from_env(env, env_file=None))
    try:
        worker = workers.running()
        async with AsyncTestClient(app, base_url="https://testserver.local") as client:
            queue = RedisQueue.from_url(redis_server.url, name=QUEUE_NAME)
            try:
                # SAQ's first sweep (at worker start, then every minute) aborts a job it finds dequeued but not yet
                # marked active: enqueue once it took its snapshot, or the job may be swept in that window.
                await wait_async(lambda: queue.redis.exists(queue.namespace("sweep")), what="the worker's sweep")
                before = await queue.enqueue("sleeping_task", seconds=0, **JOB_OPTIONS)
            finally:
                await queue.redis.aclose()
            assert before is not None
            assert (await poll_task(client, before.key, until="complete"))[1]["status"] == "complete"

            redis_server.kill()
            # While Redis is down the worker waits for it; it used to spin on the refused connection (a core). The
            # sleep is the outage observed, not a wait for something to happen.
            spent = cpu_seconds(worker.process.pid)
            await anyio.sleep(OUTAGE)
            assert cpu_seconds(worker.process.pid) - spent < OUTAGE / 4
            assert "queue unavailable, worker waiting" in worker.log()
            redis_server.start()  # empty: every job, the worker's registration and SAQ's scripts are gone
            created = await client.post("/api/v1/tasks/task", params={"message": "again"})
            assert created.status_code == 201, created.text
            statuses, body = await poll_task(client, created.json()["id"], until="complete")
        assert body["result"] == "Task again is complete!", statuses
        assert worker.process.poll() is None  # the same worker process, never restarted
        assert "queue available again" in worker.log()
    finally:
        workers.stop_all()


# --- PostgreSQL unreachable, exhausted, refusing (SPEC §1.3; notes §D6) ---------------------------------------

UNAVAILABLE = {"status_code": 503, "detail": "Service Unavailable"}


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == UNAVAILABLE
    assert response.headers["Retry-After"] == "5"


def database_routes(server: LiveServer) -> list[httpx.Response]:
    """Reads of two features, a write, and a read sent straight with asyncpg (``FastRow``), each on its own
    connection (so either worker may answer)."""
    url = f"{server.base_url}/api/v1"
    body = {"name": "New", "username": "newcomer", "email": "new@example.com", "password": PASSWORD}
    return [
        timed(httpx.get, f"{url}/users"),
        timed(httpx.get, f"{url}/tiers"),
        timed(httpx.post, f"{url}/user", json=body),
        timed(httpx.get, f"{url}/user/newcomer"),
    ]


def reads(server: LiveServer) -> list[int]:
    paths = ("users", "tiers", "user/newcomer")
    return [timed(httpx.get, f"{server.base_url}/api/v1/{path}").status_code for path in paths]


def health(server: LiveServer) -> httpx.Response:
    return timed(httpx.get, f"{server.base_url}/api/v1/health")


async def test_an_unreachable_database_is_503_within_seconds_then_recovers(
    start_server: StartServer, settings: Settings, tmp_path: Path
) -> None:
    with postgres_relay(settings.db.server, settings.db.port) as relay:
        log_file = tmp_path / "faults.log"
        server = start_server(
            workers=2, POSTGRES_PORT=str(relay.port), DB__CONNECT_TIMEOUT="1", LOG_FILE_PATH=str(log_file)
        )
        assert [response.status_code for response in database_routes(server)] == [200, 200, 201, 200]

        # A database that accepts connections and never answers: the pooled connections break, new ones time out.
        relay.cut(refuse=False)
        for response in database_routes(server):
            assert_unavailable(response)
        # A database that is gone: connections are refused.
        relay.cut(refuse=True)
        for response in database_routes(server):
            assert_unavailable(response)
        # Health is liveness only (SPEC §4.8): it never touches the database.
        assert health(server).json()["name"]

        relay.restore()
        wait_until(lambda: reads(server) == [200, 200, 200], timeout=BOUND, what="reads answering again")
        assert [reads(server) for _ in range(3)] == [[200, 200, 200]] * 3
    assert {line["event"] for line in logged(log_file, "error")} >= {"dependency unavailable"}
    assert_never_500(log_file)


@pytest.mark.parametrize(("stuck_path", "status"), [("users", 200), ("user/nobody", 404)], ids=["session", "fast-read"])
async def test_a_busy_pool_answers_503_and_a_lock_wait_ends_at_the_statement_timeout(
    start_server: StartServer, settings: Settings, stuck_path: str, status: int
) -> None:
    """One worker with one pooled connection (DB__POOL_SIZE=1): a request stuck behind a lock holds it, whether
    its statement goes through the session or straight through asyncpg (U4's ``FastRow``)."""
    server = start_server(
        workers=1, DB__POOL_SIZE="1", DB__MAX_OVERFLOW="0", DB__CONNECT_TIMEOUT="1", DB__STATEMENT_TIMEOUT="3"
    )
    url = f"{server.base_url}/api/v1"
    locker = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    observer = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute('LOCK TABLE "user" IN ACCESS EXCLUSIVE MODE')
        with ThreadPoolExecutor(max_workers=1) as pool:
            stuck = pool.submit(timed, httpx.get, f"{url}/{stuck_path}")
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = $2"
            name = settings.db.name
            # pg_stat_activity is one snapshot per transaction: the locker's own would never change.
            await wait_async(lambda: observer.fetchval(waiting, name, "Lock"), what="the request waiting on the lock")
            started = time.monotonic()
            assert_unavailable(timed(httpx.get, f"{url}/tiers"))  # waited for the pool, not forever
            assert time.monotonic() - started < 2.5
            assert_unavailable(stuck.result())  # cancelled at DB__STATEMENT_TIMEOUT
        assert await observer.fetchval(waiting, name, "Lock") == 0  # PostgreSQL stopped the statement too
        assert timed(httpx.get, f"{url}/tiers").status_code == 200  # the connection is back in the pool
        await transaction.rollback()
        assert timed(httpx.get, f"{url}/{stuck_path}").status_code == status
    finally:
        await locker.close()
        await observer.close()


async def test_too_many_connections_is_503(start_server: StartServer, settings: Settings) -> None:
    """PostgreSQL refusing a connection (SQLSTATE 53300: max_connections or a role's CONNECTION LIMIT) is an
    outage, not a bug: 503, as for any unavailable database."""
    role = f"faults_{uuid4().hex[:12]}"
    admin = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0')
        server = start_server(workers=1, POSTGRES_USER=role)
        for response in database_routes(server):
            assert_unavailable(response)
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()

"""K1 and K2 with a real worker process (SPEC §4.7, §10): enqueue, watch the job run, read its result.

The worker is ``litestar --app tests.tasks_app:create_app workers run`` on the test database and Redis; it knows
the app's jobs plus two test jobs (one fails, one sleeps as long as asked). Jobs other than K1's are put on the
queue directly; K2 reads any job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from saq.queue.redis import RedisQueue
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import TokenBlacklist
from app.core.queue import JOB_OPTIONS, JOB_TTL, SHUTDOWN_GRACE
from app.core.settings import Settings
from app.main import build_queue, create_app
from app.tasks.jobs import SAMPLE_TASK_SECONDS
from tests.conftest import Login, MakeUser
from tests.helpers import bearer
from tests.servers import PROJECT_ROOT, free_port
from tests.tasks_app import FACTORY
from tests.test_rate_limit import make_tier

pytestmark = pytest.mark.anyio

TASK_FIELDS = [
    "id",
    "function",
    "kwargs",
    "status",
    "success",
    "result",
    "error",
    "attempts",
    "queue_name",
    "enqueue_time",
    "start_time",
    "finish_time",
]
WORKER_STARTUP_TIMEOUT = 60.0


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the worker's output:\n{self.log()}")
            time.sleep(0.05)


@dataclass
class Workers:
    """At most one worker process at a time, started on demand and shared by the module's tests (a start costs
    seconds); a test that stops it (SIGTERM) leaves the next test a fresh one."""

    env: dict[str, str]
    log_dir: Path
    current: WorkerProcess | None = None
    started: list[WorkerProcess] = field(default_factory=list)

    def running(self) -> WorkerProcess:
        if self.current is None or self.current.process.poll() is not None:
            self.current = self._start()
        return self.current

    def _start(self) -> WorkerProcess:
        log_file = self.log_dir / f"worker-{len(self.started)}.log"
        with log_file.open("wb") as output:
            process = subprocess.Popen(  # noqa: S603 - the project's own worker command
                [sys.executable, "-m", "litestar", "--app", FACTORY, "workers", "run"],
                cwd=PROJECT_ROOT,
                env={**os.environ, **self.env, "PYTHONPATH": str(PROJECT_ROOT), "LOG_FILE_PATH": ""},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(process, log_file)
        self.started.append(worker)
        worker.wait_for_log("Worker Started", WORKER_STARTUP_TIMEOUT)
        return worker

    def stop_all(self) -> None:
        # Killed: waiting out a graceful stop (SHUTDOWN_GRACE) would only slow the suite; the SIGTERM test covers it.
        for worker in self.started:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()


@pytest.fixture(scope="module")
def workers(test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    pool = Workers(test_env, tmp_path_factory.mktemp("workers"))
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture
def worker(workers: Workers) -> WorkerProcess:
    return workers.running()


async def poll_task(
    client: AsyncTestClient[Litestar], task_id: str, *, until: str, within: float = 15
) -> tuple[list[str], dict[str, Any]]:
    """Read K2 until the task reaches ``until``: every status seen on the way, and the last body."""
    statuses: list[str] = []
    deadline = time.monotonic() + within
    while True:
        response = await client.get(f"/api/v1/tasks/task/{task_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if not statuses or statuses[-1] != body["status"]:
            statuses.append(body["status"])
        if body["status"] == until or time.monotonic() > deadline:
            return statuses, body
        await anyio.sleep(0.1)


def parse_time(value: str) -> datetime:
    assert value.endswith("Z"), value  # SPEC §1.1: RFC 3339, UTC, `Z`
    return datetime.fromisoformat(value)


async def test_worker_runs_the_sample_task_from_k1_to_complete(
    client: AsyncTestClient[Litestar], worker: WorkerProcess, queue: RedisQueue
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    created = await client.post("/api/v1/tasks/task", params={"message": "hello"})
    assert created.status_code == 201, created.text
    assert list(created.json()) == ["id"]
    task_id = created.json()["id"]

    statuses, body = await poll_task(client, task_id, until="complete", within=SAMPLE_TASK_SECONDS + 10)

    assert statuses[0] in {"queued", "active"}
    assert statuses[-2:] == ["active", "complete"]
    assert list(body) == TASK_FIELDS
    assert {key: body[key] for key in TASK_FIELDS[:9]} == {
        "id": task_id,
        "function": "sample_background_task",
        "kwargs": {"message": "hello"},
        "status": "complete",
        "success": True,
        "result": "Task hello is complete!",
        "error": None,
        "attempts": 1,
        "queue_name": "default",
    }
    enqueued, started, finished = (parse_time(body[key]) for key in TASK_FIELDS[9:])
    assert before <= enqueued <= started <= finished <= datetime.now(UTC)
    assert finished - started >= timedelta(seconds=SAMPLE_TASK_SECONDS)
    # SPEC §4.7: the result stays readable for at least an hour.
    assert await queue.redis.ttl(queue.job_id(task_id)) > JOB_TTL - 60
    stored = await queue.job(task_id)
    assert stored is not None
    assert (stored.timeout, stored.retries) == (JOB_OPTIONS["timeout"], 1)
    # A task's state changes by the second: never cached (also read with a trailing slash, SPEC §1.1).
    response = await client.get(f"/api/v1/tasks/task/{task_id}/")
    assert (response.json(), response.headers["cache-control"]) == (body, "no-store")


async def test_a_failing_job_is_failed_with_its_error_and_no_traceback(
    client: AsyncTestClient[Litestar], worker: WorkerProcess, queue: RedisQueue
) -> None:
    job = await queue.enqueue("failing_task", message="boom", **JOB_OPTIONS)
    assert job is not None

    _, body = await poll_task(client, job.key, until="failed")

    assert body["status"] == "failed"
    assert (body["success"], body["result"], body["attempts"]) == (False, None, 1)
    assert body["error"] == "RuntimeError: Task boom failed"
    assert body["finish_time"] is not None
    # The whole traceback stays in the worker's log (SPEC §1.3: never in a response).
    worker.wait_for_log("RuntimeError: Task boom failed", timeout=5)
    assert "Traceback" in worker.log()


async def test_unknown_task_is_404(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get(f"/api/v1/tasks/task/{uuid4()}")

    assert response.status_code == 404
    assert response.json() == {"status_code": 404, "detail": "Task not found"}


async def test_creating_a_task_needs_a_message(client: AsyncTestClient[Litestar]) -> None:
    response = await client.post("/api/v1/tasks/task")

    assert response.status_code == 422
    assert [(item["key"], item["source"]) for item in response.json()["extra"]] == [("message", "query")]


async def test_an_unreachable_queue_is_503_within_two_seconds(settings_with: Callable[..., Settings]) -> None:
    app = create_app(settings_with(REDIS_QUEUE_PORT=str(free_port()), DEFAULT_RATE_LIMIT_LIMIT="10"))
    async with AsyncTestClient(app) as client:  # the app starts without its queue
        started = time.monotonic()
        created = await client.post("/api/v1/tasks/task", params={"message": "hello"})
        created_in = time.monotonic() - started
        started = time.monotonic()
        read = await client.get(f"/api/v1/tasks/task/{uuid4()}")
        read_in = time.monotonic() - started
        # SPEC §4.7 order: a missing message is still the 422.
        invalid = await client.post("/api/v1/tasks/task")

    for response, seconds in ((created, created_in), (read, read_in)):
        assert response.status_code == 503
        assert response.json() == {"status_code": 503, "detail": "Queue is not available"}
        assert seconds < 2
    assert invalid.status_code == 422


async def test_creating_tasks_is_rate_limited(settings_with: Callable[..., Settings]) -> None:
    app = create_app(settings_with(DEFAULT_RATE_LIMIT_LIMIT="2", DEFAULT_RATE_LIMIT_PERIOD="3600"))
    async with AsyncTestClient(app) as client:
        responses = [await client.post("/api/v1/tasks/task", params={"message": str(n)}) for n in range(3)]
        # SPEC §4.1: the limit comes before validation.
        invalid = await client.post("/api/v1/tasks/task")

    assert [response.status_code for response in responses] == [201, 201, 429]
    assert [response.headers["ratelimit-remaining"] for response in responses] == ["1", "0", "0"]
    assert all(response.headers["ratelimit-limit"] == "2" for response in responses)
    assert responses[2].json() == {"status_code": 429, "detail": "Rate limit exceeded."}
    assert invalid.status_code == 429


async def test_a_token_selects_the_callers_tier_quota(
    client: AsyncTestClient[Litestar], db_session: AsyncSession, make_user: MakeUser, login: Login
) -> None:
    """SPEC §14.7's worked example, one size down: the tier allows 3 tasks, anonymous callers 1 (the default)."""
    tier = await make_tier(db_session, "pro", api_v1_tasks_task=(3, 3600))
    await make_user("ann", tier_id=tier.id)
    auth = bearer(await login("ann"))

    as_ann = [await client.post("/api/v1/tasks/task", params={"message": "a"}, headers=auth) for _ in range(4)]
    anonymous = [await client.post("/api/v1/tasks/task", params={"message": "b"}) for _ in range(2)]

    assert [response.status_code for response in as_ann] == [201, 201, 201, 429]
    assert as_ann[0].headers["ratelimit-limit"] == "3"
    assert [response.status_code for response in anonymous] == [201, 429]


async def test_purge_expired_tokens_deletes_only_expired_rows(
    client: AsyncTestClient[Litestar], worker: WorkerProcess, queue: RedisQueue, db_session: AsyncSession
) -> None:
    now = datetime.now(UTC)
    db_session.add_all(
        [
            TokenBlacklist(token="expired-1", expires_at=now - timedelta(minutes=1)),
            TokenBlacklist(token="expired-2", expires_at=now - timedelta(days=3)),
            TokenBlacklist(token="valid", expires_at=now + timedelta(minutes=30)),
        ]
    )
    await db_session.commit()
    job = await queue.enqueue("purge_expired_tokens", **JOB_OPTIONS)
    assert job is not None

    _, body = await poll_task(client, job.key, until="complete")

    assert body["result"] == 2
    db_session.expunge_all()
    assert list(await db_session.scalars(select(TokenBlacklist.token))) == ["valid"]
    worker.wait_for_log("Purged expired tokens from the blacklist", timeout=5)
    assert "count=2" in next(line for line in worker.log().splitlines() if "Purged expired tokens" in line)


async def test_a_job_reads_the_database_through_a_service(
    client: AsyncTestClient[Litestar], worker: WorkerProcess, queue: RedisQueue, make_user: MakeUser
) -> None:
    await make_user("ann")
    await make_user("bob")
    await make_user("gone", deleted=True)
    job = await queue.enqueue("count_users", **JOB_OPTIONS)
    assert job is not None

    _, body = await poll_task(client, job.key, until="complete")

    assert (body["status"], body["result"]) == ("complete", 2)


async def test_the_hourly_purge_is_one_job_however_many_workers_schedule_it(settings: Settings) -> None:
    """Each worker enqueues its cron jobs every second (``Worker.schedule``); SAQ keys a cron job by its function
    (``cron:purge_expired_tokens``) and its enqueue script refuses a key already waiting, so three workers
    scheduling twice each leave one job, due at the next full hour."""
    plugins = [build_queue(settings) for _ in range(3)]
    workers = [worker for plugin in plugins for worker in plugin.get_workers().values()]
    try:
        for _ in range(2):
            for worker in workers:
                await worker.schedule()
        queue = workers[0].queue
        assert isinstance(queue, RedisQueue)
        scheduled = await queue.redis.zrange(queue.namespace("incomplete"), 0, -1, withscores=True)
    finally:
        for worker in workers:
            assert isinstance(worker.queue, RedisQueue)
            await worker.queue.redis.aclose()

    assert [(key.decode(), score % 3600) for key, score in scheduled] == [
        (queue.job_id("cron:purge_expired_tokens"), 0)
    ]
    assert 0 < scheduled[0][1] - time.time() <= 3600


async def test_sigterm_lets_the_active_job_finish(
    client: AsyncTestClient[Litestar], worker: WorkerProcess, queue: RedisQueue
) -> None:
    job = await queue.enqueue("sleeping_task", seconds=2, **JOB_OPTIONS)
    assert job is not None
    await poll_task(client, job.key, until="active", within=5)

    worker.process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    return_code = worker.process.wait(timeout=SHUTDOWN_GRACE + 10)

    _, body = await poll_task(client, job.key, until="complete", within=1)
    assert (body["status"], body["result"]) == ("complete", "Slept 2 s")
    assert return_code == 0, worker.log()
    assert time.monotonic() - stopped < SHUTDOWN_GRACE + 5
    assert "Worker end" in worker.log()


async def test_k1_and_k2_are_documented(client: AsyncTestClient[Litestar]) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]

    create = paths["/api/v1/tasks/task"]["post"]
    read = paths["/api/v1/tasks/task/{task_id}"]["get"]
    assert set(create["responses"]) == {"201", "422", "429", "503"}
    assert set(read["responses"]) >= {"200", "404", "503"}
    assert (create["tags"], read["tags"]) == (["tasks"], ["tasks"])
    assert not [path for path in paths if path.startswith("/saq")]

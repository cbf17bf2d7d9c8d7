"""Background jobs (SPEC §10): SAQ through litestar-saq on the Redis of ``REDIS_QUEUE_*``, queue ``default``.

The web app only enqueues and reads jobs; ``litestar workers run`` (``task worker``) is the worker, a separate
process. In embedded mode (SPEC §9.3) the broker is an in-process fakeredis and the worker runs inside the app.
The job functions come from the features (``main.build_queue``): ``core`` never imports a feature.

Connecting (SPEC §10: K1/K2 answer 503 when the queue is not connected). litestar-saq does not touch Redis when
the app starts: its lifespan hook only starts a thread (switched off below), and its ``task_queues`` dependency
calls ``Queue.connect()``, which for a Redis queue only records the event loop. redis-py connects on the first
command. So the app always starts, and "connected" is decided per call: each queue call of a route runs under
``queue_available()``, which bounds it to ``QUEUE_TIMEOUT`` and turns a Redis error into the 503. No flag can go
stale: the first call after Redis comes back succeeds.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

import structlog
from litestar import Litestar, Router
from litestar.datastructures import ResponseHeader
from litestar.exceptions import LitestarDeprecationWarning, ServiceUnavailableException
from litestar.serialization import decode_json, encode_json
from litestar.static_files import create_static_files_router
from litestar.utils.module_loader import module_to_os_path
from litestar_saq import CronJob, QueueConfig, SAQConfig, SAQPlugin
from litestar_saq.controllers import build_controller
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from saq.job import Job
from saq.queue import Queue
from saq.queue.redis import RedisQueue
from saq.types import Context, Function, ReceivesContext, VersionTuple
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import AlchemyConfig, build_alchemy_config, session_scope
from app.core.docs import script_hash
from app.core.openapi import DocsAccess
from app.core.security_headers import CONTENT_SECURITY_POLICY
from app.core.settings import Settings

logger = structlog.get_logger("app.queue")

QUEUE_NAME = "default"
QUEUE_NOT_AVAILABLE = "Queue is not available"
# SPEC §10: ARQ's defaults, which SAQ's own (10 s timeout, 600 s of results) are too short for. SAQ counts
# attempts, so retries=1 is a single attempt.
JOB_TIMEOUT = 300
JOB_TTL = 3600
JOB_RETRIES = 1
JOB_OPTIONS: dict[str, Any] = {"timeout": JOB_TIMEOUT, "ttl": JOB_TTL, "retries": JOB_RETRIES}
WORKER_CONCURRENCY = 10  # ARQ's max_jobs
HOURLY = "0 * * * *"
# An unreachable Redis costs a route about a second, then 503 (the rate limiter's discipline, app.core.rate_limit).
QUEUE_TIMEOUT = 1.0
# SIGTERM/Ctrl+C: the worker takes no new job and gives running ones this long to finish; what is still running then
# is cancelled and SAQ puts it back on the queue for the next worker. SAQ waits this long even when idle (its
# blocking dequeue and upkeep sleeps end only with the grace period). Keep it below the container's stop timeout
# (deploy/docker-compose.yml: 60 s).
SHUTDOWN_GRACE = 10
# Embedded mode: how long an idle in-process worker task waits before it looks at the queue again (a job's latency).
EMBEDDED_POLL_INTERVAL = 0.1
# How long a worker task waits before it tries an unreachable Redis again.
OUTAGE_RETRY_DELAY = 1.0

UnitOfWork = Callable[[], AbstractAsyncContextManager[AsyncSession]]


class JobContext(Context, total=False):
    """The ``ctx`` every job receives: SAQ's keys plus the app's."""

    db: UnitOfWork
    """``async with ctx["db"]() as session:`` one fresh unit of work (commit on success, rollback on error)."""
    alchemy: AlchemyConfig


class WorkerQueue(RedisQueue):
    """SAQ's Redis queue, pausing a worker's dequeue while Redis is unreachable.

    SAQ's worker starts the next dequeue as soon as one fails, and it swallows the error: with Redis down, its
    ``WORKER_CONCURRENCY`` dequeue tasks spun on the refused connection, a whole core per worker process, silently.
    Here a failed dequeue waits ``OUTAGE_RETRY_DELAY`` and counts as "no job"; the outage and the recovery are
    logged once each. The next dequeue reconnects, so the worker resumes when Redis is back, without a restart.
    """

    unreachable = False

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0) -> Job | None:  # noqa: ASYNC109 - SAQ's signature
        try:
            job = await super().dequeue(timeout, poll_interval)
        except (RedisError, OSError) as error:
            if not self.unreachable:
                logger.error("queue unavailable, worker waiting", error=type(error).__name__)
                self.unreachable = True
            await asyncio.sleep(OUTAGE_RETRY_DELAY)
            return None
        if self.unreachable:
            logger.info("queue available again")
            self.unreachable = False
        return job


class WorkerQueueConfig(QueueConfig):
    """litestar-saq's queue configuration, building a ``WorkerQueue`` from the DSN (in every worker process)."""

    @property
    def queue_class(self) -> type[Queue]:
        return WorkerQueue


class EmbeddedQueue(RedisQueue):
    """SAQ's Redis queue on fakeredis, in the web process (embedded mode)."""

    async def version(self) -> VersionTuple:
        """fakeredis has no ``INFO``: without this answer the worker never dequeues."""
        return (7, 0, 0)

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0) -> Job | None:  # noqa: ASYNC109 - SAQ's signature
        """A look at the queue, then a nap when it is empty. fakeredis emulates the blocking ``BLMOVE`` of SAQ's
        dequeue by waking every waiting worker task at every change of its data, and the worker's own bookkeeping
        changes it all the time: an idle embedded server spent two thirds of a core there, and its requests
        waited up to half a second for the event loop."""
        job_id = await self.redis.lmove(self._queued, self._active, "LEFT", "RIGHT")
        if job_id is None:
            await asyncio.sleep(EMBEDDED_POLL_INTERVAL)
            return None
        return await self._get_job_by_id(job_id)


async def start_worker(settings: Settings, ctx: JobContext) -> None:
    """Worker startup: the database from the same settings as the web app; each job opens its own unit of work
    (one shared session would be unsafe with concurrent jobs, SPEC §10)."""
    alchemy = build_alchemy_config(settings)
    ctx["alchemy"] = alchemy
    ctx["db"] = partial(session_scope, alchemy)
    logger.info("Worker Started")  # litestar-saq binds the worker's id, queue and concurrency to every line


async def stop_worker(ctx: JobContext) -> None:
    if "alchemy" in ctx:
        await ctx["alchemy"].get_engine().dispose()
    logger.info("Worker end")


def cron_job(function: Function[Any], cron: str) -> CronJob:
    """A scheduled job with the queue's options; it runs once per schedule, not once per worker.

    Every worker enqueues each cron job every second, always under the key ``cron:<function>``, due at the next
    match of ``cron``. SAQ's enqueue script refuses a key that is already scheduled, queued or running, so however
    many workers run there is one such job, and one worker dequeues it; once it finished, the next enqueue is due
    at the following match (tests/test_tasks.py shows three workers scheduling against the real Redis). The only
    gap is a worker that computed the due time just before the job ran and enqueues just after it finished, a
    window of one Redis round trip: keep cron jobs idempotent (the blacklist purge is).
    """
    return CronJob(function=function, cron=cron, **JOB_OPTIONS)


def build_queue_plugin(settings: Settings, *, jobs: Sequence[Function[Any]], cron_jobs: Sequence[CronJob]) -> SAQPlugin:
    """The SAQ plugin (``task_queues`` dependency, ``litestar workers`` commands) and the queue's one worker."""
    broker, queues = _broker(settings)
    worker = WorkerQueueConfig(
        name=QUEUE_NAME,
        tasks=list(jobs),
        scheduled_tasks=list(cron_jobs),
        concurrency=WORKER_CONCURRENCY,
        startup=partial(start_worker, settings),
        shutdown=cast("ReceivesContext[Context]", stop_worker),  # SAQ types hooks with its base context
        separate_process=not settings.embedded,
        # Embedded: nothing survives the process anyway, and `task dev` reloads must not wait.
        shutdown_grace_period_s=None if settings.embedded else SHUTDOWN_GRACE,
        **broker,
    )
    plugin = SAQPlugin(SAQConfig(queue_configs=[worker], queue_instances=queues))
    for instance in plugin.get_workers().values():
        # litestar-saq 0.8 starts a HeartbeatManager thread in every app process, for its @monitored_job decorator
        # (not used here); its stop always logs "HeartbeatManager thread crashed" (notes Pitfall 17). QueueConfig has
        # no switch for it, the Worker's constructor flag is not passed through.
        instance._enable_heartbeat_manager = False
    return plugin


def _broker(settings: Settings) -> tuple[dict[str, Any], dict[str, Queue] | None]:
    """The ``QueueConfig`` broker options, and the queue instances when they cannot be left to litestar-saq."""
    if settings.embedded:
        # Imported only here: fakeredis (and its Lua runtime) is needed by embedded mode alone.
        from fakeredis import FakeAsyncRedis  # noqa: PLC0415

        fake = FakeAsyncRedis()
        queue = EmbeddedQueue(fake, name=QUEUE_NAME, dump=encode_json, load=decode_json)
        return {"broker_instance": fake}, {QUEUE_NAME: queue}
    # A connect timeout and one retry, but no read timeout: redis-py applies `socket_timeout` to the worker's
    # blocking dequeue (BLMOVE) too, which must wait for jobs indefinitely. The web app bounds each of its calls
    # instead (`queue_available`). A DSN rather than a client built here: `litestar workers run --workers N`
    # rebuilds the broker from it in each child process.
    options = {"socket_connect_timeout": QUEUE_TIMEOUT, "retry": Retry(NoBackoff(), 1)}
    return {"dsn": settings.redis_queue.url, "broker_instance_options": options}, None


@asynccontextmanager
async def queue_lifespan(app: Litestar) -> AsyncIterator[None]:
    """At shutdown: an in-process worker (embedded) finishes before its broker goes; the Redis clients close."""
    plugin = app.plugins.get(SAQPlugin)
    try:
        yield
    finally:
        for worker in plugin.get_workers().values():
            if not worker.separate_process:
                await worker.stop()
        for queue in plugin.get_queues().queues.values():
            if isinstance(queue, RedisQueue):
                # Not `queue.disconnect()`: it unsubscribes from Redis first, a network call (and a wait when Redis
                # is down) for a subscription the web app never makes.
                await queue.redis.aclose()


@asynccontextmanager
async def queue_available() -> AsyncIterator[None]:
    """Run queue calls within ``QUEUE_TIMEOUT``; an unreachable or failing Redis is the 503 of SPEC §10."""
    try:
        async with asyncio.timeout(QUEUE_TIMEOUT):
            yield
    except (RedisError, OSError, TimeoutError) as error:
        logger.error("queue unavailable", error=type(error).__name__)
        raise ServiceUnavailableException(QUEUE_NOT_AVAILABLE, headers={"Retry-After": "5"}) from None


def job_time(milliseconds: int) -> datetime | None:
    """SAQ stores times as epoch milliseconds, 0 meaning "not yet"."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=milliseconds) if milliseconds else None


DASHBOARD_PATH = "/saq"
# litestar-saq's dashboard page sets this one inline script; its hash lets the page run under a CSP without
# 'unsafe-inline' (tests/test_dashboard.py checks the page still carries exactly this script).
DASHBOARD_SCRIPT = f'const root_path = "{DASHBOARD_PATH}";'
DASHBOARD_POLICY = "; ".join(
    [
        "default-src 'none'",
        f"script-src 'self' 'sha256-{script_hash(DASHBOARD_SCRIPT.encode())}'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
# The page, its JSON API and its files (CSS, JS) all ship in the saq wheel: nothing comes from a CDN.
DASHBOARD_FILES = module_to_os_path("saq") / "web" / "static"


def add_queue_dashboard(app: Litestar, access: DocsAccess | None) -> None:
    """SAQ's web dashboard at ``/saq``, gated like the docs (SPEC §8): ``access`` is the docs' gate, ``None`` in
    production, where the dashboard does not exist (404).

    litestar-saq's own ``web_enabled`` is not used: its static files are always public (``exclude_from_auth``, no
    guards), so staging would serve part of the dashboard without a token. Its controller is reused as is, with
    the gate's guards on the router around it; it stays out of the OpenAPI document, like the docs routes.
    """
    if access is None:
        return
    router = Router(
        "/",
        route_handlers=[
            build_controller(DASHBOARD_PATH),
            create_static_files_router(
                f"{DASHBOARD_PATH}/static",
                directories=[DASHBOARD_FILES],
                name="saq",
                cache_control=access.cache_control,  # its file responses do not inherit the router's
            ),
        ],
        guards=list(access.guards),
        opt=access.opt,
        cache_control=access.cache_control,
        include_in_schema=False,
        response_headers=[ResponseHeader(name=CONTENT_SECURITY_POLICY, value=DASHBOARD_POLICY)],
    )
    with warnings.catch_warnings():
        # litestar-saq 0.8's controller declares its `task_queues` parameters without `NamedDependency` (deprecated
        # since Litestar 2.25, still supported until 3.0); only that warning, only for the dashboard's routes.
        warnings.filterwarnings(
            "ignore",
            message=rf"\[paths='{DASHBOARD_PATH}.*Inferred dependency field 'task_queues'",
            category=LitestarDeprecationWarning,
        )
        app.register(router)

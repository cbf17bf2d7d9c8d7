"""Prometheus metrics (SPEC §14.3): ``GET /metrics`` in the text format, on Litestar's Prometheus integration.

- Requests: Litestar's ``PrometheusMiddleware`` (``RequestMetrics`` of ``app.core.request_metrics``, a cheaper
  subclass that writes in batches) counts every routed request by method, route template (``group_path``) and
  status, with a latency histogram and the requests in progress. It is the outermost middleware, so authentication
  and the rate limiter are inside the measured time. Unknown paths
  (404/405 of the router) never reach a route's middleware and are not counted; the access log has them.
- The app's own events: ``record_rate_limited`` (the limiter's 429s), ``record_cache_lookup`` (the response
  cache's hits and misses) and ``record_cache_invalidation``, ``record_token_rejected`` (why a token was refused: a
  revoked one is a blacklist hit), ``record_refresh_reuse`` (a rotated or logged-out refresh token presented again) and
  ``record_redis_fallback`` (a Redis that did not answer, and the path failed open or counted in-process), each a
  counter increment: about a microsecond.
- The database pool (``PoolGauges``): connections in use, the pool size and the overflow, summed over the workers,
  and the requests that found no free connection within ``DB__CONNECT_TIMEOUT`` (their 503s).
- Read at scrape time, from the settings and the queue's Redis: app info, SAQ queue depth and the workers' job
  outcomes. A queue whose Redis does not answer within ``REDIS_TIMEOUT`` is reported down (``litestar_queue_up 0``):
  the scrape still answers, a second later.

Several Granian workers (``python -m app``) share one directory named by ``PROMETHEUS_MULTIPROC_DIR``: each process
writes its values to files there and a scrape, answered by any worker, adds them up (prometheus_client's multiprocess
mode). A single process (the tests, ``litestar run``) keeps the values in memory. Either way a metric belongs to the
process, not to an app instance: prometheus_client's registry is process-global by design, which is why the metrics
below are module-level, like Litestar's own.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from litestar import Litestar, get
from litestar.config.app import AppConfig
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.plugins import InitPlugin
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.response import Response
from litestar.types import Receive, Scope, Send
from litestar_saq import TaskQueues
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from redis.exceptions import RedisError
from saq.queue import Queue
from saq.types import QueueInfo
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from app.core.redis_clients import REDIS_TIMEOUT
from app.core.request_metrics import FLUSH_SECONDS, RequestMetrics, flush_request_metrics
from app.core.settings import Settings

PREFIX = "litestar"
"""Every metric name starts with it; the Grafana dashboard's hidden ``prefix`` variable must match."""
METRICS_PATH = "/metrics"
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
EXCLUDE_FROM_METRICS = "exclude_from_metrics"
"""A route handler with this ``opt`` key is not counted (``/metrics`` itself: a scrape every 15 s is not traffic)."""
# A cached read takes about half a millisecond: prometheus_client's default buckets start at 5 ms.
DURATION_BUCKETS: list[str | float] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
JOB_OUTCOMES = ("complete", "failed", "retried", "aborted")
NO_TIER = "none"
# The text format every Prometheus reads (prometheus_client's own server answers with it by default); Litestar's
# controller announces 1.0.0, and Litestar appends the charset itself.
CONTENT_TYPE = "text/plain; version=0.0.4"

_RATE_LIMITED = Counter(
    f"{PREFIX}_rate_limited",
    "Requests refused with 429 by the rate limiter, by route template and the caller's tier.",
    ["path", "tier"],
)
_CACHE_LOOKUPS = Counter(
    f"{PREFIX}_response_cache_lookups",
    "Response-cache lookups of cached routes: a hit is answered from the cache, a miss (or an unreachable cache) "
    "by the handler.",
    ["result"],
)
_CACHE_HIT, _CACHE_MISS = _CACHE_LOOKUPS.labels("hit"), _CACHE_LOOKUPS.labels("miss")
_CACHE_INVALIDATIONS = Counter(
    f"{PREFIX}_response_cache_invalidations",
    "Committed writes that invalidated cached responses (the keys and key families they made stale).",
)
_TOKENS_REJECTED = Counter(
    f"{PREFIX}_tokens_rejected",
    "Tokens refused, by kind (access, refresh) and reason (missing, expired, bad signature, not yet valid, malformed, "
    "wrong type, revoked: a blacklist hit, unknown user).",
    ["kind", "reason"],
)
_REFRESH_REUSE = Counter(
    f"{PREFIX}_refresh_token_reuse",
    "Refresh tokens presented again after rotation or logout (a possible replay): each revoked its whole family.",
)
_REDIS_FALLBACKS = Counter(
    f"{PREFIX}_redis_fallbacks",
    "Operations whose Redis did not answer within its timeout: the rate limiter let the request through, the "
    "response cache was bypassed, the login throttle counted in-process.",
    ["component", "operation"],
)
# Every label set these counters can have, bound once: each is exported (at 0) from the start, so a rate() or an
# alert has a series before the first event, and an event costs one increment.
REJECTION_REASONS = (
    "missing",
    "expired",
    "bad signature",
    "not yet valid",
    "malformed",
    "wrong type",
    "revoked",
    "unknown user",
)
"""``app.core.security``'s reasons for refusing a token."""
REDIS_FALLBACKS = {
    "rate_limiter": ("count", "invalidate_rules"),
    "response_cache": ("get", "set", "invalidate"),
    "login_throttle": ("reserve", "failed", "succeeded"),
}
_REJECTED = {
    (kind, reason): _TOKENS_REJECTED.labels(kind, reason)
    for kind in ("access", "refresh")
    for reason in REJECTION_REASONS
}
_FALLBACKS = {
    (component, operation): _REDIS_FALLBACKS.labels(component, operation)
    for component, operations in REDIS_FALLBACKS.items()
    for operation in operations
}
# Each worker writes its own pool's values; a scrape adds up those of the workers alive ("livesum").
_POOL_SIZE = Gauge(
    f"{PREFIX}_db_pool_size",
    "Database connections the pools keep without overflow (DB__POOL_SIZE per worker), summed over the workers.",
    multiprocess_mode="livesum",
)
_POOL_CHECKED_OUT = Gauge(
    f"{PREFIX}_db_pool_checked_out",
    "Database connections in use by requests, summed over the workers.",
    multiprocess_mode="livesum",
)
_POOL_OVERFLOW = Gauge(
    f"{PREFIX}_db_pool_overflow",
    "Database connections open beyond DB__POOL_SIZE (at most DB__MAX_OVERFLOW per worker), summed over the workers.",
    multiprocess_mode="livesum",
)
_POOL_TIMEOUTS = Counter(
    f"{PREFIX}_db_pool_timeouts",
    "Requests answered with 503 because no pooled database connection came free within DB__CONNECT_TIMEOUT.",
)


def record_rate_limited(path_template: str, tier: str | None) -> None:
    """One 429 of the rate limiter; ``tier`` is the caller's tier name (``None``: anonymous or no tier)."""
    _RATE_LIMITED.labels(path_template, tier or NO_TIER).inc()


def record_cache_lookup(*, hit: bool) -> None:
    (_CACHE_HIT if hit else _CACHE_MISS).inc()


def record_cache_invalidation() -> None:
    _CACHE_INVALIDATIONS.inc()


def record_token_rejected(kind: str, reason: str) -> None:
    """One refused token; ``reason`` is one of the fixed reasons of ``app.core.security`` (never the token)."""
    (_REJECTED.get((kind, reason)) or _TOKENS_REJECTED.labels(kind, reason)).inc()


def record_refresh_reuse() -> None:
    _REFRESH_REUSE.inc()


def record_redis_fallback(component: str, operation: str) -> None:
    """``component`` (``rate_limiter``, ``response_cache``, ``login_throttle``) found its Redis unavailable while
    doing ``operation`` and went on without it (SPEC §5.7, §6.5)."""
    (_FALLBACKS.get((component, operation)) or _REDIS_FALLBACKS.labels(component, operation)).inc()


def record_pool_timeout() -> None:
    """One request that waited ``DB__CONNECT_TIMEOUT`` for a pooled connection in vain (answered with 503)."""
    _POOL_TIMEOUTS.inc()


class PoolGauges:
    """The ``db_pool`` gauges of this process: what the pools of its running apps (one in a Granian worker) hold.

    Written when an app starts, every ``FLUSH_SECONDS`` while it runs (a write only when a value changed) and before
    this process answers a scrape: a scrape answered by another worker is at most ``FLUSH_SECONDS`` behind for this
    one, whether or not requests come. Counting checkouts as they happen would cost every request a locked file
    write (``app.core.request_metrics``). The pool is looked up at each write: ``engine.dispose()`` replaces it.
    A pool without a size (``NullPool``, ``StaticPool``) counts nothing; the app's, PostgreSQL's and embedded
    SQLite's, is a ``QueuePool``.
    """

    _engines: ClassVar[list[AsyncEngine]] = []  # process-wide, like the gauges they are written to
    _written: ClassVar[tuple[int, int, int] | None] = None

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.timer: asyncio.TimerHandle | None = None

    async def start(self, _app: Litestar) -> None:
        self._engines.append(self.engine)
        self.write_every_interval()

    async def stop(self, _app: Litestar) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.engine in self._engines:
            self._engines.remove(self.engine)
        self.write()

    def write_every_interval(self) -> None:
        self.write()
        self.timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.write_every_interval)

    @classmethod
    def write(cls) -> None:
        size = checked_out = overflow = 0
        for engine in cls._engines:
            pool = engine.sync_engine.pool
            if isinstance(pool, QueuePool):
                size += pool.size()
                checked_out += pool.checkedout()
                overflow += max(0, pool.overflow())  # negative while fewer than the pool size are open
        if cls._written != (size, checked_out, overflow):
            cls._written = (size, checked_out, overflow)
            _POOL_SIZE.set(size)
            _POOL_CHECKED_OUT.set(checked_out)
            _POOL_OVERFLOW.set(overflow)


@dataclass(frozen=True, slots=True)
class QueueReading:
    """One queue as a scrape found it; ``info`` is ``None`` when its Redis did not answer in time."""

    name: str
    info: QueueInfo | None


@dataclass(eq=False, slots=True)  # hashable by identity: a registry keys its collectors
class ScrapeCollector:
    """The values read for one scrape, as metric families (prometheus_client's collector protocol)."""

    settings: Settings
    queues: list[QueueReading] = field(default_factory=list)

    def collect(self) -> Iterator[Metric]:
        app = self.settings.app
        info = InfoMetricFamily(f"{PREFIX}_app", "The running application.")
        info.add_metric([], {"app_name": app.name, "version": app.version, "environment": app.environment})
        yield info
        up = GaugeMetricFamily(f"{PREFIX}_queue_up", "1 if the queue's Redis answered this scrape.", labels=["queue"])
        jobs = GaugeMetricFamily(f"{PREFIX}_queue_jobs", "Jobs by state.", labels=["queue", "state"])
        workers = GaugeMetricFamily(f"{PREFIX}_queue_workers", "SAQ workers reporting stats.", labels=["queue"])
        outcomes = CounterMetricFamily(
            f"{PREFIX}_queue_job_outcomes",
            "Jobs finished (complete, failed, aborted) or retried, per SAQ worker since it started "
            "(reported by the worker every 10 s).",
            labels=["queue", "worker", "outcome"],
        )
        for queue in self.queues:
            up.add_metric([queue.name], 0 if queue.info is None else 1)
            if queue.info is None:
                continue
            for state in ("queued", "active", "scheduled"):
                jobs.add_metric([queue.name, state], queue.info[state])
            workers.add_metric([queue.name], len(queue.info["workers"]))
            for worker_id, worker in queue.info["workers"].items():
                stats: dict[str, Any] = dict(worker.get("stats") or {})
                for outcome in JOB_OUTCOMES:
                    outcomes.add_metric([queue.name, worker_id, outcome], stats.get(outcome, 0))
        yield from (up, jobs, workers, outcomes)


async def read_queues(queues: Iterable[Queue]) -> list[QueueReading]:
    """Each queue's counts, all within ``REDIS_TIMEOUT``: a Redis that is down leaves them unknown, not the scrape."""
    readings: list[QueueReading] = []
    for queue in queues:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                readings.append(QueueReading(queue.name, await queue.info()))
        except (RedisError, OSError, TimeoutError):
            readings.append(QueueReading(queue.name, None))
    return readings


def process_metrics() -> Any:
    """What the processes counted: all workers' files in multiprocess mode, else this process's registry."""
    directory = os.environ.get(MULTIPROC_DIR)
    if not directory:
        return REGISTRY
    mark_dead_workers(Path(directory))
    return MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]


def mark_dead_workers(directory: Path) -> None:
    """A worker that crashed left its in-progress gauge behind; Granian has no hook for it, so a scrape drops the
    live gauges of processes that no longer exist (their counters stay: they are part of the totals)."""
    for file in directory.glob("gauge_live*_*.db"):
        pid = int(file.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, another user's process
            pass


class MetricsController(PrometheusController):
    """``GET /metrics``: Litestar's controller reads only the registry or the multiprocess files; this one adds the
    values read at scrape time. Public but outside the API (SPEC §14.3): no auth, no rate limit, not in the OpenAPI
    document, never stored by a cache; nginx refuses it from outside (deploy/nginx)."""

    path = METRICS_PATH
    include_in_schema = False

    @get(
        cache_control=CacheControlHeader(no_store=True),
        exclude_from_auth=True,
        opt={EXCLUDE_FROM_METRICS: True},
    )
    async def get(
        self, settings: NamedDependency[Settings], task_queues: NamedDependency[TaskQueues]
    ) -> Response[bytes]:
        flush_request_metrics()  # this worker's counts are current; the others' at most FLUSH_SECONDS behind
        PoolGauges.write()
        scrape = ScrapeCollector(settings, await read_queues(task_queues.queues.values()))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(process_metrics())
        registry.register(scrape)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE)


class MetricsPlugin(InitPlugin):
    """Registers the middleware (outermost), ``/metrics`` and the pool gauges' writer."""

    def __init__(self, config: PrometheusConfig, pool_gauges: PoolGauges) -> None:
        self.config = config
        self.pool_gauges = pool_gauges

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.middleware.insert(0, self.config.middleware)
        # Requests that match no route never reach the middleware: one instance of its own counts them.
        app_config.after_exception.append(RequestMetrics(_no_route, self.config).count_unrouted)
        app_config.route_handlers.append(MetricsController)
        # After the lifespans (the database plugin's among them), so the engine is the one the app serves with.
        app_config.on_startup.append(self.pool_gauges.start)
        app_config.on_shutdown.extend([flush_request_metrics, self.pool_gauges.stop])
        return app_config


async def _no_route(_scope: Scope, _receive: Receive, _send: Send) -> None:
    """The app of the ``RequestMetrics`` that counts unrouted requests: it never serves one."""
    raise NotImplementedError


def build_metrics(settings: Settings, engine: AsyncEngine) -> MetricsPlugin:
    """The metrics of an app whose database is ``engine``."""
    return MetricsPlugin(
        PrometheusConfig(
            app_name=settings.app.name,
            prefix=PREFIX,
            group_path=True,  # the route template, not the URL: one series per route, whatever the ids
            buckets=DURATION_BUCKETS,
            exclude_opt_key=EXCLUDE_FROM_METRICS,
            scopes={ScopeType.HTTP},
            middleware_class=RequestMetrics,
        ),
        PoolGauges(engine),
    )

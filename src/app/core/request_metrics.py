"""Request metrics (SPEC §14.3): Litestar's ``PrometheusMiddleware`` metrics, names and labels, counted in the
process and written to prometheus_client in batches.

In multiprocess mode every prometheus_client update is a locked write to a memory-mapped file: a request's five
(count, duration sum and bucket, in-progress up and down) cost about 10 µs, a tenth of a health check. Here a request
only adds to plain numbers, and each series is written once per batch: within ``FLUSH_SECONDS``, before this process
answers a scrape, and when the app stops. A scrape answered by another worker is at most ``FLUSH_SECONDS`` behind
for this one; the in-progress gauge is this process's count at its last write.
"""

from __future__ import annotations

import asyncio
import weakref
from bisect import bisect_left
from time import perf_counter
from typing import Any

from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.plugins.prometheus import PrometheusConfig, PrometheusMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

FLUSH_SECONDS = 1.0
UNROUTED = "none"
"""The ``path`` label of a request that matched no route (404, 405; 400 for a bad ``Host``), as the FastAPI
instrumentator labels one: route-level middleware never sees it, ``RequestMetrics.count_unrouted`` counts it."""
# Any token is a method to the server: an unknown one counts as OTHER, so made-up methods cannot add series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})

# Every live middleware of this process, so a scrape and the shutdown hook can write what they counted.
_instances: weakref.WeakSet[RequestMetrics] = weakref.WeakSet()


def flush_request_metrics() -> None:
    """Write every pending count of this process to prometheus_client (before a scrape, at shutdown)."""
    for instance in list(_instances):
        instance.flush()


class _Series:
    """One (method, route template, status): its prometheus_client children and what was counted since the last
    write. The histogram is written through its children's values, the way ``Histogram.observe`` writes one
    observation (prometheus_client has no call for many at once)."""

    __slots__ = ("buckets", "count", "duration", "errors", "pending", "requests", "total")

    def __init__(self, requests: Any, duration: Any, errors: Any) -> None:
        self.requests, self.duration, self.errors = requests, duration, errors
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * len(duration._upper_bounds)
        self.pending = False

    def write(self) -> None:
        self.requests.inc(self.count)
        if self.errors is not None:
            self.errors.inc(self.count)
        self.duration._sum.inc(self.total)
        for index, count in enumerate(self.buckets):
            if count:
                self.duration._buckets[index].inc(count)
                self.buckets[index] = 0
        self.count, self.total, self.pending = 0, 0.0, False


class RequestMetrics(PrometheusMiddleware):
    """Litestar's ``PrometheusMiddleware`` at a fraction of its cost: each label set's series is bound once, the
    scope is read directly instead of through a ``Request``, and the values are written in batches (module docstring).

    Two differences: a request that an inner middleware refused by raising (authentication's 401) is counted with
    the exception's status where Litestar's counts 200 (a non-HTTP error raised there counts as 500, even when the
    app's exception handler answers it with 503), and the in-progress gauge has no ``status_code`` label (always 200
    in Litestar's). ``PrometheusConfig.labels`` and ``exemplars`` are not supported.
    """

    def __init__(self, app: ASGIApp, config: PrometheusConfig) -> None:
        super().__init__(app, config)
        self.app_name = config.app_name
        self.series: dict[tuple[str, str, int], _Series] = {}
        self.pending: list[_Series] = []
        self.in_progress: dict[tuple[str, str], int] = {}
        self.gauges: dict[tuple[str, str], Any] = {}
        self.timer_loop: asyncio.AbstractEventLoop | None = None  # whose timer will write the batch
        _instances.add(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]  # type: ignore[typeddict-item]
        path = scope["path_template"] if self._config.group_path else scope["path"]
        key = (method, path)
        status: int | None = None
        started, finished = perf_counter(), 0.0

        async def measured_send(message: Message) -> None:
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = message["status"]
            elif not message.get("more_body", False):
                finished = perf_counter()
            await send(message)

        self.in_progress[key] = self.in_progress.get(key, 0) + 1
        try:
            await self.app(scope, receive, measured_send)
        except Exception as error:
            status = status or (error.status_code if isinstance(error, HTTPException) else 500)
            raise
        finally:
            self.in_progress[key] -= 1
            status = status or 200
            series = self.series.get((method, path, status)) or self._bind(method, path, status)
            elapsed = (finished or perf_counter()) - started
            series.total += elapsed
            series.buckets[bisect_left(series.duration._upper_bounds, elapsed)] += 1
            self._count(series)

    async def count_unrouted(self, exception: Exception, scope: Scope) -> None:
        """The app's ``after_exception`` hook: a request that matched no route is counted with the path ``none``.

        Only counted, not timed: it ends before the router returns and nothing marks its start. The exception
        handlers of the routes call this hook too, for requests the middleware has counted (``route_handler`` set).
        """
        if scope["type"] != ScopeType.HTTP or scope.get("route_handler") is not None:
            return
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        status = exception.status_code if isinstance(exception, HTTPException) else 500
        self._count(self.series.get((method, UNROUTED, status)) or self._bind(method, UNROUTED, status))

    def _count(self, series: _Series) -> None:
        series.count += 1
        if not series.pending:
            series.pending = True
            self.pending.append(series)
        self._schedule()

    def flush(self) -> None:
        self.timer_loop = None
        pending, self.pending = self.pending, []
        for series in pending:
            series.write()
        for key, count in self.in_progress.items():
            gauge = self.gauges.get(key) or self._bind_in_progress(*key)
            gauge.set(count)

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop to write later
            self.flush()
            return
        if self.timer_loop is not loop:  # also when the loop of an earlier timer was closed before it fired
            self.timer_loop = loop
            loop.call_later(FLUSH_SECONDS, self.flush)

    def _bind(self, method: str, path: str, status: int) -> _Series:
        labels: dict[str, str | int | float] = {"method": method, "path": path, "status_code": status}
        labels["app_name"] = self.app_name
        values = [str(value) for value in labels.values()]
        errors = self.requests_error_count(labels).labels(*values) if status >= 500 else None
        series = _Series(self.request_count(labels).labels(*values), self.request_time(labels).labels(*values), errors)
        self.series[(method, path, status)] = series
        return series

    def _bind_in_progress(self, method: str, path: str) -> Any:
        labels: dict[str, str | int | float] = {"method": method, "path": path, "app_name": self.app_name}
        gauge = self.gauges[(method, path)] = self.requests_in_progress(labels).labels(method, path, self.app_name)
        return gauge

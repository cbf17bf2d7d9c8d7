"""Server-side response cache (SPEC §6): Litestar's own cache on a Redis store, keys from templates, and one
invalidation path that runs after the request's transaction committed.

- ``cache(...)`` is the reusable helper of §6.2, applied above a route decorator. On a GET it caches the 2xx
  responses under ``<key_prefix formatted>:<resource id>``; on any other method it deletes that key and its extras
  once the write committed. Invalidation extras on a GET fail at import, so at startup.
- Services that change cached data outside such a route (a user renamed or deleted) call
  ``invalidate_after_commit(session, ...)``; both end in ``ResponseCache.after_commit``, run by the transaction
  handler of ``app.core.db`` after a successful commit and before the response is sent, so the client's next GET is
  fresh on every worker and server.
- The cache stores Litestar's encoded response (status, headers, body), so a hit is byte-identical to the miss
  that filled it; hooks that add per-request headers (rate limits, Cache-Control) run again on every hit.
- Pattern invalidation is SPEC §6.4's SCAN walk of the keyspace, skipped for a pattern whose key family has
  nothing stored (``FAMILIES``).
- A miss stores its response only if no invalidation touched its key's family meanwhile (``EPOCHS``): a write
  that commits between a miss's database read and its store is never overwritten by the older response.
- A cache Redis that does not answer costs a request about a second: reads fall through to the handler, writes
  and invalidations are logged at ERROR, and the request succeeds (§6.5).
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, get_args, get_origin, get_type_hints

import structlog
from litestar import Litestar
from litestar.config.response_cache import ResponseCacheConfig
from litestar.connection import Request
from litestar.exceptions import ImproperlyConfiguredException
from litestar.handlers import HTTPRouteHandler
from litestar.stores.memory import MemoryStore
from litestar.stores.redis import RedisStore
from litestar.types import HTTPScope, Scope
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.metrics import record_cache_invalidation, record_cache_lookup, record_redis_fallback
from app.core.redis_clients import bounded, fail_fast_client
from app.core.settings import Settings

logger = structlog.get_logger("app.cache")

STORE_NAME = "response_cache"
"""The store registry name of the response cache (``app.stores.get(STORE_NAME)``)."""
NAMESPACE = "response_cache"
"""Every cache key in Redis is ``response_cache:<logical key>`` (SPEC §6.2 allows a store namespace)."""
DEFAULT_EXPIRATION = 3600
SCAN_COUNT = 100  # SPEC §6.4: SCAN MATCH … COUNT 100, deleted in batches, never KEYS
# SCANs per round trip. SCAN walks the whole keyspace whatever the pattern, so a write's invalidation costs the
# keyspace's size / SCAN_COUNT steps: one round trip each made a post creation (W6) spend a third of its time
# waiting on Redis. 25 steps run in one script call (each call's redis-py path costs the app ~0.2 ms of CPU, a
# keyspace of 1 200 keys needed two calls of ten); Redis is never busy longer than ~2 500 keys' worth (~1 ms).
SCANS_PER_CALL = 25
FAMILIES = f"{NAMESPACE}-family"
"""A logical key's *family* is its part before the first ``:`` (``ann_posts``, ``ann_post_cache``); while any entry
of a family may be stored, ``response_cache-family:<family>`` exists (``family_marker``). It lets a write skip the
SCAN walk of a pattern whose family has nothing stored. An entry is only read while its family's marker exists, so
a marker that is gone (deleted after a walk, evicted, flushed) can never leave an entry readable unwalked."""
EPOCHS = f"{NAMESPACE}-epoch"
"""``response_cache-epoch:<family>`` counts the invalidations that touched the family (``family_epoch``). A read that
misses notes it; the response it then builds is stored only if the count did not move meanwhile, so a write that
committed between the miss's database read and its store cannot be overwritten by the older response."""
EPOCH_LIFETIME = 2 * DEFAULT_EXPIRATION  # seconds; far longer than any request between its miss and its store
_STORE = """
if ARGV[3] ~= '-' and (redis.call('GET', KEYS[3]) or '') ~= ARGV[3] then return 0 end
if ARGV[2] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], '1')
  return 1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local left = redis.call('PTTL', KEYS[2])
if left ~= -1 and left < tonumber(ARGV[2]) then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) end
return 1
"""
"""KEYS: the entry, its family marker, its family epoch; ARGV: the value, its lifetime in ms (empty: none), the
epoch its miss saw (empty: none; ``-``: not read through this store, stored as is). The marker lives at least as long
as the entry, in the same atomic step."""
_DELETE = """
local epochs = tonumber(ARGV[7])
for i = 1, epochs do
  redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[8])
end
if #KEYS > epochs then redis.call('DEL', unpack(KEYS, epochs + 1)) end
local cursor = ARGV[1]
if ARGV[2] == '' then return '0' end
if ARGV[5] ~= '' and cursor == '0' and redis.call('EXISTS', ARGV[5]) == 0 then return '0' end
for _ = 1, tonumber(ARGV[4]) do
  local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[2], 'COUNT', ARGV[3])
  cursor = reply[1]
  if #reply[2] > 0 then redis.call('DEL', unpack(reply[2])) end
  if cursor == '0' then break end
end
if cursor == '0' and ARGV[6] == '1' then redis.call('DEL', ARGV[5]) end
return cursor
"""
"""KEYS: the family epochs to count up (the first ``ARGV[7]``), then the keys to delete; ARGV: SCAN cursor, MATCH
pattern (empty: none), COUNT, SCANs at most, the family marker of the pattern (empty: it has none, walk anyway), ``1``
when the pattern is its whole family (the marker goes once the walk is done), the number of epochs, their lifetime in
seconds. Returns the cursor to continue from, ``0`` when the keyspace has been walked or nothing can match."""
_INVALIDATES = "cache_invalidates"  # route handler ``opt`` key of a write route's invalidation
_PENDING = "cache_invalidations"  # ``session.info`` key of the invalidations waiting for the commit
_UNCACHEABLE = "uncacheable:"  # key of a request whose values are not canonical: never written, so never read
# The (logical key, epoch) of this request's last miss: Litestar reads the cache and stores the response in the same
# task, and a request reads at most one cached route. A value, not a dict, so nothing accumulates in a context.
_MISS: ContextVar[tuple[str, bytes | None] | None] = ContextVar("response_cache_miss", default=None)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_GLOB_SPECIAL = re.compile(r"([\[\]*?\\])")


@dataclass(slots=True)
class Invalidation:
    keys: set[str] = field(default_factory=set)
    patterns: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.keys or self.patterns)


def invalidate_after_commit(session: AsyncSession, *, keys: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
    """Delete these logical keys and ``*`` patterns once ``session``'s transaction commits (nothing if it rolls
    back). Callers escape values they put into a pattern (``glob_escape``)."""
    pending: Invalidation = session.info.setdefault(_PENDING, Invalidation())
    pending.keys.update(keys)
    pending.patterns.update(patterns)


def glob_escape(value: str) -> str:
    """``value`` matched literally inside a Redis ``MATCH`` pattern (and ``fnmatch``)."""
    return _GLOB_SPECIAL.sub(r"[\1]", value) if value else value


def family_marker(key: str) -> str | None:
    """The Redis key of the family marker of the logical ``key`` (``FAMILIES``); ``None`` for a key without ``:``."""
    family, colon, _ = key.partition(":")
    return f"{FAMILIES}:{family}" if colon else None


def family_epoch(key: str) -> str | None:
    """The Redis key of the family epoch of the logical ``key`` (``EPOCHS``); ``None`` for a key without ``:``."""
    family, colon, _ = key.partition(":")
    return f"{EPOCHS}:{family}" if colon else None


def pattern_family(pattern: str) -> tuple[str, bool]:
    """The family marker every key matching ``pattern`` shares (empty when the family part is not literal), and
    whether the pattern matches the whole family (``<family>:*``)."""
    family, colon, rest = pattern.partition(":")
    if not colon or _GLOB_SPECIAL.search(family):
        return "", False
    return f"{FAMILIES}:{family}", rest == "*"


class FailOpenRedisStore(RedisStore):
    """A ``RedisStore`` whose outages are misses (SPEC §6.5): Litestar's cache calls the store without a guard.

    Reads that arrive in the same turn of the event loop share one ``MGET``: under load a worker serves many cached
    reads at once, and each one's own round trip (a connection from the pool, a socket write and read, redis-py's
    command path) was a third of a hit's CPU. A lone read waits one loop turn longer than a plain ``GET``.

    An entry is written together with its family marker (``FAMILIES``), and read only while that marker exists:
    both are in the same ``MGET``.
    """

    def __init__(self, redis: Redis, namespace: str) -> None:
        super().__init__(redis, namespace=namespace)
        self._batch: list[tuple[str, str, str, asyncio.Future[tuple[bytes | None, bytes | None]]]] | None = None
        self._fetching: set[asyncio.Task[None]] = set()  # the event loop keeps only weak references to tasks
        self._store = redis.register_script(_STORE)

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        if renew_for:  # not used by the response cache: Litestar's own atomic get-and-renew
            return await super().get(key, renew_for)
        loop = asyncio.get_running_loop()
        if self._batch is None:
            self._batch = []
            loop.call_soon(self._send_batch, loop)
        value: asyncio.Future[tuple[bytes | None, bytes | None]] = loop.create_future()
        entry = self._make_key(key)
        self._batch.append((entry, family_marker(key) or entry, family_epoch(key) or entry, value))
        try:
            found, epoch = await value
        except (RedisError, OSError) as error:
            logger.error("response cache unavailable", operation="get", error=type(error).__name__)
            record_redis_fallback("response_cache", "get")
            found, epoch = None, None
        record_cache_lookup(hit=found is not None)
        if found is None:
            _MISS.set((key, epoch))
        return found

    def _send_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._batch = self._batch or [], None
        fetch = loop.create_task(self._fetch(batch))
        self._fetching.add(fetch)
        fetch.add_done_callback(self._fetching.discard)

    async def _fetch(
        self, batch: list[tuple[str, str, str, asyncio.Future[tuple[bytes | None, bytes | None]]]]
    ) -> None:
        """One ``MGET`` of every entry, its family marker and its family epoch."""
        try:
            async with bounded():
                values = await self._redis.mget([key for read in batch for key in read[:3]])
        except (RedisError, OSError) as error:
            for *_, waiter in batch:
                if not waiter.done():  # a request cancelled meanwhile no longer waits
                    waiter.set_exception(error)
            return
        for index, (*_, waiter) in enumerate(batch):
            value, marker, epoch = values[3 * index : 3 * index + 3]
            if not waiter.done():
                waiter.set_result((value if marker is not None else None, epoch))

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        if isinstance(expires_in, timedelta):
            expires_in = int(expires_in.total_seconds())
        marker = family_marker(key)
        try:
            async with bounded():
                if marker is None:
                    await super().set(key, value, expires_in)
                else:
                    lifetime = str(expires_in * 1000) if expires_in else ""
                    keys = [self._make_key(key), marker, family_epoch(key) or marker]
                    await self._store(keys=keys, args=[value, lifetime, self._epoch_seen(key)])
        except (RedisError, OSError) as error:
            logger.error("response cache unavailable", operation="set", error=type(error).__name__)
            record_redis_fallback("response_cache", "set")

    @staticmethod
    def _epoch_seen(key: str) -> bytes | str:
        """What this request's miss of ``key`` saw of its family epoch (``b""``: none yet); ``-`` if it read no such
        miss here (an entry written directly, not by a cached route)."""
        miss = _MISS.get()
        if miss is None or miss[0] != key:
            return "-"
        _MISS.set(None)
        return miss[1] or b""


class MeteredMemoryStore(MemoryStore):
    """Embedded mode's store, counting hits and misses like the Redis one."""

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        found = await super().get(key, renew_for)
        record_cache_lookup(hit=found is not None)
        return found


class ResponseCache:
    """The app's response-cache store (Redis of ``REDIS_CACHE_*``, or a ``MemoryStore`` in embedded mode) and its
    invalidation. ``lifespan`` connects and closes the Redis client; ``config`` goes to ``Litestar(...)``."""

    def __init__(self, settings: Settings) -> None:
        self.url = None if settings.embedded else settings.redis_cache.url
        self.memory = MeteredMemoryStore() if self.url is None else None
        self.client: Redis | None = None
        self._delete: AsyncScript | None = None

    @property
    def config(self) -> ResponseCacheConfig:
        return ResponseCacheConfig(
            store=STORE_NAME, default_expiration=DEFAULT_EXPIRATION, cache_response_filter=_stores_response
        )

    @property
    def stores(self) -> dict[str, Any]:
        """The embedded store, registered at construction; the Redis one is registered by ``lifespan``."""
        return {STORE_NAME: self.memory} if self.memory is not None else {}

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        if self.url is None:
            yield
            return
        self.client = fail_fast_client(self.url)
        # `register_script` runs EVALSHA and reloads the script after SCRIPT FLUSH or a restart (NOSCRIPT).
        self._delete = self.client.register_script(_DELETE)
        app.stores.register(STORE_NAME, FailOpenRedisStore(self.client, namespace=NAMESPACE), allow_override=True)
        try:
            yield
        finally:
            client, self.client = self.client, None
            await client.aclose()

    async def invalidate(self, invalidation: Invalidation) -> None:
        """Delete the keys and every key matching the patterns; an outage is logged, never raised (SPEC §6.5)."""
        record_cache_invalidation()
        try:
            if self.memory is not None:
                self._invalidate_memory(self.memory, invalidation)
            elif self._delete is not None:
                await self._invalidate_redis(self._delete, invalidation)
        except (RedisError, OSError) as error:
            logger.error(
                "response cache invalidation failed",
                keys=sorted(invalidation.keys),
                patterns=sorted(invalidation.patterns),
                error=type(error).__name__,
            )
            record_redis_fallback("response_cache", "invalidate")

    async def after_commit(self, scope: Scope, session: AsyncSession | None) -> None:
        """The transaction handler's hook: the route's own invalidation plus what its services scheduled."""
        invalidation = _route_invalidation(scope)
        if session is not None and (pending := session.info.pop(_PENDING, None)):
            invalidation.keys |= pending.keys
            invalidation.patterns |= pending.patterns
        if invalidation:
            await self.invalidate(invalidation)

    @staticmethod
    async def _invalidate_redis(delete: AsyncScript, invalidation: Invalidation) -> None:
        """The keys go with the first call; each pattern walks the keyspace SCANS_PER_CALL × SCAN_COUNT keys per
        call, every call bounded on its own, unless its family has nothing stored (``FAMILIES``)."""
        # A pattern's family, when literal, is that of any key it matches: the part before its first ':'.
        literal = (pattern for pattern in invalidation.patterns if pattern_family(pattern)[0])
        epochs = sorted({epoch for key in (*invalidation.keys, *literal) if (epoch := family_epoch(key))})
        keys = [*epochs, *(f"{NAMESPACE}:{key}" for key in invalidation.keys)]
        for pattern in invalidation.patterns or [""]:
            match = f"{NAMESPACE}:{pattern}" if pattern else ""
            marker, whole = pattern_family(pattern)
            cursor: bytes | str = "0"
            while True:
                async with bounded():
                    args = [cursor, match, SCAN_COUNT, SCANS_PER_CALL, marker, "1" if whole else ""]
                    cursor = await delete(keys=keys, args=[*args, len(epochs), EPOCH_LIFETIME])
                keys, epochs = [], []
                if cursor in (b"0", "0"):
                    break

    @staticmethod
    def _invalidate_memory(store: MemoryStore, invalidation: Invalidation) -> None:
        # MemoryStore has no key listing; its dict is read directly (embedded mode: one process, no await here).
        stored: dict[str, Any] = store._store
        doomed = set(invalidation.keys)
        for pattern in invalidation.patterns:
            doomed.update(key for key in stored if fnmatch.fnmatchcase(key, pattern))
        for key in doomed:
            stored.pop(key, None)


@dataclass(frozen=True, slots=True)
class KeyTemplate:
    """``<key_prefix formatted>:<resource id>`` from a request's path and query values (SPEC §6.2)."""

    key_prefix: str
    resource_id_name: str
    query_defaults: Mapping[str, Any]
    int_names: frozenset[str]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Built once per route: this runs on every request of a cached route, hit or miss.
        object.__setattr__(self, "names", tuple({*_PLACEHOLDER.findall(self.key_prefix), self.resource_id_name}))

    def key(self, request: Request[Any, Any, Any]) -> str:
        """The logical key; a request whose values are not in their one canonical spelling (``page=01``, a repeated
        parameter) gets a key that is never written, so a spelling can neither share nor poison the real key."""
        values: dict[str, str] = {}
        for name in self.names:
            value = _request_value(request, name, self.query_defaults)
            if value is None or (name in self.int_names and not _canonical_int(value)):
                return f"{_UNCACHEABLE}{request.url.path}"
            values[name] = value
        return format_key(self.key_prefix, values, values[self.resource_id_name])


def format_key(key_prefix: str, values: Mapping[str, Any], resource_id: Any) -> str:
    return f"{key_prefix.format_map(values)}:{resource_id}"


def format_pattern(template: str, values: Mapping[str, Any]) -> str:
    """A pattern template (``{username}_posts:*``) with the values escaped, so only the template's ``*`` match."""
    return template.format_map({name: glob_escape(str(value)) for name, value in values.items()})


def cache(
    *,
    key_prefix: str,
    resource_id_name: str,
    expiration: int = DEFAULT_EXPIRATION,
    to_invalidate_extra: Mapping[str, str] | None = None,
    pattern_to_invalidate_extra: Iterable[str] | None = None,
    query_defaults: Mapping[str, Any] | None = None,
) -> Callable[[HTTPRouteHandler], HTTPRouteHandler]:
    """SPEC §6.2, above a route decorator::

        @cache(key_prefix="{username}_post_cache", resource_id_name="id")
        @get("/{username:str}/post/{id:str}")

    GET: 2xx responses are cached for ``expiration`` seconds under ``<key_prefix>:<resource id>``, placeholders filled
    from path and query parameters (``query_defaults`` for the query parameters a request may omit). Any other method:
    after the write commits, that key is deleted, plus ``<prefix>:<id>`` for each ``to_invalidate_extra`` item and
    every key matching each ``pattern_to_invalidate_extra`` template.
    """
    defaults = dict(query_defaults or {})
    extras = dict(to_invalidate_extra or {})
    patterns = tuple(pattern_to_invalidate_extra or ())

    def apply(handler: HTTPRouteHandler) -> HTTPRouteHandler:
        methods = set(handler.http_methods)
        if methods == {"GET"}:
            if extras or patterns:
                raise ImproperlyConfiguredException(
                    f"cache(): invalidation extras on the GET route {handler.paths}; put them on the writes"
                )
            template = KeyTemplate(key_prefix, resource_id_name, defaults, _int_names(handler, defaults))
            handler.cache = expiration
            handler.cache_key_builder = template.key
        elif "GET" in methods:
            raise ImproperlyConfiguredException(f"cache(): {handler.paths} mixes GET with writes")
        else:
            int_names = _int_names(handler, defaults)
            handler.opt[_INVALIDATES] = RouteInvalidation(key_prefix, resource_id_name, extras, patterns, int_names)
        return handler

    return apply


@dataclass(frozen=True, slots=True)
class RouteInvalidation:
    key_prefix: str
    resource_id_name: str
    extras: Mapping[str, str]
    patterns: tuple[str, ...]
    int_names: frozenset[str]

    def for_request(self, request: Request[Any, Any, Any]) -> Invalidation:
        """The committed write's keys, with integers in the spelling the GET's key uses (``042`` wrote post 42)."""
        values: dict[str, str] = {}
        for name in _PLACEHOLDER.findall(
            " ".join([self.key_prefix, *self.extras, *self.extras.values(), *self.patterns])
        ):
            values[name] = _request_value(request, name, {}) or ""
        values[self.resource_id_name] = _request_value(request, self.resource_id_name, {}) or ""
        for name in self.int_names & values.keys():
            if values[name].isascii() and values[name].isdigit():
                values[name] = str(int(values[name]))
        keys = {format_key(self.key_prefix, values, values[self.resource_id_name])}
        keys.update(
            format_key(prefix, values, id_template.format_map(values)) for prefix, id_template in self.extras.items()
        )
        return Invalidation(keys, {format_pattern(pattern, values) for pattern in self.patterns})


def _route_invalidation(scope: Scope) -> Invalidation:
    handler = scope.get("route_handler")
    rule: RouteInvalidation | None = handler.opt.get(_INVALIDATES) if handler is not None else None
    if rule is None:
        return Invalidation()
    return rule.for_request(Request(scope))


def _stores_response(scope: HTTPScope, status_code: int) -> bool:
    """Only routes that ask for caching, only 2xx (Pitfall 9: Litestar's cache wraps every handler of a path, so an
    uncached PATCH on a cached path would be stored too, without expiry), never an uncacheable spelling."""
    handler = scope["route_handler"]
    if not getattr(handler, "cache", False) or not 200 <= status_code < 300:
        return False
    builder = getattr(handler, "cache_key_builder", None)
    return builder is None or not builder(Request(scope)).startswith(_UNCACHEABLE)


def _request_value(request: Request[Any, Any, Any], name: str, defaults: Mapping[str, Any]) -> str | None:
    if name in request.path_params:
        return str(request.path_params[name])
    given = request.query_params.getall(name, [])
    if len(given) > 1:
        return None
    return str(given[0]) if given else (str(defaults[name]) if name in defaults else None)


def _canonical_int(value: str) -> bool:
    return value.isascii() and value.isdigit() and str(int(value)) == value


def _int_names(handler: HTTPRouteHandler, defaults: Mapping[str, Any]) -> frozenset[str]:
    """Parameters whose value is an integer: the handler's ``int`` parameters and integer query defaults."""
    names = {name for name, value in defaults.items() if isinstance(value, int)}
    try:
        hints = get_type_hints(handler.fn, include_extras=True)
    except (NameError, TypeError):  # an annotation only a type checker resolves: no integer parameters known
        hints = {}
    for name, hint in hints.items():
        inner = hint
        while get_origin(inner) is not None and get_args(inner):
            inner = get_args(inner)[0]  # FromPath[int] is Annotated[int, ...]
        if inner is int:
            names.add(name)
    return frozenset(names)

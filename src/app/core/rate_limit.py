"""Per-route rate limiting (SPEC §5): the guard ``rate_limit``, one atomic Redis script per request.

A route opts in with one line, ``guards=[rate_limit]`` (after ``requires_superuser``, so 401 → 403 → 429 → 422,
SPEC §4.1); its 429 is documented from that guard. The subject is the caller's user id, found with optional
authentication on public routes (§3.8), else the client address (§5.3). Each tier's rules live in a Redis hash, so
rule lookup and counting are a single script call and a limited request costs no database query; a missing hash
(first use, ``FLUSHDB``, a rule change) is loaded from the database once. The decision rides in the scope state and
``rate_limit_headers`` (an app-level ``before_send`` hook) writes the headers, also on cached responses.

Litestar's own ``RateLimitMiddleware`` is not used: it counts with a read-modify-write of the store under an
in-process lock, which over-admits across workers (measured about 2×); its key has no path, so every route would
share one counter; and its windows are fixed units (second … day), not a tier's ``period``.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Container
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Protocol

import structlog
from litestar import Litestar, Request
from litestar.connection import ASGIConnection
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import TooManyRequestsException
from litestar.handlers import BaseRouteHandler
from litestar.types import Message, Scope
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.core.errors import RATE_LIMIT_EXCEEDED
from app.core.logging import USER_ID_STATE_KEY
from app.core.metrics import record_rate_limited, record_redis_fallback
from app.core.paths import sanitize_path
from app.core.redis_clients import bounded, fail_fast_client
from app.core.security import AppToken, TokenCodec, TokenRejected, UserLoader, bearer_token
from app.core.settings import Settings

logger = structlog.get_logger("app.rate_limit")

RATE_LIMITER = "rate_limiter"
"""The app-state key of the ``RateLimiter``."""
DECISION = "rate_limit"
"""The scope-state key of a request's ``Decision``."""
# SPEC §5.6: the names Litestar's RateLimitMiddleware emits (its RateLimitConfig defaults; no constants exist).
POLICY_HEADER, LIMIT_HEADER, REMAINING_HEADER, RESET_HEADER = (
    "RateLimit-Policy",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
)
IPV6_SUBJECT_PREFIX = 64  # an IPv6 client counts by its /64 network (``address_subject``)
RULES_TTL = 24 * 3600  # a safety net only: rule writes invalidate at once (``invalidate_rate_limit_rules``)

# Rules hash ``ratelimit:rules:<generation>:<tier id>``: ``name`` → tier name, ``path:<path>`` → ``<limit>:<period>``.
# A rule write bumps the generation, so a reload racing with it writes a hash no request reads again.
# The counter key is built inside the script (from its period): fine on one Redis, not on a cluster.
_HIT = """
local limit, period, matched, tier_name = tonumber(ARGV[5]), tonumber(ARGV[6]), 'default', false
if ARGV[7] ~= '' then
  local generation = redis.call('GET', KEYS[1]) or '0'
  local rules = ARGV[8] .. generation .. ':' .. ARGV[7]
  local found = redis.call('HMGET', rules, 'name', 'path:' .. ARGV[2], 'path:' .. ARGV[3])
  if not found[1] then return {'missing', generation} end
  tier_name = found[1]
  local rule = found[2]
  if rule then matched = 'concrete' else rule = found[3]; if rule then matched = 'template' end end
  if rule then
    local sep = string.find(rule, ':', 1, true)
    limit, period = tonumber(string.sub(rule, 1, sep - 1)), tonumber(string.sub(rule, sep + 1))
  end
end
local now = tonumber(ARGV[4])
local window_start = now - now % period
local key = ARGV[1] .. window_start
local count = redis.call('INCR', key)
if count == 1 then redis.call('EXPIRE', key, period) end
return {'counted', count, limit, period, window_start + period - now, matched, tier_name}
"""
_STORE_RULES = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[2] then return 0 end
local key = ARGV[1] .. ARGV[2] .. ':' .. ARGV[3]
redis.call('DEL', key)
redis.call('HSET', key, 'name', ARGV[5], unpack(ARGV, 6))
redis.call('EXPIRE', key, ARGV[4])
return 1
"""
_GENERATION_KEY = "ratelimit:rules:generation"
_RULES_PREFIX = "ratelimit:rules:"


@dataclass(frozen=True, slots=True)
class Decision:
    limit: int
    period: int
    count: int
    reset: int

    @property
    def exceeded(self) -> bool:
        return self.count > self.limit

    def headers(self) -> dict[str, str]:
        headers = {
            POLICY_HEADER: f"{self.limit}; w={self.period}",
            LIMIT_HEADER: str(self.limit),
            REMAINING_HEADER: str(max(self.limit - self.count, 0)),
            RESET_HEADER: str(self.reset),
        }
        return headers | {"Retry-After": str(self.reset)} if self.exceeded else headers


@dataclass(frozen=True, slots=True)
class TierRules:
    name: str
    limits: dict[str, tuple[int, int]]  # sanitised path → (limit, period)


RulesLoader = Callable[[ASGIConnection[Any, Any, Any, Any], int], Awaitable[TierRules | None]]


@dataclass(frozen=True, slots=True)
class Hit:
    subject: str
    path: str  # the sanitised request path: the counter's key
    template: str  # the sanitised route template, parameters as `{name}`
    tier_id: int | None
    now: int
    default: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Counted:
    decision: Decision
    matched: str  # concrete, template or default
    tier_name: str | None


@dataclass(frozen=True, slots=True)
class RulesMissing:
    generation: int


class Counter(Protocol):
    async def hit(self, hit: Hit) -> Counted | RulesMissing: ...
    async def store_rules(self, tier_id: int, rules: TierRules, generation: int) -> None: ...
    async def invalidate_rules(self) -> None: ...
    def lifespan(self, app: Litestar) -> Any: ...


class RedisCounter:
    """Counters and rules in the Redis of ``REDIS_RATE_LIMIT_*``; every worker and server sees the same state."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: Redis | None = None

    @asynccontextmanager
    async def lifespan(self, _: Litestar) -> AsyncIterator[None]:
        self.client = fail_fast_client(self.url)
        # `register_script` runs EVALSHA and reloads the script after SCRIPT FLUSH or a restart (NOSCRIPT).
        self._hit = self.client.register_script(_HIT)
        self._store = self.client.register_script(_STORE_RULES)
        try:
            yield
        finally:
            client, self.client = self.client, None
            await client.aclose()

    def _connected(self) -> Redis:
        if self.client is None:
            raise RedisError("rate limiter not started")
        return self.client

    async def hit(self, hit: Hit) -> Counted | RulesMissing:
        self._connected()
        tier = "" if hit.tier_id is None else str(hit.tier_id)
        prefix = f"ratelimit:{hit.subject}:{hit.path}:"
        args: list[str | int] = [prefix, hit.path, hit.template, hit.now, *hit.default, tier, _RULES_PREFIX]
        async with bounded():
            reply = await self._hit(keys=[_GENERATION_KEY], args=args)
        if reply[0] == b"missing":
            return RulesMissing(int(reply[1]))
        _, count, limit, period, reset, matched, tier_name = [*reply, None][:7]
        decision = Decision(limit=int(limit), period=int(period), count=int(count), reset=max(int(reset), 1))
        return Counted(decision, matched.decode(), tier_name.decode() if tier_name else None)

    async def store_rules(self, tier_id: int, rules: TierRules, generation: int) -> None:
        self._connected()
        fields = [item for path, (n, w) in rules.limits.items() for item in (f"path:{path}", f"{n}:{w}")]
        args: list[str | int] = [_RULES_PREFIX, generation, tier_id, RULES_TTL, rules.name, *fields]
        async with bounded():
            await self._store(keys=[_GENERATION_KEY], args=args)

    async def invalidate_rules(self) -> None:
        async with bounded():
            await self._connected().incr(_GENERATION_KEY)


class MemoryCounter:
    """Embedded mode (SPEC §9.3): the same fixed windows in this process (one process only).

    No ``await`` between reading and writing a counter, so the event loop makes each hit atomic.
    """

    def __init__(self) -> None:
        self.counts: dict[str, tuple[int, float]] = {}  # key → (count, expires at)
        self.rules: dict[int, TierRules] = {}
        self.generation = 0

    @asynccontextmanager
    async def lifespan(self, _: Litestar) -> AsyncIterator[None]:
        yield

    async def hit(self, hit: Hit) -> Counted | RulesMissing:
        (limit, period), matched, tier_name = hit.default, "default", None
        if hit.tier_id is not None:
            rules = self.rules.get(hit.tier_id)
            if rules is None:
                return RulesMissing(self.generation)
            ((limit, period), matched), tier_name = resolve(rules, hit), rules.name
        window_start = hit.now - hit.now % period
        key = f"ratelimit:{hit.subject}:{hit.path}:{window_start}"
        if len(self.counts) > 10_000:
            self.counts = {k: v for k, v in self.counts.items() if v[1] > time.time()}
        count, expires_at = self.counts.get(key, (0, 0.0))
        if expires_at <= time.time():
            count, expires_at = 0, time.time() + period
        self.counts[key] = (count + 1, expires_at)
        decision = Decision(limit=limit, period=period, count=count + 1, reset=max(window_start + period - hit.now, 1))
        return Counted(decision, matched, tier_name)

    async def store_rules(self, tier_id: int, rules: TierRules, generation: int) -> None:
        if generation == self.generation:
            self.rules[tier_id] = rules

    async def invalidate_rules(self) -> None:
        self.generation += 1
        self.rules.clear()


class RateLimiter:
    def __init__(
        self,
        counter: Counter,
        codec: TokenCodec,
        load_user: UserLoader,
        load_rules: RulesLoader,
        settings: Settings,
    ) -> None:
        self.counter = counter
        self.codec = codec
        self.load_user = load_user
        self.load_rules = load_rules
        self.default = (settings.rate_limit.default_limit, settings.rate_limit.default_period)
        self.trusted_proxies = settings.app.trusted_proxies

    async def check(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Decision | None:
        """The request's count in its window, or ``None`` when Redis is unavailable (SPEC §5.7: fail open)."""
        user = connection.scope.get("user") or await self.optional_user(connection)
        subject = str(user.id) if user is not None else client_address(connection, self.trusted_proxies)
        tier_id = user.tier_id if user is not None else None
        hit = Hit(
            subject=subject,
            path=sanitize_path(connection.scope["path"]),
            template=sanitize_path(connection.scope.get("path_template") or connection.scope["path"]),
            tier_id=tier_id,
            now=int(time.time()),
            default=self.default,
        )
        user_id = user.id if user is not None else None
        try:
            counted = await self.counter.hit(hit)
            if isinstance(counted, RulesMissing):
                counted = await self._reload_and_hit(connection, hit, counted.generation)
        except (RedisError, OSError) as error:
            logger.error(
                "rate limiter unavailable", user_id=user_id, tier=tier_id, path=hit.path, error=type(error).__name__
            )
            record_redis_fallback("rate_limiter", "count")
            return None
        self._log_fallback(user_id, tier_id, counted, hit.path)
        if counted.decision.exceeded:
            record_rate_limited(connection.scope.get("path_template") or hit.template, counted.tier_name)
        return counted.decision

    async def _reload_and_hit(
        self, connection: ASGIConnection[Any, Any, Any, Any], hit: Hit, generation: int
    ) -> Counted:
        """The tier's rules from the database into the store, then the hit again (once per tier and rule change)."""
        rules = await self.load_rules(connection, hit.tier_id or 0)
        if rules is not None:
            await self.counter.store_rules(hit.tier_id or 0, rules, generation)
            counted = await self.counter.hit(hit)
            if isinstance(counted, Counted):
                return counted
        # The tier was deleted under this request, or a rule write bumped the generation meanwhile: count with the
        # rules just read (or the defaults) instead of looping.
        rule, matched = resolve(rules, hit) if rules is not None else (hit.default, "default")
        counted = await self.counter.hit(replace(hit, tier_id=None, default=rule))
        assert isinstance(counted, Counted)  # noqa: S101 - a hit without a tier never needs rules
        return Counted(counted.decision, matched, rules.name if rules is not None else None)

    def _log_fallback(self, user_id: int | None, tier_id: int | None, counted: Counted, path: str) -> None:
        if user_id is None or counted.matched != "default":
            return
        if tier_id is None:
            message = f"User {user_id} has no assigned tier. Applying default rate limit."
        else:
            message = (
                f"User {user_id} with tier '{counted.tier_name}' has no specific rate limit for path '{path}'."
                " Applying default rate limit."
            )
        logger.warning(message, user_id=user_id, tier=counted.tier_name, path=path)

    async def optional_user(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Any:
        """SPEC §3.8: a bearer token that passes §3.5 names the caller; anything else is anonymous, never a 401."""
        encoded = bearer_token(connection.headers.get("authorization"))
        token: AppToken | None = self.codec.decode(encoded, "access") if encoded else None
        if token is None:
            return None
        try:
            user = await self.load_user(connection, token)
        except TokenRejected:
            return None
        connection.state[USER_ID_STATE_KEY] = user.id
        return user


def resolve(rules: TierRules, hit: Hit) -> tuple[tuple[int, int], str]:
    """SPEC §5.4: the concrete path's rule, else the route template's, else the defaults."""
    for matched, path in (("concrete", hit.path), ("template", hit.template)):
        if path in rules.limits:
            return rules.limits[path], matched
    return hit.default, "default"


def client_address(connection: ASGIConnection[Any, Any, Any, Any], trusted: Container[str] | None) -> str:
    """SPEC §5.3: the peer; from a trusted peer (``None``: all) the left-most X-Forwarded-For, else X-Real-IP.

    The address is the one subject of its client (``address_subject``): an IPv6 client counts by its /64 network.
    """
    client = connection.scope.get("client")
    if not client:
        return "unknown"
    peer = str(client[0])
    if trusted is None or peer in trusted:
        forwarded = connection.headers.get("x-forwarded-for", "").split(",")[0].strip()
        for candidate in (forwarded, connection.headers.get("x-real-ip", "").strip()):
            if candidate and (subject := address_subject(candidate)) is not None:
                return subject
    return address_subject(peer) or peer


@lru_cache(maxsize=4096)
def address_subject(value: str) -> str | None:
    """The counter subject of one client address, ``None`` for a value that is none.

    One client, one subject, however it is spelled or whichever address it takes: an IPv4 address as written
    canonically, an IPv4-mapped IPv6 address (``::ffff:203.0.113.1``) as that IPv4 address, and any other IPv6
    address as its /64 network (``2001:db8:1:2::/64``; a zone ``%eth0`` dropped). A /64 is what one subscriber is
    given, so a client that rotates through the 2^64 addresses of its own gets no fresh counters for its logins or its
    anonymous requests; clients share a /64 only on one link.
    """
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    if address.is_loopback:
        return "::1"
    return str(ipaddress.IPv6Network((int(address), IPV6_SUBJECT_PREFIX), strict=False))


async def rate_limit(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """The guard: count the request, refuse it with 429 past the limit (SPEC §5.5)."""
    limiter: RateLimiter = connection.app.state[RATE_LIMITER]
    decision = await limiter.check(connection)
    if decision is None:
        return
    connection.scope["state"][DECISION] = decision
    if decision.exceeded:
        raise TooManyRequestsException(RATE_LIMIT_EXCEEDED)


async def rate_limit_headers(message: Message, scope: Scope) -> None:
    """App-level ``before_send``: the request's rate-limit headers, fresh even on a cached response (Pitfall 10).

    Appended as raw ASGI pairs: no handler sets these names, and a keyed set would rescan every header per name.
    """
    decision = scope.get("state", {}).get(DECISION)
    if decision is not None and message["type"] == "http.response.start":
        MutableScopeHeaders.from_message(message).headers.extend(
            (name.lower().encode(), value.encode()) for name, value in decision.headers().items()
        )


async def invalidate_rate_limit_rules(request: Request[Any, Any, Any]) -> None:
    """``after_response`` of every route that writes tiers or rate limits: it runs only after the handler returned and
    the response (and so the commit) went out; a failed write raises and never gets here."""
    limiter: RateLimiter = request.app.state[RATE_LIMITER]
    try:
        await limiter.counter.invalidate_rules()
    except (RedisError, OSError) as error:
        logger.error("rate limiter unavailable", path=sanitize_path(request.scope["path"]), error=type(error).__name__)
        record_redis_fallback("rate_limiter", "invalidate_rules")


def build_rate_limiter(
    settings: Settings, codec: TokenCodec, load_user: UserLoader, load_rules: RulesLoader
) -> RateLimiter:
    """Redis counters, or in-process ones in embedded mode; ``limiter.counter.lifespan`` connects and closes."""
    counter: Counter = MemoryCounter() if settings.embedded else RedisCounter(settings.redis_rate_limit.url)
    return RateLimiter(counter, codec, load_user, load_rules, settings)

"""Login throttling (issue 13; OWASP API2 and API4): failed logins are counted, and past a limit login answers 429
without verifying the password, so a brute force costs the server no Argon2 work.

Two counters, each with a window of ``LOGIN_FAILURE_WINDOW`` seconds from its first failure:

- per account and client address (``LOGIN_MAX_FAILURES``): an attacker locks an account out only for their own
  address, never for its owner elsewhere;
- per client address over all accounts (``LOGIN_MAX_FAILURES_PER_ADDRESS``): spraying one password over many
  accounts is stopped too.

An attempt reserves one failure on its account counter *before* the password is verified (one atomic script that
also checks the address counter), so parallel guesses at one account on any number of workers are admitted exactly
up to the limit; a successful login clears that counter. The address counter counts only verified failures:
in-flight logins never use it up, so many users behind one address (a NAT, a proxy) log in at once unhindered,
and a burst of parallel guesses over many accounts overshoots it by at most the burst. Unknown accounts count like
known ones: the same 401, the same 429, nothing reveals whether the account exists (notes §C4).

The counters live in the rate-limit Redis under ``ratelimit:login:``. When it is unreachable, login fails closed
(notes §D3), unlike the general limiter (SPEC §5.7): the same limits are counted in this process instead, with an
ERROR log; with several workers an attacker then gets up to the limit per worker.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

import structlog
from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import TooManyRequestsException
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.core.metrics import record_redis_fallback
from app.core.rate_limit import RATE_LIMITER, RedisCounter, client_address
from app.core.redis_clients import bounded
from app.core.settings import Settings

logger = structlog.get_logger("app.auth")

LOGIN_THROTTLED = "Too many failed login attempts. Try again later."
LOGIN_THROTTLE = "login_throttle"
"""The app-state key of the app's ``LoginThrottle``."""
# Entries of the in-process counters: beyond this the oldest are forgotten, so a flood of addresses during a Redis
# outage cannot exhaust memory (each entry is a key and a tuple, ~200 bytes).
LOCAL_CAPACITY = 10_000
_ADDRESS_PREFIX = "ratelimit:login:address:"

# KEYS: the (account, address) counter, the address counter. ARGV: their limits, the window in seconds.
# Checks both, reserves a failure on the first. Returns {seconds to wait (0: admitted), count 1, count 2}.
_RESERVE = """
local counts, wait = {}, 0
for i, key in ipairs(KEYS) do
  counts[i] = tonumber(redis.call('GET', key) or '0')
  if counts[i] >= tonumber(ARGV[i]) then
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then redis.call('EXPIRE', key, ARGV[3]); ttl = ARGV[3] * 1000 end
    wait = math.max(wait, 1, math.ceil(ttl / 1000))
  end
end
if wait == 0 then
  counts[1] = redis.call('INCR', KEYS[1])
  if counts[1] == 1 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
end
return {wait, counts[1], counts[2]}
"""
# A verified failure on the address counter. KEYS: the address counter; ARGV: the window. Returns the count.
_FAILED = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """An admitted attempt: its counters (a failure is reserved on the first)."""

    keys: tuple[str, str]  # (account and address, address)


@dataclass(frozen=True, slots=True)
class Verdict:
    wait: int  # seconds until the attempt would be admitted; 0: admitted (and counted on its account)
    counts: tuple[int, int]


class LocalCounts:
    """The same counters in this process: embedded mode's store (one process) and the fallback while Redis is down.

    Every entry has the same window, so insertion order is expiry order: expired entries are dropped from the front
    and, at capacity, the oldest go first. No ``await`` inside, so the event loop makes each call atomic.
    """

    def __init__(self, capacity: int = LOCAL_CAPACITY) -> None:
        self.capacity = capacity
        self.entries: dict[str, tuple[int, float]] = {}  # key → (count, expires at, monotonic)

    def reserve(self, keys: tuple[str, str], limits: tuple[int, int], window: int) -> Verdict:
        now = time.monotonic()
        while self.entries and (
            len(self.entries) + len(keys) > self.capacity or next(iter(self.entries.values()))[1] <= now
        ):
            del self.entries[next(iter(self.entries))]
        current = [self._live(key, now) for key in keys]
        waits = [
            math.ceil(expires - now) for (count, expires), limit in zip(current, limits, strict=True) if count >= limit
        ]
        if waits:
            return Verdict(max(1, *waits), (current[0][0], current[1][0]))
        self._increment(keys[0], current[0], now, window)
        return Verdict(0, (current[0][0] + 1, current[1][0]))

    def failed(self, address: str, window: int) -> int:
        now = time.monotonic()
        entry = self._live(address, now)
        return self._increment(address, entry, now, window)

    def release(self, account: str) -> None:
        self.entries.pop(account, None)

    def _increment(self, key: str, entry: tuple[int, float], now: float, window: int) -> int:
        count, expires = entry
        # A live entry keeps its place and expiry; a new one (``_live`` removed an expired one) goes to the back.
        self.entries[key] = (count + 1, expires if count else now + window)
        return count + 1

    def _live(self, key: str, now: float) -> tuple[int, float]:
        """The entry of ``key`` if its window is still running; an expired one is removed (it would sit out of
        order if a new window were written in its place)."""
        entry = self.entries.get(key)
        if entry is not None and entry[1] <= now:
            del self.entries[key]
            entry = None
        return entry or (0, 0.0)


class LoginThrottle:
    def __init__(self, settings: Settings) -> None:
        security = settings.security
        self.enabled = security.login_throttle
        self.limits = (security.login_max_failures, security.login_max_failures_per_address)
        self.window = security.login_failure_window
        self.trusted_proxies = settings.app.trusted_proxies
        self.local = LocalCounts()
        self._scripts: _Scripts | None = None

    async def admit(self, connection: ASGIConnection[Any, Any, Any, Any], identifier: str) -> LoginAttempt | None:
        """Reserve a failure for this attempt, or refuse it with 429 (and ``Retry-After``) past either limit.

        ``None`` when throttling is disabled (``LOGIN_THROTTLE_ENABLED=false``).
        """
        if not self.enabled:
            return None
        address = client_address(connection, self.trusted_proxies)
        # Hashed: bounded key length whatever was typed, and no account names in the key space. Case and outer
        # spaces are folded so that `Ann ` does not get a counter of its own.
        account = hashlib.sha256(identifier.strip().casefold().encode(errors="replace")).hexdigest()
        attempt = LoginAttempt((f"ratelimit:login:account:{address}:{account}", f"{_ADDRESS_PREFIX}{address}"))
        verdict = await self._reserve(connection.app, attempt)
        if verdict.wait:
            raise TooManyRequestsException(LOGIN_THROTTLED, headers={"Retry-After": str(verdict.wait)})
        if verdict.counts[0] == self.limits[0]:  # logged once per lockout, not for every refused attempt
            logger.warning("failed login limit reached", limit="account", address=address, window=self.window)
        return attempt

    async def failed(self, connection: ASGIConnection[Any, Any, Any, Any], attempt: LoginAttempt | None) -> None:
        """The attempt was a wrong password (or no such account): it counts on the address too."""
        if attempt is None:
            return
        address_key = attempt.keys[1]
        count: int | None = None
        try:
            client = self._redis(connection.app)
            if client is not None:
                async with bounded():
                    count = int(await self._scripts_of(client).failed(keys=[address_key], args=[self.window]))
        except (RedisError, OSError) as error:
            _log_unavailable(error, "failed")
        if count is None:
            count = self.local.failed(address_key, self.window)
        if count == self.limits[1]:
            address = address_key.removeprefix(_ADDRESS_PREFIX)
            logger.warning("failed login limit reached", limit="address", address=address, window=self.window)

    async def succeeded(self, connection: ASGIConnection[Any, Any, Any, Any], attempt: LoginAttempt | None) -> None:
        """The attempt was a successful login: its reserved failure was never one."""
        if attempt is None:
            return
        try:
            client = self._redis(connection.app)
            if client is not None:
                async with bounded():
                    await client.delete(attempt.keys[0])
                return
        except (RedisError, OSError) as error:
            _log_unavailable(error, "succeeded")
        self.local.release(attempt.keys[0])

    async def _reserve(self, app: Litestar, attempt: LoginAttempt) -> Verdict:
        try:
            client = self._redis(app)
            if client is not None:
                async with bounded():
                    reply = await self._scripts_of(client).reserve(
                        keys=list(attempt.keys), args=[*self.limits, self.window]
                    )
                return Verdict(int(reply[0]), (int(reply[1]), int(reply[2])))
        except (RedisError, OSError) as error:
            _log_unavailable(error, "reserve")
        return self.local.reserve(attempt.keys, self.limits, self.window)

    def _redis(self, app: Litestar) -> Redis | None:
        """The rate limiter's Redis connection (one pool per worker for both); ``None`` in embedded mode."""
        counter = app.state[RATE_LIMITER].counter
        if not isinstance(counter, RedisCounter):
            return None
        if counter.client is None:
            raise RedisError("rate limiter not started")
        return counter.client

    def _scripts_of(self, client: Redis) -> _Scripts:
        """The scripts on ``client``, registered again when the limiter's lifespan made a new client.

        ``register_script`` runs EVALSHA and reloads the script after SCRIPT FLUSH or a restart (NOSCRIPT).
        """
        if self._scripts is None or self._scripts.client is not client:
            self._scripts = _Scripts(client, client.register_script(_RESERVE), client.register_script(_FAILED))
        return self._scripts


@dataclass(frozen=True, slots=True)
class _Scripts:
    client: Redis
    reserve: Any  # redis-py's AsyncScript
    failed: Any


def _log_unavailable(error: Exception, operation: str) -> None:
    logger.error("login throttle store unavailable, counting in this process", error=type(error).__name__)
    record_redis_fallback("login_throttle", operation)


def provide_login_throttle(state: State) -> LoginThrottle:
    """The ``login_throttle`` dependency: the app's one throttle (its in-process counters outlive the request)."""
    throttle: LoginThrottle = state[LOGIN_THROTTLE]
    return throttle

"""The Redis clients of the request path (rate limiter, response cache): built in a lifespan, closed on shutdown."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# An unreachable Redis must cost a request about a second, not hang it: both users fail open (SPEC §5.7, §6.5).
REDIS_TIMEOUT = 1.0


def fail_fast_client(url: str) -> Redis:
    """A client whose every command gives up after ``REDIS_TIMEOUT`` (one retry, no backoff).

    The pool blocks instead of raising when it is exhausted (redis-py's default pool raises at 100 connections
    under a burst, notes Pitfall 13); 64 connections per worker, waited for at most 5 s.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=64,
        timeout=5,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
        retry=Retry(NoBackoff(), 1),
    )
    return Redis(connection_pool=pool)

"""The Redis clients of the request path (rate limiter, response cache): built in a lifespan, closed on shutdown."""

from __future__ import annotations

import asyncio

from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# An unreachable Redis must cost a request about a second, not hang it: both users fail open (SPEC §5.7, §6.5).
REDIS_TIMEOUT = 1.0


def fail_fast_client(url: str) -> Redis:
    """A client for commands run under ``bounded()``: connecting gives up after ``REDIS_TIMEOUT`` (one retry, no
    backoff), and the pool blocks instead of raising when it is exhausted (redis-py's default pool raises at 100
    connections under a burst, notes Pitfall 13); 64 connections per worker.

    No ``socket_timeout``: with it, redis-py wraps every send in ``asyncio.wait_for`` (a task per command on
    Python 3.11) and every read in a timeout, about a fifth of a cached read's CPU. One ``bounded()`` per
    operation gives the same guarantee; a command cancelled by it closes its connection (redis-py drops a
    connection interrupted mid-command), so no reply is ever read by the wrong request.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=64,
        timeout=5,
        socket_connect_timeout=REDIS_TIMEOUT,
        retry=Retry(NoBackoff(), 1),
    )
    return Redis(connection_pool=pool)


def bounded() -> asyncio.Timeout:
    """``async with bounded():`` one Redis operation, at most ``REDIS_TIMEOUT``; it raises ``TimeoutError`` (an
    ``OSError``, which the fail-open paths catch with ``RedisError``)."""
    return asyncio.timeout(REDIS_TIMEOUT)

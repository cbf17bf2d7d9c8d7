"""Password hashing (SPEC §3.1): Argon2id for new hashes, legacy bcrypt still verifies and is upgraded.

Hashing costs ~20 ms of CPU and 19 MiB of memory, so it runs off the event loop, on one dedicated thread
per process: a burst of logins queues there instead of starving the event loop of CPU (and instead of
growing 40 threads × 19 MiB). Throughput scales with Granian workers (GRANIAN__WORKERS = cores). That memory goes
back to the operating system after each hash (``_unmap_large_blocks``).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TypeVar

from pwdlib import PasswordHash
from pwdlib.exceptions import UnknownHashError
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

# OWASP minimum for Argon2id: m=19 MiB, t=2, p=1.
_hasher = PasswordHash((Argon2Hasher(memory_cost=19456, time_cost=2, parallelism=1), BcryptHasher()))

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_MMAP_THRESHOLD = 1024 * 1024


def _unmap_large_blocks() -> None:
    """Blocks of 1 MiB and more always come from ``mmap``, so Argon2's 19 MiB are unmapped when a hash is done.

    glibc serves a block that large from ``mmap`` only until the first one is freed: it then raises its threshold to
    that size, and every later hash's block came from the thread's heap and stayed there, resident (each worker kept
    ~20 MiB more after its first login). A threshold set with ``mallopt`` is fixed. Other C libraries: nothing to do.
    """
    try:
        os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return
    ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


# The thread is started on first use (the process-wide malloc setting with it); the pool is bound to no event loop.
_hashing_thread = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="password-hashing", initializer=_unmap_large_blocks
)

T = TypeVar("T")


# bcrypt reads only the first 72 bytes of a password; bcrypt 5 raises instead of ignoring the rest.
BCRYPT_MAX_BYTES = 72


async def _off_loop(function: Callable[..., T], *args: str | bytes) -> T:
    return await asyncio.get_running_loop().run_in_executor(_hashing_thread, function, *args)


@cache
def _dummy_hash() -> str:
    """Verified when a login names no account, so the response time does not reveal whether it exists."""
    return _hasher.hash("dummy password used only to spend the same time")


async def hash_password(password: str) -> str:
    return await _off_loop(_hasher.hash, password)


async def verify_password(password: str, hashed: str | None) -> tuple[bool, str | None]:
    """Check ``password``; return ``(valid, new_hash)`` where ``new_hash`` is set when the stored hash is outdated.

    ``hashed=None`` (unknown account) verifies against a dummy hash and is never valid.
    """
    if hashed is None:
        await _off_loop(_hasher.verify, password, await _off_loop(_dummy_hash))
        return False, None
    if hashed.startswith("$2"):
        # A legacy bcrypt hash was made from the password's first 72 bytes (the original's bcrypt ignored the rest):
        # verify those, then upgrade to Argon2id with the whole password.
        try:
            valid = await _off_loop(_hasher.verify, password.encode()[:BCRYPT_MAX_BYTES], hashed)
        except (UnknownHashError, ValueError):  # not a bcrypt hash after all (bcrypt finds no valid salt)
            return False, None
        return valid, await hash_password(password) if valid else None
    try:
        return await _off_loop(_hasher.verify_and_update, password, hashed)
    except UnknownHashError:  # not a hash any of our hashers understand
        return False, None

"""Password hashing (SPEC §3.1): Argon2id for new hashes, legacy bcrypt still verifies and is upgraded.

Hashing costs tens of milliseconds of CPU, so it always runs in a worker thread: one login never stalls
the event loop for other requests.
"""

from __future__ import annotations

from anyio import to_thread
from pwdlib import PasswordHash
from pwdlib.exceptions import UnknownHashError
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

# OWASP minimum for Argon2id: m=19 MiB, t=2, p=1.
_hasher = PasswordHash((Argon2Hasher(memory_cost=19456, time_cost=2, parallelism=1), BcryptHasher()))

# Verified when a login names no account, so the response time does not reveal whether it exists.
_DUMMY_HASH = _hasher.hash("dummy password used only to spend the same time")


async def hash_password(password: str) -> str:
    return await to_thread.run_sync(_hasher.hash, password)


async def verify_password(password: str, hashed: str | None) -> tuple[bool, str | None]:
    """Check ``password``; return ``(valid, new_hash)`` where ``new_hash`` is set when the stored hash is outdated.

    ``hashed=None`` (unknown account) verifies against a dummy hash and is never valid.
    """
    if hashed is None:
        await to_thread.run_sync(_hasher.verify, password, _DUMMY_HASH)
        return False, None
    try:
        return await to_thread.run_sync(_hasher.verify_and_update, password, hashed)
    except UnknownHashError:  # not a hash any of our hashers understand
        return False, None

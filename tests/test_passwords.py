from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest

from app.core.passwords import hash_password, verify_password

pytestmark = pytest.mark.anyio


async def test_new_hashes_are_argon2id_at_the_owasp_minimum() -> None:
    hashed = await hash_password("correct horse")
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert await verify_password("correct horse", hashed) == (True, None)
    assert (await verify_password("wrong horse", hashed))[0] is False


async def test_legacy_bcrypt_hashes_verify_and_are_upgraded() -> None:
    legacy = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(rounds=4)).decode()
    valid, upgraded = await verify_password("correct horse", legacy)
    assert valid is True
    assert upgraded is not None
    assert upgraded.startswith("$argon2id$")
    assert (await verify_password("wrong horse", legacy)) == (False, None)


async def test_unknown_accounts_and_garbage_hashes_never_verify() -> None:
    assert await verify_password("anything", None) == (False, None)
    assert await verify_password("anything", "not-a-hash") == (False, None)


async def test_a_legacy_bcrypt_hash_of_a_long_password_verifies_and_upgrades_with_the_whole_password() -> None:
    """The original's bcrypt read only the first 72 bytes; bcrypt 5 refuses longer input (it was a 500)."""
    password = "é" * 40 + "tail"  # 84 bytes: the tail was never part of the legacy hash
    legacy = bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(rounds=4)).decode()
    valid, upgraded = await verify_password(password, legacy)
    assert valid is True
    assert upgraded is not None
    assert await verify_password(password, upgraded) == (True, None)
    assert (await verify_password(password[:36], upgraded))[0] is False  # the Argon2 hash is of all of it
    assert await verify_password("x" * 200, legacy) == (False, None)
    assert await verify_password("anything", "$2b$12$garbage") == (False, None)


_RSS_AFTER_HASHES = """
import asyncio, sys
from app.core.passwords import hash_password

def rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

async def main() -> None:
    await hash_password("warm up: the thread, its stack and argon2's own set-up")
    before = rss_mib()
    for _ in range(3):
        await hash_password("correct horse")
    print(rss_mib() - before)

asyncio.run(main())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the RSS from /proc")
def test_a_process_does_not_keep_argon2s_memory_after_hashing() -> None:
    """Each hash takes 19 MiB; glibc kept that block resident after the second hash (~20 MiB per worker for good)."""
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", _RSS_AFTER_HASHES], capture_output=True, text=True, check=True, timeout=60
    )
    assert float(done.stdout) < 8, done.stdout  # MiB

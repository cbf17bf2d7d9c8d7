from __future__ import annotations

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

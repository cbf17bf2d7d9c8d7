"""JWT signing keys (SPEC §3.3): loading and checking them at startup, and generating a development pair.

``python -m app.core.keys`` (also a step of ``python -m app.core.bootstrap``) creates the RS256 pair at
JWT_PRIVATE_KEY_PATH / JWT_PUBLIC_KEY_PATH when both files are absent. A pair is only ever written whole: one
surviving half is never overwritten, because signing with a new private key while verifying with the old public
key makes every login succeed and every authenticated call fail with 401. Production keys are generated once
with openssl (src/certs/README.md) and mounted, never committed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from app.core.settings import PROJECT_ROOT, JWTSettings, SettingsError, exit_with, load_settings

PRIVATE_VARIABLE = "JWT_PRIVATE_KEY_PATH"
PUBLIC_VARIABLE = "JWT_PUBLIC_KEY_PATH"
# The private key is readable by its owner only, from the first byte on (never written, then chmod-ed).
PRIVATE_KEY_MODE = 0o600
PUBLIC_KEY_MODE = 0o644


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """Parsed once: PyJWT would otherwise parse the PEM text on every request."""

    signing: Any
    verification: Any


def load_signing_keys(settings: JWTSettings) -> SigningKeys:
    """Read and check the keys once at startup; a missing, unreadable or mismatched key stops the app (SPEC §3.3)."""
    if not settings.uses_key_pair:
        secret = settings.secret_key or ""
        return SigningKeys(signing=secret, verification=secret)
    private_pem = _read_pem(settings.private_key_path, PRIVATE_VARIABLE)
    public_pem = _read_pem(settings.public_key_path, PUBLIC_VARIABLE)
    return _parse_pair(private_pem, public_pem, settings.private_key_path, settings.public_key_path)


# Memoized by the files' bytes: `python -m app` checks the pair before it forks its Granian workers, so each worker
# finds it here instead of parsing it again (the RSA check took ~50 ms per worker at boot). Files changed since (new
# keys, then a respawned worker) are other bytes, parsed and checked anew.
@lru_cache(maxsize=2)
def _parse_pair(private_pem: bytes, public_pem: bytes, private_path: Path, public_path: Path) -> SigningKeys:
    private: Any = _parse_key(private_pem, private_path, PRIVATE_VARIABLE, _load_private_key)
    public: Any = _parse_key(public_pem, public_path, PUBLIC_VARIABLE, load_pem_public_key)
    if _public_bytes(private.public_key()) != _public_bytes(public):
        raise SettingsError(
            f"JWT key mismatch: the public key {public_path} ({PUBLIC_VARIABLE}) does not belong to "
            f"the private key {private_path} ({PRIVATE_VARIABLE}); derive the matching public key with "
            f"`openssl pkey -in {private_path} -pubout -out {public_path}`, "
            "or delete both files and run `task bootstrap` for a new pair"
        )
    return SigningKeys(signing=private, verification=public)


def _public_bytes(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _load_private_key(pem: bytes) -> object:
    return load_pem_private_key(pem, None)


def _read_pem(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, variable, exc) from None


def _parse_key(pem: bytes, path: Path, variable: str, parse: Callable[[bytes], object]) -> object:
    try:
        return parse(pem)
    except (ValueError, TypeError) as exc:
        raise _unreadable(path, variable, exc) from None


def _unreadable(path: Path, variable: str, exc: Exception) -> SettingsError:
    return SettingsError(
        f"Invalid value for {variable}: cannot read a PEM key at {path} ({exc.__class__.__name__}); "
        "generate a pair with `pdm run python -m app.core.keys` (see src/certs/README.md)"
    )


def ensure_key_pair(settings: JWTSettings) -> tuple[bool, str]:
    """Generate the pair when both files are absent, else check the existing one: ``(generated, line to show)``.

    Raises ``SettingsError`` (one line, naming both paths) when only one file exists or the pair does not match.
    """
    if not settings.uses_key_pair:
        return False, f"ALGORITHM={settings.algorithm} signs with SECRET_KEY: no key pair needed."
    private_path, public_path = settings.private_key_path, settings.public_key_path
    private_exists, public_exists = os.path.lexists(private_path), os.path.lexists(public_path)
    if private_exists and public_exists:
        load_signing_keys(settings)
        return False, f"JWT keys present and matching: {private_path}, {public_path}"
    if private_exists or public_exists:
        present, missing = (private_path, public_path) if private_exists else (public_path, private_path)
        raise SettingsError(
            f"Incomplete JWT key pair: {present} exists but {missing} does not, so nothing was generated or "
            f"overwritten; restore {missing}, or delete {present} to generate a new pair "
            "(every issued token becomes invalid)"
        )
    write_key_pair(private_path, public_path)
    return True, f"Generated a development JWT key pair: {private_path}, {public_path}"


def write_key_pair(private_path: Path, public_path: Path) -> None:
    """Write a new RS256 pair; never overwrites a file, and leaves no half pair behind when a write fails."""
    for path, variable in ((private_path, PRIVATE_VARIABLE), (public_path, PUBLIC_VARIABLE)):
        _ensure_parent(path, variable)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, PRIVATE_KEY_MODE, PRIVATE_VARIABLE)
    try:
        _write_new(public_path, public_pem, PUBLIC_KEY_MODE, PUBLIC_VARIABLE)
    except SettingsError:
        private_path.unlink()
        raise


def _ensure_parent(path: Path, variable: str) -> None:
    """Create a missing key directory only inside the project: elsewhere that is the operator's decision."""
    parent = path.parent
    if parent.is_dir():
        return
    if not parent.resolve().is_relative_to(PROJECT_ROOT):
        raise SettingsError(
            f"Invalid value for {variable}: the directory {parent} does not exist and lies outside the project "
            f"({PROJECT_ROOT}), so it is not created; create it (`mkdir -p {parent}`) or choose a path in the project"
        )
    parent.mkdir(parents=True, exist_ok=True)


def _write_new(path: Path, content: bytes, mode: int, variable: str) -> None:
    try:
        # O_EXCL: fail rather than overwrite (a file created meanwhile, or a dangling symlink).
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise SettingsError(f"Invalid value for {variable}: cannot create {path} ({exc.strerror})") from None
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
    except OSError as exc:  # e.g. a full disk: a truncated key must not stay behind
        path.unlink(missing_ok=True)
        raise SettingsError(f"Invalid value for {variable}: cannot write {path} ({exc.strerror})") from None


def main() -> None:
    try:
        _, line = ensure_key_pair(load_settings().jwt)
    except SettingsError as exc:
        exit_with(exc)
    print(line)  # noqa: T201 - a command-line tool's one line of output


if __name__ == "__main__":
    main()

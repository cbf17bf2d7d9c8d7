"""JWT signing keys (SPEC §3.3): loading and checking them at startup, and generating a development pair.

``python -m app.core.keys`` creates the RS256 pair at JWT_PRIVATE_KEY_PATH / JWT_PUBLIC_KEY_PATH if missing.
Production keys are generated once with openssl (src/certs/README.md) and mounted, never committed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from app.core.settings import JWTSettings, SettingsError, load_settings


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """Parsed once: PyJWT would otherwise parse the PEM text on every request."""

    signing: Any
    verification: Any


def load_signing_keys(settings: JWTSettings) -> SigningKeys:
    """Read and check the keys once at startup; a missing or unreadable key stops the app (SPEC §3.3)."""
    if not settings.uses_key_pair:
        secret = settings.secret_key or ""
        return SigningKeys(signing=secret, verification=secret)
    private = _read_key(settings.private_key_path, "JWT_PRIVATE_KEY_PATH", lambda pem: load_pem_private_key(pem, None))
    public = _read_key(settings.public_key_path, "JWT_PUBLIC_KEY_PATH", load_pem_public_key)
    return SigningKeys(signing=private, verification=public)


def _read_key(path: Path, variable: str, parse: Callable[[bytes], object]) -> object:
    try:
        return parse(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise SettingsError(
            f"Invalid value for {variable}: cannot read a PEM key at {path} ({exc.__class__.__name__}); "
            "generate a pair with `pdm run python -m app.core.keys` (see src/certs/README.md)"
        ) from None


def write_key_pair(private_path: Path, public_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def main() -> None:
    jwt = load_settings().jwt
    if not jwt.uses_key_pair:
        print(f"ALGORITHM={jwt.algorithm} signs with SECRET_KEY: no key pair needed.")  # noqa: T201
    elif jwt.private_key_path.is_file() and jwt.public_key_path.is_file():
        print(f"JWT keys present: {jwt.private_key_path}")  # noqa: T201
    else:
        write_key_pair(jwt.private_key_path, jwt.public_key_path)
        print(f"Generated a development JWT key pair: {jwt.private_key_path}, {jwt.public_key_path}")  # noqa: T201


if __name__ == "__main__":
    main()

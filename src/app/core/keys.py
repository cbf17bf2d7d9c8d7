"""``python -m app.core.keys``: create the RS256 key pair at JWT_PRIVATE_KEY_PATH / JWT_PUBLIC_KEY_PATH if missing.

For development and first runs; production keys are generated once with openssl (src/certs/README.md)
and mounted, never committed.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.main import load_settings


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

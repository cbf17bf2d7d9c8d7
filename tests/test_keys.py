"""JWT key pair generation and checking (SPEC §3.3): a pair is written whole or not at all, and must match."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from app.core.keys import load_signing_keys, write_key_pair
from app.core.settings import Settings, SettingsError
from app.main import create_app
from tests.helpers import one_line, run_command


def run_module(module: str, env: dict[str, str], root: Path) -> subprocess.CompletedProcess[str]:
    return run_command([sys.executable, "-m", module], env, root, timeout=60)


def key_env(test_env: dict[str, str], private: Path, public: Path) -> dict[str, str]:
    return {**test_env, "JWT_PRIVATE_KEY_PATH": str(private), "JWT_PUBLIC_KEY_PATH": str(public)}


def test_keys_are_generated_when_both_files_are_absent(
    test_env: dict[str, str], project_root: Path, tmp_path: Path
) -> None:
    private, public = tmp_path / "jwt-private.pem", tmp_path / "jwt-public.pem"
    result = run_module("app.core.keys", key_env(test_env, private, public), project_root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Generated a development JWT key pair: {private}, {public}"
    assert private.stat().st_mode & 0o777 == 0o600
    signing = serialization.load_pem_private_key(private.read_bytes(), None)
    verification = serialization.load_pem_public_key(public.read_bytes())
    token = jwt.encode({"sub": "x"}, signing, algorithm="RS256")  # type: ignore[arg-type]
    assert jwt.decode(token, verification, algorithms=["RS256"]) == {"sub": "x"}  # type: ignore[arg-type]

    again = run_module("app.core.keys", key_env(test_env, private, public), project_root)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"JWT keys present and matching: {private}, {public}"


@pytest.mark.parametrize("survivor", ["private", "public"])
def test_a_lone_key_file_is_refused_and_left_byte_identical(
    test_env: dict[str, str], project_root: Path, tmp_path: Path, survivor: str
) -> None:
    write_key_pair(tmp_path / "private.pem", tmp_path / "public.pem")
    (tmp_path / f"{'public' if survivor == 'private' else 'private'}.pem").unlink()
    surviving = tmp_path / f"{survivor}.pem"
    missing = tmp_path / f"{'public' if survivor == 'private' else 'private'}.pem"
    before = surviving.read_bytes()

    result = run_module(
        "app.core.keys", key_env(test_env, tmp_path / "private.pem", tmp_path / "public.pem"), project_root
    )

    assert result.returncode == 1
    line = one_line(result)
    assert str(surviving) in line
    assert str(missing) in line
    assert "nothing was generated or overwritten" in line
    assert surviving.read_bytes() == before
    assert not missing.exists()


def test_a_mismatched_pair_stops_the_app_factory_naming_both_paths(
    test_env: dict[str, str], settings_with: Callable[..., Settings], tmp_path: Path
) -> None:
    write_key_pair(tmp_path / "other-private.pem", tmp_path / "other-public.pem")
    other_public = str(tmp_path / "other-public.pem")
    with pytest.raises(SettingsError) as error:
        create_app(settings_with(JWT_PUBLIC_KEY_PATH=other_public))
    message = str(error.value)
    assert "\n" not in message
    assert other_public in message
    assert test_env["JWT_PRIVATE_KEY_PATH"] in message


def test_a_pair_is_parsed_once_per_content_and_a_changed_file_is_checked_anew(
    settings_with: Callable[..., Settings], tmp_path: Path
) -> None:
    private, public = tmp_path / "private.pem", tmp_path / "public.pem"
    write_key_pair(private, public)
    jwt_settings = settings_with(JWT_PRIVATE_KEY_PATH=str(private), JWT_PUBLIC_KEY_PATH=str(public)).jwt
    first = load_signing_keys(jwt_settings)
    assert load_signing_keys(jwt_settings) is first  # what a forked Granian worker finds: no second RSA check

    private.unlink()
    public.unlink()
    write_key_pair(private, public)  # rotated in place: the same paths, a new pair
    rotated = load_signing_keys(jwt_settings)
    token = jwt.encode({"sub": "x"}, rotated.signing, algorithm="RS256")
    assert jwt.decode(token, rotated.verification, algorithms=["RS256"]) == {"sub": "x"}
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, first.verification, algorithms=["RS256"])

    write_key_pair(tmp_path / "other-private.pem", tmp_path / "other-public.pem")
    public.write_bytes((tmp_path / "other-public.pem").read_bytes())  # no longer the private key's half
    with pytest.raises(SettingsError, match="JWT key mismatch"):
        load_signing_keys(jwt_settings)


def test_a_mismatched_pair_stops_the_server_with_one_line(
    test_env: dict[str, str], project_root: Path, tmp_path: Path
) -> None:
    write_key_pair(tmp_path / "other-private.pem", tmp_path / "other-public.pem")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = key_env(test_env, Path(test_env["JWT_PRIVATE_KEY_PATH"]), tmp_path / "other-public.pem")
    result = run_module("app", {**env, "RUN__HOST": "127.0.0.1", "RUN__PORT": str(port)}, project_root)
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith("Configuration error: JWT key mismatch:")
    assert str(tmp_path / "other-public.pem") in line
    assert test_env["JWT_PRIVATE_KEY_PATH"] in line


def test_a_key_directory_outside_the_project_is_not_created(
    test_env: dict[str, str], project_root: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "not-yet"
    result = run_module(
        "app.core.keys", key_env(test_env, directory / "jwt-private.pem", directory / "jwt-public.pem"), project_root
    )
    assert result.returncode == 1
    line = one_line(result)
    assert f"mkdir -p {directory}" in line
    assert not directory.exists()


def test_key_generation_never_overwrites_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "public.pem").write_bytes(b"keep me")
    with pytest.raises(SettingsError, match="JWT_PUBLIC_KEY_PATH"):
        write_key_pair(tmp_path / "private.pem", tmp_path / "public.pem")
    assert (tmp_path / "public.pem").read_bytes() == b"keep me"
    # The private half written first is removed again: no half pair stays behind.
    assert not (tmp_path / "private.pem").exists()

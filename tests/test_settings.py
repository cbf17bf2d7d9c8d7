from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.settings import PROJECT_ROOT, Settings, SettingsError


def test_defaults_follow_the_spec() -> None:
    settings = Settings.from_env({}, env_file=None)
    assert settings.app.name == "Litestar app"
    assert settings.app.version == "0.1.0"
    assert settings.app.environment == "local"
    assert settings.server.port == 8000
    assert settings.server.workers == 1
    assert settings.server.timeout == 900
    assert settings.jwt.algorithm == "RS256"
    assert settings.jwt.token_type_field == "type"
    assert settings.jwt.private_key_path == PROJECT_ROOT / "src/certs/jwt-private.pem"
    assert settings.rate_limit.default_limit == 1
    assert settings.rate_limit.default_period == 60
    assert settings.app.client_cache_max_age == 30
    assert settings.db.create_tables_on_start is True
    assert settings.first_run.tier_name == "free"
    assert settings.log.file_path == PROJECT_ROOT / "src/app/logs/app.log"


def test_redis_pairs_fall_back_to_the_client_pair() -> None:
    settings = Settings.from_env({"REDIS_CLIENT_HOST": "redis", "REDIS_QUEUE_PORT": "7000"}, env_file=None)
    assert (settings.redis_cache.host, settings.redis_cache.port) == ("redis", 6379)
    assert (settings.redis_queue.host, settings.redis_queue.port) == ("redis", 7000)
    assert settings.redis_rate_limit.url == "redis://redis:6379/0"


def test_aliases_and_first_name_wins() -> None:
    settings = Settings.from_env({"LICENSE": "MIT", "GUNICORN_WORKERS": "3", "GUNICORN__TIMEOUT": "60"}, env_file=None)
    assert settings.app.license_name == "MIT"
    assert settings.server.workers == 3
    assert settings.server.timeout == 60
    both = Settings.from_env({"LICENSE_NAME": "Apache-2.0", "LICENSE": "MIT", "GRANIAN__WORKERS": "2"}, env_file=None)
    assert both.app.license_name == "Apache-2.0"
    assert both.server.workers == 2


@pytest.mark.parametrize("value", ["true", "1", "YES", "True"])
def test_booleans_accept_true_spellings(value: str) -> None:
    assert Settings.from_env({"DB__ECHO": value}, env_file=None).db.echo is True


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ENVIRONMENT", "bogus"),
        ("RUN__PORT", "abc"),
        ("RUN__PORT", "70000"),
        ("DB__ECHO", "maybe"),
        ("ACCESS_TOKEN_EXPIRE_MINUTES", "0"),
        ("DEFAULT_RATE_LIMIT_PERIOD", "0"),
        ("ALGORITHM", "none"),
        ("GRANIAN__WORKERS", "0"),
    ],
)
def test_invalid_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value}, env_file=None)


def test_hmac_algorithms_require_a_secret() -> None:
    with pytest.raises(SettingsError, match="SECRET_KEY"):
        Settings.from_env({"ALGORITHM": "HS256"}, env_file=None)
    assert Settings.from_env({"ALGORITHM": "HS256", "SECRET_KEY": "s" * 32}, env_file=None).jwt.secret_key


def test_token_types_must_differ() -> None:
    with pytest.raises(SettingsError, match="REFRESH_TOKEN_TYPE"):
        Settings.from_env({"ACCESS_TOKEN_TYPE": "x", "REFRESH_TOKEN_TYPE": "x"}, env_file=None)


def test_environment_overrides_env_file_over_defaults(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text('APP_NAME="From file"\nAPP_VERSION=2.0\n# a comment\nUNKNOWN_VARIABLE=ignored\n')
    settings = Settings.from_env({"APP_VERSION": "3.0"}, env_file=env_file)
    assert settings.app.name == "From file"
    assert settings.app.version == "3.0"


def test_relative_paths_resolve_from_the_project_root() -> None:
    settings = Settings.from_env({"JWT_PUBLIC_KEY_PATH": "keys/public.pem", "LOG_FILE_PATH": ""}, env_file=None)
    assert settings.jwt.public_key_path == PROJECT_ROOT / "keys/public.pem"
    assert settings.log.file_path is None


def test_embedded_mode_is_chosen_only_without_configuration(tmp_path: Path) -> None:
    missing = tmp_path / "absent.env"
    present = tmp_path / ".env"
    present.write_text("POSTGRES_DB=app\n")
    assert Settings.from_env({}, env_file=missing).embedded is True
    assert Settings.from_env({}, env_file=present).embedded is False
    assert Settings.from_env({"POSTGRES_SERVER": "db"}, env_file=missing).embedded is False
    assert Settings.from_env({"REDIS_QUEUE_HOST": "redis"}, env_file=missing).embedded is False
    assert Settings.from_env({"EMBEDDED": "true"}, env_file=present).embedded is True
    assert Settings.from_env({"EMBEDDED": "false"}, env_file=missing).embedded is False
    embedded = Settings.from_env({}, env_file=missing)
    assert embedded.database_url.startswith("sqlite+aiosqlite:///")
    configured = Settings.from_env({"POSTGRES_PASSWORD": "p@ss/word"}, env_file=present)
    assert configured.database_url == "postgresql+asyncpg://postgres:p%40ss%2Fword@localhost:5432/app"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("ENVIRONMENT", "bogus"), ("RUN__PORT", "abc"), ("JWT_PRIVATE_KEY_PATH", "/nonexistent/jwt-private.pem")],
)
def test_startup_fails_with_one_line_naming_the_variable(variable: str, value: str) -> None:
    env = {**os.environ, "EMBEDDED": "true", variable: value}
    result = subprocess.run(
        [sys.executable, "-m", "app"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        next(line for line in result.stderr.splitlines() if line.startswith("Configuration error:"))
    ]
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


def test_forwarded_allow_ips_is_a_list_of_addresses_and_networks_or_a_star() -> None:
    default = Settings.from_env({}, env_file=None).app.trusted_proxies
    assert default is not None
    assert "127.0.0.1" in default
    assert "127.0.0.2" not in default
    listed = Settings.from_env({"FORWARDED_ALLOW_IPS": "10.0.0.2, ::0001, 172.18.0.0/16, fd00::/8"}, env_file=None)
    trusted = listed.app.trusted_proxies
    assert trusted is not None
    for peer in ("10.0.0.2", "::1", "172.18.0.1", "172.18.255.254", "fd00::5", "::ffff:172.18.3.4", "::ffff:10.0.0.2"):
        assert peer in trusted, peer
    for peer in ("10.0.0.3", "172.19.0.1", "fe80::1", "::2", "unix:/run/app.sock", "", "not an address"):
        assert peer not in trusted, peer
    assert Settings.from_env({"FORWARDED_ALLOW_IPS": "*"}, env_file=None).app.trusted_proxies is None
    for invalid in ("nginx", "10.0.0.0/33", "10.0.0.1, fd00::/129"):
        with pytest.raises(SettingsError, match="FORWARDED_ALLOW_IPS"):
            Settings.from_env({"FORWARDED_ALLOW_IPS": invalid}, env_file=None)

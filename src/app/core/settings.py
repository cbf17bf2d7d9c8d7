"""Application settings (SPEC §9).

Sources, highest first: the process environment, then ``src/.env``, then the defaults below.
Every field names the environment variable(s) it is read from; the first name found wins,
which is how aliases (``LICENSE``) and fallbacks (``REDIS_CACHE_HOST`` → ``REDIS_CLIENT_HOST``) work.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TypeVar, get_type_hints
from urllib.parse import quote, urlsplit

import msgspec
from dotenv import dotenv_values

PROJECT_ROOT = Path(__file__).resolve().parents[3]
ENV_FILE = PROJECT_ROOT / "src" / ".env"

Environment = Literal["local", "staging", "production"]
Algorithm = Literal["RS256", "RS384", "RS512", "HS256", "HS384", "HS512"]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
RedisDatabase = Annotated[int, msgspec.Meta(ge=0, le=15)]

# SPEC §9.3: any of these in the process environment means "use real services".
_SERVICE_VARIABLES = (
    "POSTGRES_SERVER",
    "REDIS_CLIENT_HOST",
    "REDIS_CACHE_HOST",
    "REDIS_QUEUE_HOST",
    "REDIS_RATE_LIMIT_HOST",
)
# SPEC §9.2: RUN__HOST defaults to all interfaces, which a container needs; `python -m app --reload` on a
# laptop must not expose the API to the network unless RUN__HOST asks for it.
CONTAINER_HOST = "0.0.0.0"  # noqa: S104 - a container must listen on all interfaces
DEVELOPMENT_HOST = "127.0.0.1"
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}

T = TypeVar("T")


class SettingsError(ValueError):
    """A variable has an invalid value; the message names it."""


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """``FORWARDED_ALLOW_IPS`` read: addresses and networks (``10.0.0.0/8``, ``fd00::/8``), as uvicorn and Granian
    accept them. ``peer in proxies`` answers for a peer address as the server reports it."""

    addresses: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    @cache  # read per request (``AppSettings.trusted_proxies``); a value is parsed once
    def parse(cls, value: str) -> TrustedProxies | None:
        """``None`` for ``*`` (every peer); a ``SettingsError`` naming the entry that is neither address nor network."""
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        if "*" in entries:
            return None
        addresses: set[str] = set()
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            try:
                if "/" in entry:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                else:
                    addresses.add(str(ipaddress.ip_address(entry)))  # one spelling: "::0001" is "::1"
            except ValueError:
                raise SettingsError(
                    f"Invalid value for FORWARDED_ALLOW_IPS: {entry!r} is not an IP address or network"
                ) from None
        return cls(frozenset(addresses), tuple(networks))

    def __contains__(self, peer: object) -> bool:
        if peer in self.addresses:
            return True
        if not isinstance(peer, str) or (":" not in peer and not self.networks):
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:  # a Unix socket's path, say
            return False
        # A server listening on "::" reports an IPv4 peer as ::ffff:a.b.c.d.
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        candidates = (address,) if mapped is None else (address, mapped)
        return any(
            str(candidate) in self.addresses or any(candidate in network for network in self.networks)
            for candidate in candidates
        )


def env(*names: str, default: Any = None) -> Any:
    """Declare a setting read from the first of ``names`` present (``{purpose}`` is filled in per group)."""
    return field(default=default, metadata={"env": names})


@dataclass(frozen=True, slots=True)
class AppSettings:
    name: str = env("APP_NAME", default="Litestar app")
    description: str | None = env("APP_DESCRIPTION")
    version: str = env("APP_VERSION", default="0.1.0")
    contact_name: str | None = env("CONTACT_NAME")
    contact_email: str | None = env("CONTACT_EMAIL")
    license_name: str | None = env("LICENSE_NAME", "LICENSE")
    environment: Environment = env("ENVIRONMENT", default="local")
    client_cache_max_age: NonNegativeInt = env("CLIENT_CACHE_MAX_AGE", default=30)
    forwarded_allow_ips: str = env("FORWARDED_ALLOW_IPS", default="127.0.0.1")
    # Where /docs and /redoc load Swagger UI and ReDoc from: the app itself (works offline) or Litestar's CDN.
    docs_assets: Literal["local", "cdn"] = env("DOCS_ASSETS", default="local")

    @property
    def trusted_proxies(self) -> TrustedProxies | None:
        """Peers whose forwarding headers are trusted (SPEC §5.3); ``None`` means every peer (``*``)."""
        return TrustedProxies.parse(self.forwarded_allow_ips)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    # Unset: the dev server binds 127.0.0.1 and everything else 0.0.0.0 (see ``bind_host``).
    host: str | None = env("RUN__HOST")
    port: Port = env("RUN__PORT", default=8000)
    workers: PositiveInt = env("GRANIAN__WORKERS", "GUNICORN__WORKERS", "GUNICORN_WORKERS", default=1)
    timeout: PositiveInt = env("GRANIAN__TIMEOUT", "GUNICORN__TIMEOUT", default=900)

    def bind_host(self, *, development: bool) -> str:
        """``RUN__HOST`` when set; else the dev server stays on this machine and a container listens everywhere."""
        if self.host is not None:
            return self.host
        return DEVELOPMENT_HOST if development else CONTAINER_HOST


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    echo: bool = env("DB__ECHO", default=False)
    create_tables_on_start: bool = env("DB__CREATE_TABLES_ON_START", default=True)
    user: str = env("POSTGRES_USER", default="postgres")
    password: str = env("POSTGRES_PASSWORD", default="postgres")
    server: str = env("POSTGRES_SERVER", default="localhost")
    port: Port = env("POSTGRES_PORT", default=5432)
    name: str = env("POSTGRES_DB", default="postgres")
    pool_size: PositiveInt = env("DB__POOL_SIZE", default=16)
    max_overflow: NonNegativeInt = env("DB__MAX_OVERFLOW", default=0)
    # Seconds to wait for a connection before the request fails with 503 instead of hanging.
    connect_timeout: PositiveInt = env("DB__CONNECT_TIMEOUT", default=5)
    # Seconds a statement may run, waits for locks included, before it is cancelled and the request answers 503.
    statement_timeout: PositiveInt = env("DB__STATEMENT_TIMEOUT", default=30)
    # SPEC §9.3: the SQLite file of embedded mode, in a git-ignored folder.
    embedded_path: Path = env("EMBEDDED_DATABASE_PATH", default=PROJECT_ROOT / "src/.embedded/app.sqlite3")

    @property
    def postgres_url(self) -> str:
        credentials = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"postgresql+asyncpg://{credentials}@{self.server}:{self.port}/{self.name}"


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """One Redis connection; ``{purpose}`` is CLIENT, CACHE, QUEUE or RATE_LIMIT (SPEC §9.2)."""

    host: str = env("REDIS_{purpose}_HOST", "REDIS_CLIENT_HOST", default="localhost")
    port: Port = env("REDIS_{purpose}_PORT", "REDIS_CLIENT_PORT", default=6379)
    db: RedisDatabase = env("REDIS_{purpose}_DB", "REDIS_CLIENT_DB", default=0)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


@dataclass(frozen=True, slots=True)
class JWTSettings:
    algorithm: Algorithm = env("ALGORITHM", default="RS256")
    access_token_expire_minutes: PositiveInt = env("ACCESS_TOKEN_EXPIRE_MINUTES", default=30)
    refresh_token_expire_days: PositiveInt = env("REFRESH_TOKEN_EXPIRE_DAYS", default=7)
    token_type_field: str = env("TOKEN_TYPE_FIELD", default="type")
    access_token_type: str = env("ACCESS_TOKEN_TYPE", default="access")
    refresh_token_type: str = env("REFRESH_TOKEN_TYPE", default="refresh")
    secret_key: str | None = env("SECRET_KEY")
    private_key_path: Path = env("JWT_PRIVATE_KEY_PATH", default=PROJECT_ROOT / "src/certs/jwt-private.pem")
    public_key_path: Path = env("JWT_PUBLIC_KEY_PATH", default=PROJECT_ROOT / "src/certs/jwt-public.pem")

    @property
    def uses_key_pair(self) -> bool:
        return self.algorithm.startswith("RS")


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    default_limit: NonNegativeInt = env("DEFAULT_RATE_LIMIT_LIMIT", default=1)
    default_period: PositiveInt = env("DEFAULT_RATE_LIMIT_PERIOD", default=60)


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    """Cross-origin access and login throttling (issue 13; not in the original)."""

    # Comma list of exact origins (``https://app.example.com``) allowed to call the API from a browser; empty: CORS
    # is off. ``*`` is refused: the refresh cookie makes every response credentialed.
    cors_allow_origins: str = env("CORS_ALLOW_ORIGINS", default="")
    # Failed logins are counted per account and client address, and per client address over all accounts, in a
    # window of ``login_failure_window`` seconds; past either limit, login answers 429 until the window ends.
    login_throttle: bool = env("LOGIN_THROTTLE_ENABLED", default=True)
    login_max_failures: PositiveInt = env("LOGIN_MAX_FAILURES", default=5)
    login_max_failures_per_address: PositiveInt = env("LOGIN_MAX_FAILURES_PER_ADDRESS", default=50)
    login_failure_window: PositiveInt = env("LOGIN_FAILURE_WINDOW", default=900)

    @property
    def allowed_origins(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(o.strip().rstrip("/") for o in self.cors_allow_origins.split(",") if o.strip()))


@dataclass(frozen=True, slots=True)
class FirstRunSettings:
    """Inputs of ``litestar users create-superuser`` and ``litestar tiers create`` (SPEC §12.2)."""

    admin_name: str = env("ADMIN_NAME", default="admin")
    admin_email: str = env("ADMIN_EMAIL", default="admin@admin.com")
    admin_username: str = env("ADMIN_USERNAME", default="admin")
    admin_password: str = env("ADMIN_PASSWORD", default="!Ch4ng3Th1sP4ssW0rd!")
    tier_name: str = env("TIER_NAME", default="free")


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = env("LOG_LEVEL", default="INFO")
    file_path: Path | None = env("LOG_FILE_PATH", default=PROJECT_ROOT / "src/app/logs/app.log")


@dataclass(frozen=True, slots=True)
class Settings:
    app: AppSettings
    server: ServerSettings
    db: DatabaseSettings
    redis: RedisSettings
    redis_cache: RedisSettings
    redis_queue: RedisSettings
    redis_rate_limit: RedisSettings
    jwt: JWTSettings
    rate_limit: RateLimitSettings
    security: SecuritySettings
    first_run: FirstRunSettings
    log: LogSettings
    embedded: bool

    @property
    def database_url(self) -> str:
        if self.embedded:
            return f"sqlite+aiosqlite:///{self.db.embedded_path}"
        return self.db.postgres_url

    @property
    def is_production(self) -> bool:
        return self.app.environment == "production"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, env_file: Path | None = ENV_FILE) -> Settings:
        """Read the settings; raise ``SettingsError`` naming the first invalid variable."""
        process = dict(os.environ if environ is None else environ)
        file_values = _read_env_file(env_file)
        source = {**file_values, **process}
        settings = cls(
            app=_load(AppSettings, source),
            server=_load(ServerSettings, source),
            db=_load(DatabaseSettings, source),
            redis=_load(RedisSettings, source, purpose="CLIENT"),
            redis_cache=_load(RedisSettings, source, purpose="CACHE"),
            redis_queue=_load(RedisSettings, source, purpose="QUEUE"),
            redis_rate_limit=_load(RedisSettings, source, purpose="RATE_LIMIT"),
            jwt=_load(JWTSettings, source),
            rate_limit=_load(RateLimitSettings, source),
            security=_load(SecuritySettings, source),
            first_run=_load(FirstRunSettings, source),
            log=_load(LogSettings, source),
            embedded=_embedded_mode(source, process, env_file_exists=bool(env_file and env_file.is_file())),
        )
        _check_consistency(settings)
        return settings


def _read_env_file(path: Path | None) -> dict[str, str]:
    if path is None or not path.is_file():
        return {}
    return {key: value for key, value in dotenv_values(path).items() if value is not None}


def _load(group: type[T], source: Mapping[str, str], purpose: str = "") -> T:
    hints = get_type_hints(group, include_extras=True)
    values: dict[str, Any] = {}
    for spec in fields(group):  # type: ignore[arg-type]
        names = dict.fromkeys(name.format(purpose=purpose) for name in spec.metadata["env"])
        name = next((n for n in names if n in source), None)
        if name is not None:
            values[spec.name] = _convert(name, source[name], hints[spec.name])
    return group(**values)


def _convert(name: str, raw: str, annotation: Any) -> Any:
    value: Any = raw.strip()
    if value == "":
        # An empty value means "unset" for optional text and paths (e.g. LOG_FILE_PATH= disables the file).
        if type(None) in getattr(annotation, "__args__", ()):
            return None
        if annotation is not str:
            raise SettingsError(f"Invalid value for {name}: it must not be empty")
    if annotation is bool:
        lowered = value.lower()
        if lowered not in _TRUE | _FALSE:
            raise SettingsError(f"Invalid value for {name}: {raw!r} is not a boolean (use true/false/1/0/yes/no)")
        return lowered in _TRUE
    if annotation in (Path, Path | None):
        # SPEC §3.3: paths are relative to the project root, not the working directory.
        return PROJECT_ROOT / value
    try:
        return msgspec.convert(value, annotation, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"Invalid value for {name}: {raw!r} ({exc})") from None


def _embedded_mode(source: Mapping[str, str], process: Mapping[str, str], *, env_file_exists: bool) -> bool:
    if "EMBEDDED" in source and source["EMBEDDED"].strip():
        return bool(_convert("EMBEDDED", source["EMBEDDED"], bool))
    return not env_file_exists and not any(name in process for name in _SERVICE_VARIABLES)


def _check_consistency(settings: Settings) -> None:
    TrustedProxies.parse(settings.app.forwarded_allow_ips)  # an invalid entry is refused at start, not per request
    for origin in settings.security.allowed_origins:
        if origin == "*":
            raise SettingsError("Invalid value for CORS_ALLOW_ORIGINS: '*' is refused, responses carry credentials")
        parts = urlsplit(origin)
        invalid = not parts.netloc or "*" in parts.netloc or parts.path or parts.query or parts.fragment
        if parts.scheme not in ("http", "https") or invalid:
            raise SettingsError(
                f"Invalid value for CORS_ALLOW_ORIGINS: {origin!r} is not an origin (https://host[:port])"
            )
    jwt = settings.jwt
    if jwt.access_token_type == jwt.refresh_token_type:
        raise SettingsError("Invalid value for REFRESH_TOKEN_TYPE: it must differ from ACCESS_TOKEN_TYPE")
    if not jwt.uses_key_pair and not jwt.secret_key:
        raise SettingsError(f"Invalid value for SECRET_KEY: it is required when ALGORITHM={jwt.algorithm}")


def exit_with(error: SettingsError) -> NoReturn:
    """One clear line naming the bad variable, no traceback, exit status 1 (SPEC §9.1)."""
    print(f"Configuration error: {error}", file=sys.stderr)  # noqa: T201 - logging is not configured yet
    raise SystemExit(1) from None


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        exit_with(exc)

"""Test infrastructure: the real PostgreSQL and Redis of this machine, never mocks.

Per run: a fresh database (migrated with Alembic, dropped afterwards) and an RSA key pair.
Per test: every table truncated and a dedicated Redis database index flushed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest
import redis
from alembic import command
from alembic.config import Config
from litestar import Litestar
from litestar.testing import AsyncTestClient
from saq.queue.redis import RedisQueue
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from app.core.db import ALEMBIC_INI, MIGRATIONS_DIR
from app.core.keys import write_key_pair
from app.core.passwords import hash_password
from app.core.queue import QUEUE_NAME
from app.core.settings import Settings
from app.main import create_app
from app.models import metadata
from app.users.models import User
from tests.helpers import PASSWORD, bearer
from tests.servers import LiveServer, live_server

PG_HOST = os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1")
PG_PORT = os.environ.get("TEST_POSTGRES_PORT", "5432")
PG_USER = os.environ.get("TEST_POSTGRES_USER", "postgres")
PG_PASSWORD = os.environ.get("TEST_POSTGRES_PASSWORD", "postgres")
REDIS_HOST = os.environ.get("TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = os.environ.get("TEST_REDIS_PORT", "6379")
# A database index of its own, so flushing between tests never touches development data.
REDIS_DB = os.environ.get("TEST_REDIS_DB", "15")

# Every table of the models, so a new feature's table is emptied between tests without editing this file.
TABLES = tuple(f'"{table.name}"' for table in metadata.sorted_tables)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


async def _admin_execute(statement: str) -> None:
    connection = await asyncpg.connect(
        host=PG_HOST, port=int(PG_PORT), user=PG_USER, password=PG_PASSWORD, database="postgres"
    )
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def migrate(database_url: str, revision: str = "head") -> None:
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    command.upgrade(config, revision)


@pytest.fixture(scope="session")
def test_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of every app built in the tests (also handed to subprocesses)."""
    database = f"test_{uuid4().hex[:16]}"
    certs = tmp_path_factory.mktemp("certs")
    write_key_pair(certs / "jwt-private.pem", certs / "jwt-public.pem")
    env = {
        "EMBEDDED": "false",
        "ENVIRONMENT": "local",
        "POSTGRES_SERVER": PG_HOST,
        "POSTGRES_PORT": PG_PORT,
        "POSTGRES_USER": PG_USER,
        "POSTGRES_PASSWORD": PG_PASSWORD,
        "POSTGRES_DB": database,
        "DB__CREATE_TABLES_ON_START": "false",
        "REDIS_CLIENT_HOST": REDIS_HOST,
        "REDIS_CLIENT_PORT": REDIS_PORT,
        "REDIS_CLIENT_DB": REDIS_DB,
        "JWT_PRIVATE_KEY_PATH": str(certs / "jwt-private.pem"),
        "JWT_PUBLIC_KEY_PATH": str(certs / "jwt-public.pem"),
        "LOG_FILE_PATH": str(tmp_path_factory.mktemp("logs") / "app.log"),
        "LOG_LEVEL": "INFO",
    }
    asyncio.run(_admin_execute(f'CREATE DATABASE "{database}"'))
    try:
        migrate(Settings.from_env(env, env_file=None).database_url)
        yield env
    finally:
        asyncio.run(_admin_execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def settings(test_env: dict[str, str]) -> Settings:
    return Settings.from_env(test_env, env_file=None)


@pytest.fixture
def settings_with(test_env: dict[str, str]) -> Callable[..., Settings]:
    """Settings of the test run with some variables changed: ``settings_with(ENVIRONMENT="production")``."""

    def build(**overrides: str) -> Settings:
        return Settings.from_env({**test_env, **overrides}, env_file=None)

    return build


@pytest.fixture(autouse=True)
def clean_state(request: pytest.FixtureRequest) -> None:
    """Empty tables and Redis before each test that uses the services."""
    if "test_env" not in request.fixturenames:
        return
    env: dict[str, str] = request.getfixturevalue("test_env")

    async def truncate() -> None:
        connection = await asyncpg.connect(
            host=PG_HOST, port=int(PG_PORT), user=PG_USER, password=PG_PASSWORD, database=env["POSTGRES_DB"]
        )
        try:
            await connection.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        finally:
            await connection.close()

    asyncio.run(truncate())
    with redis.Redis(host=REDIS_HOST, port=int(REDIS_PORT), db=int(REDIS_DB)) as client:
        client.flushdb()


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    # https: the refresh cookie is Secure, and httpx only sends Secure cookies over https.
    async with AsyncTestClient(app, base_url="https://testserver.local") as test_client:
        yield test_client


StartServer = Callable[..., LiveServer]


@pytest.fixture
def start_server(test_env: dict[str, str], tmp_path: Path) -> Iterator[StartServer]:
    """Start real Granian servers of the app (``start_server(workers=2, ACCESS_TOKEN_EXPIRE_MINUTES="1")``).

    Each gets a free port and the test run's environment with the given variables changed; all are
    stopped when the test ends.
    """
    with ExitStack() as servers:

        def start(*, workers: int = 2, **overrides: str) -> LiveServer:
            return servers.enter_context(live_server({**test_env, **overrides}, tmp_path, workers=workers))

        yield start


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[RedisQueue]:
    """The app's job queue in the test's own event loop, to put jobs on it or read it directly."""
    redis_queue = RedisQueue.from_url(settings.redis_queue.url, name=QUEUE_NAME)
    try:
        yield redis_queue
    finally:
        await redis_queue.redis.aclose()


@pytest.fixture
async def db_session(settings: Settings) -> AsyncIterator[AsyncSession]:
    """A session in the test's own event loop (the app runs in another one), for arranging and checking rows."""
    engine = create_async_engine(settings.database_url, poolclass=NullPool)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            yield session
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


MakeUser = Callable[..., Awaitable[User]]
Login = Callable[..., Awaitable[str]]


@pytest.fixture
def make_user(db_session: AsyncSession) -> MakeUser:
    """Insert a user directly (``make_user("ann", superuser=True)``); the password is ``PASSWORD`` by default."""

    async def make(
        username: str,
        *,
        password: str = PASSWORD,
        email: str | None = None,
        superuser: bool = False,
        tier_id: int | None = None,
        hashed_password: str | None = None,
        deleted: bool = False,
    ) -> User:
        user = User(
            name=username.title(),
            username=username,
            email=email or f"{username}@example.com",
            hashed_password=hashed_password or await hash_password(password),
            is_superuser=superuser,
            tier_id=tier_id,
        )
        if deleted:
            user.mark_deleted()
        db_session.add(user)
        await db_session.commit()
        return user

    return make


@pytest.fixture
def login(client: AsyncTestClient[Litestar]) -> Login:
    """Log in through the API and return the access token (the refresh cookie lands in the client)."""

    async def log_in(username: str, password: str = PASSWORD, *, path: str = "/api/v1/login") -> str:
        response = await client.post(path, data={"username": username, "password": password})
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    return log_in


@pytest.fixture
async def ann(make_user: MakeUser) -> User:
    """A plain user, ``ann``, for the feature tests (posts, cache) that need one owner."""
    return await make_user("ann")


@pytest.fixture
async def ann_auth(ann: User, login: Login) -> dict[str, str]:
    """``ann``'s bearer header, from a real login."""
    return bearer(await login("ann"))

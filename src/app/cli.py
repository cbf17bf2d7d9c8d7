"""The project's ``litestar`` commands, added by ``app.main.CommandLinePlugin`` when the CLI starts (never in a server).

- ``litestar database …``: advanced-alchemy's migration commands on the app's database (``task migrate``);
- ``litestar run``: Granian (litestar-granian) instead of uvicorn;
- the first-run commands (SPEC §12.2), ``litestar users create-superuser`` and ``litestar tiers create``. Both are
  idempotent and reuse the services the API uses; they exit 1 with ``Error …: <reason>`` on bad input or a database
  error. ``ensure_superuser`` and ``ensure_tier`` are the same steps for ``python -m app.core.bootstrap``, which runs
  them in its own process.

``litestar workers …`` comes from the SAQ plugin itself (``app.core.queue``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import click
import msgspec
import structlog
from advanced_alchemy.cli import add_migration_commands
from advanced_alchemy.config.asyncio import SQLAlchemyAsyncConfig
from advanced_alchemy.utils.cli_tools import group
from litestar import Litestar
from litestar.cli._utils import LitestarGroup
from litestar_granian import GranianPlugin

from app.core.db import session_scope
from app.core.settings import FirstRunSettings, Settings
from app.tiers.services import TierService
from app.users.schemas import UserCreate
from app.users.services import UserService

logger = structlog.get_logger("app.cli")


# SPEC §12.2: the prefixes of the one-line failure messages, shared with ``python -m app.core.bootstrap``.
SUPERUSER_ERROR = "Error creating admin user"
TIER_ERROR = "Error creating tier"


async def ensure_superuser(
    alchemy: SQLAlchemyAsyncConfig,
    defaults: FirstRunSettings,
    *,
    name: str | None = None,
    email: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> tuple[bool, str]:
    """Create the first superuser unless that email or username exists: ``(created, line to log)``."""
    data = msgspec.convert(
        {
            "name": name or defaults.admin_name,
            "email": email or defaults.admin_email,
            "username": username or defaults.admin_username,
            "password": password or defaults.admin_password,
        },
        UserCreate,
    )
    async with session_scope(alchemy) as session:
        users = UserService(session=session)
        if await users.find_by_username_or_email(data.username, data.email) is not None:
            return False, f"Admin user {data.username} already exists."
        await users.register(data, is_superuser=True)
    return True, f"Admin user {data.username} created successfully."


async def ensure_tier(alchemy: SQLAlchemyAsyncConfig, tier_name: str) -> tuple[bool, str]:
    """Create the tier unless it exists: ``(created, line to log)``."""
    if not tier_name.strip():
        raise ValueError("the tier name must not be empty")
    async with session_scope(alchemy) as session:
        tiers = TierService(session=session)
        if await tiers.get_by_name(tier_name) is not None:
            return False, f"Tier '{tier_name}' already exists."
        await tiers.create({"name": tier_name})
    return True, f"Tier '{tier_name}' created successfully."


def _run(
    action: Callable[[SQLAlchemyAsyncConfig], Awaitable[tuple[bool, str]]], app: Litestar, error_prefix: str
) -> None:
    alchemy: SQLAlchemyAsyncConfig = app.state.alchemy

    async def run() -> str:
        try:
            _, line = await action(alchemy)
            return line
        finally:
            await alchemy.get_engine().dispose()

    try:
        line = asyncio.run(run())
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line and exit status 1
        logger.error(f"{error_prefix}: {exc}")  # noqa: G004 - the message text is fixed by SPEC §12.2
        raise SystemExit(1) from None
    logger.info(line)


@click.group(name="users", help="Manage users.")
def users_group() -> None:
    pass


@users_group.command(name="create-superuser", help="Create the first superuser (idempotent).")
@click.option("--name", help="Display name (default: ADMIN_NAME).")
@click.option("--email", help="Email (default: ADMIN_EMAIL).")
@click.option("--username", help="Username (default: ADMIN_USERNAME).")
@click.option("--password", help="Password (default: ADMIN_PASSWORD).")
@click.pass_obj
def create_superuser(
    env: object, name: str | None, email: str | None, username: str | None, password: str | None
) -> None:
    app: Litestar = env.app  # type: ignore[attr-defined]
    defaults: FirstRunSettings = app.state.settings.first_run

    def create(alchemy: SQLAlchemyAsyncConfig) -> Awaitable[tuple[bool, str]]:
        return ensure_superuser(alchemy, defaults, name=name, email=email, username=username, password=password)

    _run(create, app, SUPERUSER_ERROR)


@click.group(name="tiers", help="Manage tiers.")
def tiers_group() -> None:
    pass


@tiers_group.command(name="create", help="Create the first tier (idempotent).")
@click.option("--name", help="Tier name (default: TIER_NAME).")
@click.pass_obj
def create_tier(env: object, name: str | None) -> None:
    app: Litestar = env.app  # type: ignore[attr-defined]
    settings: Settings = app.state.settings
    tier_name = settings.first_run.tier_name if name is None else name
    _run(lambda alchemy: ensure_tier(alchemy, tier_name), app, TIER_ERROR)


# advanced-alchemy's own `database` group finds its config through its Litestar plugin, which the app does not use
# (app.core.db.DatabasePlugin); this one is the same group on the app's config, with the same commands.
@group(cls=LitestarGroup, name="database", aliases=["db"])
def database_group(ctx: click.Context, app: Litestar) -> None:
    """Manage SQLAlchemy database components."""
    ctx.obj = {"app": ctx.obj, "configs": [app.state.alchemy]}


add_migration_commands(database_group)


def add_commands(cli: click.Group) -> None:
    """The commands above on the ``litestar`` CLI (``app.main.CommandLinePlugin``)."""
    cli.add_command(database_group)
    GranianPlugin().on_cli_init(cli)
    cli.add_command(users_group)
    cli.add_command(tiers_group)

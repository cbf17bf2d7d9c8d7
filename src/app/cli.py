"""First-run commands (SPEC §12.2): ``litestar users create-superuser`` and ``litestar tiers create``.

Both are idempotent and reuse the services the API uses; they exit 1 with ``Error …: <reason>`` on bad
input or a database error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import click
import msgspec
import structlog
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from litestar import Litestar
from litestar.plugins import CLIPluginProtocol

from app.core.db import session_scope
from app.core.settings import Settings
from app.tiers.services import TierService
from app.users.schemas import UserCreate
from app.users.services import UserService

logger = structlog.get_logger("app.cli")


def _run(action: Callable[[SQLAlchemyAsyncConfig], Awaitable[None]], app: Litestar, error_prefix: str) -> None:
    alchemy: SQLAlchemyAsyncConfig = app.state.alchemy

    async def run() -> None:
        try:
            await action(alchemy)
        finally:
            await alchemy.get_engine().dispose()

    try:
        asyncio.run(run())
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line and exit status 1
        logger.error(f"{error_prefix}: {exc}")  # noqa: G004 - the message text is fixed by SPEC §12.2
        raise SystemExit(1) from None


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
    defaults = app.state.settings.first_run
    username = username or defaults.admin_username

    async def create(alchemy: SQLAlchemyAsyncConfig) -> None:
        data = msgspec.convert(
            {
                "name": name or defaults.admin_name,
                "email": email or defaults.admin_email,
                "username": username,
                "password": password or defaults.admin_password,
            },
            UserCreate,
        )
        async with session_scope(alchemy) as session:
            users = UserService(session=session)
            if await users.find_by_username_or_email(data.username, data.email) is not None:
                logger.info(f"Admin user {data.username} already exists.")  # noqa: G004
                return
            await users.register(data, is_superuser=True)
        logger.info(f"Admin user {data.username} created successfully.")  # noqa: G004

    _run(create, app, "Error creating admin user")


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

    async def create(alchemy: SQLAlchemyAsyncConfig) -> None:
        if not tier_name.strip():
            raise ValueError("the tier name must not be empty")
        async with session_scope(alchemy) as session:
            tiers = TierService(session=session)
            if await tiers.get_by_name(tier_name) is not None:
                logger.info(f"Tier '{tier_name}' already exists.")  # noqa: G004
                return
            await tiers.create({"name": tier_name})
        logger.info(f"Tier '{tier_name}' created successfully.")  # noqa: G004

    _run(create, app, "Error creating tier")


class FirstRunCLIPlugin(CLIPluginProtocol):
    def on_cli_init(self, cli: click.Group) -> None:
        cli.add_command(users_group)
        cli.add_command(tiers_group)

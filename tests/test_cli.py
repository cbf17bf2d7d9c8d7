from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.tiers.models import Tier
from app.users.models import User
from tests.helpers import run_command

pytestmark = pytest.mark.anyio

LITESTAR = str(Path(sys.executable).parent / "litestar")


def litestar(env: dict[str, str], root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_command([LITESTAR, "--app", "app.main:create_app", *args], env, root)


async def test_create_superuser_is_idempotent(
    test_env: dict[str, str], project_root: Path, db_session: AsyncSession
) -> None:
    env = {**test_env, "ADMIN_USERNAME": "boss", "ADMIN_EMAIL": "Boss@Example.COM", "ADMIN_NAME": "The Boss"}
    first = litestar(env, project_root, "users", "create-superuser")
    assert first.returncode == 0, first.stderr
    assert "Admin user boss created successfully." in first.stderr

    second = litestar(env, project_root, "users", "create-superuser")
    assert second.returncode == 0, second.stderr
    assert "Admin user boss already exists." in second.stderr

    users = (await db_session.scalars(select(User))).all()
    assert len(users) == 1
    admin = users[0]
    assert (admin.username, admin.email, admin.name) == ("boss", "Boss@example.com", "The Boss")
    assert admin.is_superuser is True
    assert admin.tier_id is None
    assert admin.hashed_password.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


async def test_create_superuser_treats_a_username_clash_as_existing(
    test_env: dict[str, str], project_root: Path, db_session: AsyncSession
) -> None:
    assert litestar(test_env, project_root, "users", "create-superuser").returncode == 0
    clash = litestar(test_env, project_root, "users", "create-superuser", "--email", "other@example.com")
    assert clash.returncode == 0, clash.stderr
    assert "Admin user admin already exists." in clash.stderr
    assert len((await db_session.scalars(select(User))).all()) == 1


def test_create_superuser_options_override_and_bad_input_exits_1(test_env: dict[str, str], project_root: Path) -> None:
    result = litestar(test_env, project_root, "users", "create-superuser", "--username", "ab", "--password", "short")
    assert result.returncode == 1
    assert "Error creating admin user:" in result.stderr
    assert "password" in result.stderr
    assert "Traceback" not in result.stderr


def test_create_superuser_without_a_database_exits_1(test_env: dict[str, str], project_root: Path) -> None:
    result = litestar(
        {**test_env, "POSTGRES_DB": "database_that_does_not_exist"}, project_root, "users", "create-superuser"
    )
    assert result.returncode == 1
    assert "Error creating admin user:" in result.stderr


async def test_create_tier_is_idempotent(
    test_env: dict[str, str], project_root: Path, db_session: AsyncSession
) -> None:
    first = litestar(test_env, project_root, "tiers", "create")
    assert first.returncode == 0, first.stderr
    assert "Tier 'free' created successfully." in first.stderr
    second = litestar(test_env, project_root, "tiers", "create")
    assert second.returncode == 0, second.stderr
    assert "Tier 'free' already exists." in second.stderr

    named = litestar(test_env, project_root, "tiers", "create", "--name", "pro")
    assert "Tier 'pro' created successfully." in named.stderr
    assert sorted((await db_session.scalars(select(Tier.name))).all()) == ["free", "pro"]


def test_create_tier_with_an_empty_name_exits_1(test_env: dict[str, str], project_root: Path) -> None:
    result = litestar({**test_env, "TIER_NAME": " "}, project_root, "tiers", "create")
    assert result.returncode == 1
    assert "Error creating tier:" in result.stderr


# --- The README's commands as written: no LITESTAR_APP, from the repository root and from src/ ---------------

PDM = shutil.which("pdm")
README_COMMANDS = [
    pytest.param(["users", "create-superuser"], "Admin user admin created successfully.", id="users create-superuser"),
    pytest.param(["tiers", "create"], "Tier 'free' created successfully.", id="tiers create"),
    pytest.param(["database", "upgrade", "--no-prompt"], "", id="database upgrade"),
    pytest.param(["--help"], "tiers", id="--help"),  # the groups of the app's CLI plugins are listed: app found
    pytest.param(["run", "--help"], "GRANIAN_", id="run --help"),  # litestar-granian's `run`, not uvicorn's
]


def readme_command(
    test_env: dict[str, str], cwd: Path, command: list[str], *args: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **test_env, "LOG_FILE_PATH": ""}
    env.pop("LITESTAR_APP", None)
    return subprocess.run(  # noqa: S603 - fixed arguments
        [*command, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(("args", "expected"), README_COMMANDS)
def test_readme_commands_work_from_src_without_litestar_app(
    test_env: dict[str, str], project_root: Path, args: list[str], expected: str
) -> None:
    result = readme_command(test_env, project_root / "src", [LITESTAR], *args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert expected in output


@pytest.mark.skipif(PDM is None, reason="pdm is not installed")
@pytest.mark.parametrize(("args", "expected"), README_COMMANDS)
def test_readme_commands_work_from_the_repository_root_with_pdm_run(
    test_env: dict[str, str], project_root: Path, args: list[str], expected: str
) -> None:
    result = readme_command(test_env, project_root, [str(PDM), "run", "litestar"], *args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert expected in output


def test_litestar_help_in_embedded_mode_shows_no_traceback(
    test_env: dict[str, str], project_root: Path, tmp_path: Path
) -> None:
    env = {key: value for key, value in test_env.items() if not key.startswith(("POSTGRES_", "REDIS_"))}
    env |= {"EMBEDDED": "true", "EMBEDDED_DATABASE_PATH": str(tmp_path / "embedded.sqlite3")}
    result = readme_command(env, project_root / "src", [LITESTAR], "--help")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "requires 'uvicorn'" not in result.stdout

"""Small helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.users.models import User

PASSWORD = "password1"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, without verifying it."""
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def header(token: str) -> dict[str, Any]:
    segment = token.split(".", maxsplit=1)[0]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return decoded


async def remove_user(db_session: AsyncSession, user: User, how: str) -> None:
    """Delete ``user`` behind the API's back: ``how`` is "soft" (flag) or "hard" (row gone)."""
    if how == "soft":
        user.mark_deleted()
    else:
        await db_session.delete(user)
    await db_session.commit()


def run_command(
    command: list[str], env: dict[str, str], cwd: Path, *, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """A real command of the project, with the test run's environment (and no log file)."""
    return subprocess.run(  # noqa: S603 - the project's own commands
        command,
        env={**os.environ, **env, "LOG_FILE_PATH": ""},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The whole output of a failed command: exactly one line and no traceback."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    return lines[0]

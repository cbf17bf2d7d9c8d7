"""Small helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import json
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

"""Authorisation levels of SPEC §1.2 beyond "a valid token": superuser and owner."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import PermissionDeniedException
from litestar.handlers import BaseRouteHandler

from app.core.errors import FORBIDDEN, NOT_ENOUGH_PRIVILEGES


def requires_superuser(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if not connection.user.is_superuser:
        raise PermissionDeniedException(NOT_ENOUGH_PRIVILEGES)


def ensure_owner(resource_username: str, caller: Any) -> None:
    """Owner check, run after the target was found (404 before 403). Superusers get no implicit owner rights."""
    if resource_username != caller.username:
        raise PermissionDeniedException(FORBIDDEN)

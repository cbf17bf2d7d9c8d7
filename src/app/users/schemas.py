"""Request and response bodies of the user routes (SPEC §2.7, §4.3)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from app.core.fields import DbId, Url, matching, text
from app.tiers.schemas import RateLimitRead

# SPEC §4.1 [Δ]: static path segments win over {username}, so these can never be usernames.
RESERVED_USERNAMES = frozenset(
    {"me", "user", "users", "tier", "tiers", "tasks", "login", "logout", "refresh", "health"}
)

_EMAIL_PATTERN = (
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)

Name = Annotated[str, text(2, 30, examples=["User Userson"])]
Username = Annotated[str, matching(r"[a-z0-9]+", min_length=2, max_length=20, examples=["userson"])]
Email = Annotated[str, matching(_EMAIL_PATTERN, max_length=50, examples=["user.userson@example.com"])]
Password = Annotated[str, text(8, 128, examples=["Str1ngst!"])]


def normalize_email(email: str) -> str:
    """Emails are stored and looked up with the domain part lowercased (SPEC §4.2, §4.3)."""
    local, _, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}" if local else email


class UserCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    username: Username
    email: Email
    password: Password


class UserUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Every field optional; ``null`` is rejected because all four columns are NOT NULL (SPEC §4.3 U5)."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    username: Username | msgspec.UnsetType = msgspec.UNSET
    email: Email | msgspec.UnsetType = msgspec.UNSET
    profile_image_url: Url | msgspec.UnsetType = msgspec.UNSET

    def to_dict(self) -> dict[str, str]:
        """Only the fields the client sent."""
        return {name: value for name in self.__struct_fields__ if (value := getattr(self, name)) is not msgspec.UNSET}


class UserRead(msgspec.Struct):
    id: int
    name: str
    username: str
    email: str
    profile_image_url: str
    tier_id: int | None


class UserTierUpdate(msgspec.Struct):
    """Unknown fields are ignored here (parity, SPEC §4.3 U10)."""

    tier_id: DbId


class UserRateLimits(UserRead):
    tier_rate_limits: list[RateLimitRead]


class UserTier(UserRead):
    tier_name: str | None
    tier_created_at: datetime | None

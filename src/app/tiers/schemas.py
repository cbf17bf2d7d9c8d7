"""Request and response bodies of the tier and rate-limit routes (SPEC §2.7, §4.5, §4.6)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from app.core.fields import DbCount, DbId, matching, text

# The spec only asks for non-empty names; the upper bound keeps every value inside a PostgreSQL btree entry
# (a UNIQUE index rejects rows over ~2 700 bytes with a 500) and is far beyond any real name or path.
NAME_MAX_LENGTH = 255

TierName = Annotated[str, text(1, NAME_MAX_LENGTH, examples=["pro"])]
RateLimitName = Annotated[str, text(1, NAME_MAX_LENGTH, examples=["api_v1_tasks_task:10:3600"])]
# SPEC §4.6: non-empty after sanitising (§5.1), i.e. at least one character that is not `/`.
RateLimitPath = Annotated[
    str, matching(r"/*[^/\x00][^\x00]*", max_length=NAME_MAX_LENGTH, examples=["/api/v1/tasks/task"])
]
# SPEC §4.6 [Δ]: 0 blocks every request; a period of 0 would divide by zero in the limiter.
Limit = Annotated[DbCount, msgspec.Meta(description="Requests per window.", examples=[10])]
Period = Annotated[DbId, msgspec.Meta(description="Window length in seconds.", examples=[3600])]


def sent_fields(body: msgspec.Struct) -> dict[str, Any]:
    """Only the fields the client sent (``msgspec.UNSET`` marks the others)."""
    return {name: value for name in body.__struct_fields__ if (value := getattr(body, name)) is not msgspec.UNSET}


class TierCreate(msgspec.Struct):
    """Unknown fields are ignored (parity, SPEC §4.5 T1)."""

    name: TierName


class TierUpdate(msgspec.Struct):
    """Unknown fields are ignored; ``null`` is rejected because the column is NOT NULL (SPEC §4.5 T4)."""

    name: TierName | msgspec.UnsetType = msgspec.UNSET

    def to_dict(self) -> dict[str, Any]:
        return sent_fields(self)


class RateLimitCreate(msgspec.Struct, forbid_unknown_fields=True):
    path: RateLimitPath
    limit: Limit
    period: Period
    name: RateLimitName | msgspec.UnsetType = msgspec.UNSET


class RateLimitUpdate(msgspec.Struct):
    """Every field optional, unknown fields ignored, ``null`` rejected (SPEC §4.6)."""

    path: RateLimitPath | msgspec.UnsetType = msgspec.UNSET
    limit: Limit | msgspec.UnsetType = msgspec.UNSET
    period: Period | msgspec.UnsetType = msgspec.UNSET
    name: RateLimitName | msgspec.UnsetType = msgspec.UNSET

    def to_dict(self) -> dict[str, Any]:
        return sent_fields(self)


class TierRead(msgspec.Struct):
    name: str
    id: int
    created_at: datetime


class RateLimitRead(msgspec.Struct):
    path: str
    limit: int
    period: int
    id: int
    tier_id: int
    name: str

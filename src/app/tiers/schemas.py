from __future__ import annotations

from datetime import datetime

import msgspec


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

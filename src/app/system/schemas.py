from __future__ import annotations

import msgspec


class HealthCheck(msgspec.Struct):
    name: str
    version: str
    description: str | None

from __future__ import annotations

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, TimestampColumns


class Tier(Base, TimestampColumns):
    __tablename__ = "tier"

    name: Mapped[str] = mapped_column(String, unique=True)


class RateLimit(Base, TimestampColumns):
    __tablename__ = "rate_limit"
    # SPEC §2.2 [Δ]: a tier has at most one limit per path.
    __table_args__ = (UniqueConstraint("tier_id", "path", name="uq_rate_limit_tier_id_path"),)

    tier_id: Mapped[int] = mapped_column(ForeignKey("tier.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    path: Mapped[str] = mapped_column(String)
    limit: Mapped[int]
    period: Mapped[int]

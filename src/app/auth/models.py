from __future__ import annotations

from datetime import datetime

from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base


class TokenBlacklist(Base):
    """A revoked token or refresh family (SPEC §2.5, §3.7); rows are useless once ``expires_at`` has passed.

    ``token`` is the token's ``jti`` — never its encoding, which has many valid spellings (e.g. with ``=``
    padding appended) — or the ``fid`` of a refresh family revoked after a replay. Both are random UUID hex.
    """

    __tablename__ = "token_blacklist"

    token: Mapped[str] = mapped_column(String, unique=True, index=True)
    expires_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))

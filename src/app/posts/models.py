from __future__ import annotations

from uuid import UUID, uuid4

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, SoftDeleteColumns, TimestampColumns

TEXT_MAX_LENGTH = 63206


class Post(Base, TimestampColumns, SoftDeleteColumns):
    __tablename__ = "post"

    created_by_user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(30))
    text: Mapped[str] = mapped_column(String(TEXT_MAX_LENGTH))
    uuid: Mapped[UUID] = mapped_column(default=uuid4, unique=True)
    media_url: Mapped[str | None] = mapped_column(String, default=None)

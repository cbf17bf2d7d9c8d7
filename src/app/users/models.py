from __future__ import annotations

from uuid import UUID, uuid4

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, SoftDeleteColumns, TimestampColumns

DEFAULT_PROFILE_IMAGE_URL = "https://profileimageurl.com"


class User(Base, TimestampColumns, SoftDeleteColumns):
    __tablename__ = "user"

    name: Mapped[str] = mapped_column(String(30))
    username: Mapped[str] = mapped_column(String(20), unique=True, index=True)
    email: Mapped[str] = mapped_column(String(50), unique=True, index=True)
    hashed_password: Mapped[str] = mapped_column(String)
    profile_image_url: Mapped[str] = mapped_column(String, default=DEFAULT_PROFILE_IMAGE_URL)
    uuid: Mapped[UUID] = mapped_column(default=uuid4, unique=True)
    is_superuser: Mapped[bool] = mapped_column(default=False)
    tier_id: Mapped[int | None] = mapped_column(ForeignKey("tier.id", ondelete="SET NULL"), index=True, default=None)

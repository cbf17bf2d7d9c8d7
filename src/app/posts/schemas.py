"""Request and response bodies of the post routes (SPEC §2.7, §4.4)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from app.core.fields import Url, text
from app.posts.models import TEXT_MAX_LENGTH

Title = Annotated[str, text(2, 30, examples=["This is my post"])]
Text = Annotated[str, text(1, TEXT_MAX_LENGTH, examples=["This is the content of my post."])]


class PostCreate(msgspec.Struct, forbid_unknown_fields=True):
    title: Title
    text: Text
    media_url: Url | None = None


class PostUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Every field optional; ``title`` and ``text`` may not be ``null``, ``media_url: null`` clears it (SPEC §4.4)."""

    title: Title | msgspec.UnsetType = msgspec.UNSET
    text: Text | msgspec.UnsetType = msgspec.UNSET
    media_url: Url | msgspec.UnsetType | None = msgspec.UNSET

    def to_dict(self) -> dict[str, Any]:
        """Only the fields the client sent."""
        return {name: value for name in self.__struct_fields__ if (value := getattr(self, name)) is not msgspec.UNSET}


class PostRead(msgspec.Struct):
    id: int
    title: str
    text: str
    media_url: str | None
    created_by_user_id: int
    created_at: datetime

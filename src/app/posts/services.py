"""Post business rules: a post is reached through its author's username, soft and hard delete (SPEC §4.4), and the
response-cache keys of the post routes (SPEC §6.3, §6.4)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast
from uuid import uuid4

import asyncpg
import msgspec
from advanced_alchemy.filters import LimitOffset, OrderBy
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from sqlalchemy import Table, bindparam, insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.cache import format_key, format_pattern, invalidate_after_commit
from app.core.db import Repository, caused_by, lock_row, utc_now
from app.core.errors import USER_NOT_FOUND
from app.core.fields import is_db_id
from app.core.rows import FastRow
from app.core.schemas import Pagination
from app.posts.models import Post
from app.posts.schemas import PostCreate, PostRead, PostUpdate
from app.users.models import User

POST_NOT_FOUND = "Post not found"

# SPEC §6.3: the cache keys of P2 (`<prefix>:<username>`) and P3 (`<prefix>:<id>`).
POST_PAGES_KEY = "{username}_posts:page_{page}:items_per_page:{items_per_page}"
POST_KEY = "{username}_post_cache"
POST_PAGES_PATTERN = "{username}_posts:*"
POSTS_PATTERN = "{username}_post_cache:*"

# P1's one statement, every value given (the model's Python-side defaults included, see `create_for`), so that it
# can be sent straight with asyncpg (`FastRow`).
_POST_TABLE = cast("Table", Post.__table__)
_INSERTED = ("created_by_user_id", "title", "text", "media_url", "uuid", "created_at", "is_deleted")
_INSERT_POST = FastRow(
    insert(_POST_TABLE)
    .values({name: bindparam(name) for name in _INSERTED})
    .returning(*(_POST_TABLE.c[field] for field in PostRead.__struct_fields__))
)


def invalidate_user_posts(session: AsyncSession, username: str) -> None:
    """SPEC §6.4 [Δ]: a user deleted or renamed takes every cached page and post of the old username with them."""
    values = {"username": username}
    invalidate_after_commit(
        session, patterns=[format_pattern(POST_PAGES_PATTERN, values), format_pattern(POSTS_PATTERN, values)]
    )


class PostService(SQLAlchemyAsyncRepositoryService[Post]):
    class Repo(Repository[Post]):
        model_type = Post

    repository_type = Repo

    async def list_of(self, author: User, pagination: Pagination) -> tuple[list[Post], int]:
        posts, total = await self.get_many_and_count(
            LimitOffset(limit=pagination.limit, offset=pagination.offset),
            OrderBy(field_name="id", sort_order="asc"),
            created_by_user_id=author.id,
            is_deleted=False,
            # SPEC §1.5: a page past the end still reports the total (a window-function count would say 0).
            count_with_window_function=False,
        )
        return list(posts), total

    async def get_of(self, author: User, post_id: int, *, include_deleted: bool = False) -> Post:
        """SPEC §4.4 [Δ]: the post must be ``author``'s; a soft-deleted one only where the route includes it."""
        post = None
        if is_db_id(post_id):
            post = await self.get_one_or_none(id=post_id, created_by_user_id=author.id)
        if post is None or (post.is_deleted and not include_deleted):
            raise NotFoundException(POST_NOT_FOUND)
        return post

    async def create_for(self, author: User, data: PostCreate) -> PostRead:
        """P1: one ``INSERT … RETURNING`` of the response's columns (no ORM object: nothing in the request uses one,
        and the unit of work's flush cost ~40 % more CPU than the statement)."""
        values = {
            "created_by_user_id": author.id,
            "title": data.title,
            "text": data.text,
            "media_url": data.media_url,
            # The model's defaults, which a statement that names every column does not apply itself.
            "uuid": uuid4(),
            "created_at": utc_now(),
            "is_deleted": False,
        }
        try:
            row = await _INSERT_POST.first(self.repository.session, values)
        except Exception as error:
            # The author's row was hard-deleted (U7) after this request's token check found it: the INSERT's
            # foreign key refuses the post, and the route answers as it would have a moment later.
            if caused_by(error, asyncpg.ForeignKeyViolationError):
                raise NotFoundException(USER_NOT_FOUND) from None
            raise
        self._invalidate(author, post=None)  # SPEC §6.4 [Δ]: the new post shows on the author's pages at once
        return msgspec.convert(dict(cast("Mapping[str, Any]", row)), PostRead)

    async def update_post(self, author: User, post: Post, data: PostUpdate) -> None:
        await self._lock(post, include_deleted=False)
        for name, value in data.to_dict().items():
            setattr(post, name, value)
        post.updated_at = utc_now()
        await self.repository.session.flush()
        self._invalidate(author, post)

    async def soft_delete(self, author: User, post: Post) -> None:
        await self._lock(post, include_deleted=False)
        post.mark_deleted()
        await self.repository.session.flush()
        self._invalidate(author, post)

    async def hard_delete(self, author: User, post: Post) -> None:
        await self._lock(post, include_deleted=True)
        await self.delete(post.id)
        self._invalidate(author, post)

    async def _lock(self, post: Post, *, include_deleted: bool) -> None:
        """``lock_row``, else the route's 404: the post is gone, or soft-deleted where the route excludes that."""
        still = [] if include_deleted else [Post.is_deleted.is_(False)]
        if not await lock_row(self.repository.session, post, *still):
            raise NotFoundException(POST_NOT_FOUND)

    def _invalidate(self, author: User, post: Post | None) -> None:
        """SPEC §6.4: the post's own key and every page of its author's list, once the write commits."""
        values = {"username": author.username}
        keys = [format_key(POST_KEY, values, post.id)] if post is not None else []
        invalidate_after_commit(
            self.repository.session, keys=keys, patterns=[format_pattern(POST_PAGES_PATTERN, values)]
        )


async def provide_posts(db_session: NamedDependency[AsyncSession]) -> PostService:
    """The ``posts`` dependency: a PostService on the request's session (and so its transaction)."""
    return PostService(session=db_session)

"""P1–P6 (SPEC §4.4): posts under their author's username; the reads cached (SPEC §6.3), creation rate limited."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from app.core.cache import cache
from app.core.db import ONE_STATEMENT
from app.core.guards import requires_superuser
from app.core.rate_limit import rate_limit
from app.core.schemas import PAGINATION_DEFAULTS, Message, Page, Pagination, to_struct
from app.core.security import BEARER, AppToken
from app.posts.schemas import PostCreate, PostRead, PostUpdate
from app.posts.services import POST_KEY, POST_PAGES_KEY, PostService, provide_posts
from app.users.models import User
from app.users.services import UserService, provide_users


async def provide_posts_after_users(users: NamedDependency[UserService]) -> PostService:
    """``posts`` on the session of ``users``, so Litestar resolves the two one after the other: dependencies of one
    level are resolved concurrently, in an anyio task group per request (~4 % of a post write's CPU here, for two
    services that only wrap the request's session)."""
    return await provide_posts(users.repository.session)


class PostController(Controller):
    # `{id:str}` with an `int` parameter, as in the rate-limit routes: a non-integer id is SPEC §1.3's 422.
    path = "/{username:str}"
    tags = ["posts"]
    dependencies = {"posts": Provide(provide_posts_after_users), "users": Provide(provide_users)}

    # One INSERT is the whole write: sent outside a transaction (no BEGIN/COMMIT round trips), see ONE_STATEMENT.
    @post("/post", guards=[rate_limit], security=BEARER, opt={ONE_STATEMENT: True})
    async def create_post(
        self,
        username: FromPath[str],
        data: JSONBody[PostCreate],
        request: Request[User, AppToken, Any],
        users: NamedDependency[UserService],
        posts: NamedDependency[PostService],
    ) -> PostRead:
        """Owner only; rate limited by the caller's tier."""
        author = await users.get_for_owner(username, request.user, include_deleted=False)
        return await posts.create_for(author, data)

    @cache(key_prefix=POST_PAGES_KEY, resource_id_name="username", expiration=60, query_defaults=PAGINATION_DEFAULTS)
    @get("/posts", exclude_from_auth=True)
    async def list_posts(
        self,
        username: FromPath[str],
        users: NamedDependency[UserService],
        posts: NamedDependency[PostService],
        pagination: NamedDependency[Pagination],
    ) -> Page[PostRead]:
        """The user's posts that are not deleted, by id (cached for 60 s)."""
        rows, total = await posts.list_of(await users.get_by_username(username), pagination)
        return pagination.page_of(rows, total, PostRead)

    @cache(key_prefix=POST_KEY, resource_id_name="id", expiration=3600)
    @get("/post/{id:str}", exclude_from_auth=True)
    async def read_post(
        self,
        username: FromPath[str],
        id: FromPath[int],
        users: NamedDependency[UserService],
        posts: NamedDependency[PostService],
    ) -> PostRead:
        """One of the user's posts (cached for an hour)."""
        return to_struct(await posts.get_of(await users.get_by_username(username), id), PostRead)

    @patch("/post/{id:str}", security=BEARER)
    async def update_post(
        self,
        username: FromPath[str],
        id: FromPath[int],
        data: JSONBody[PostUpdate],
        request: Request[User, AppToken, Any],
        users: NamedDependency[UserService],
        posts: NamedDependency[PostService],
    ) -> Message:
        """Owner only: the post must be one of `{username}`'s."""
        author = await users.get_for_owner(username, request.user, include_deleted=False)
        await posts.update_post(author, await posts.get_of(author, id), data)
        return Message("Post updated")

    @delete("/post/{id:str}", status_code=200, security=BEARER)
    async def delete_post(
        self,
        username: FromPath[str],
        id: FromPath[int],
        request: Request[User, AppToken, Any],
        users: NamedDependency[UserService],
        posts: NamedDependency[PostService],
    ) -> Message:
        """Owner only: soft delete; the row stays."""
        author = await users.get_for_owner(username, request.user, include_deleted=False)
        await posts.soft_delete(author, await posts.get_of(author, id))
        return Message("Post deleted")

    @delete("/db_post/{id:str}", status_code=200, guards=[requires_superuser], security=BEARER)
    async def erase_post(
        self,
        username: FromPath[str],
        id: FromPath[int],
        users: NamedDependency[UserService],
        posts: NamedDependency[PostService],
    ) -> Message:
        """Superuser only: delete the row for good, also of a soft-deleted post or user."""
        author = await users.get_by_username(username, include_deleted=True)
        await posts.hard_delete(author, await posts.get_of(author, id, include_deleted=True))
        return Message("Post deleted from the database")

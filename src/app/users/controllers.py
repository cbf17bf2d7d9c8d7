"""U1–U10 (SPEC §4.3)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromCookie, FromPath, JSONBody

from app.auth.cookies import expired_refresh_cookie
from app.auth.services import AuthService, provide_auth_service
from app.core.guards import requires_superuser
from app.core.schemas import Message, Page, Pagination, to_struct
from app.core.security import BEARER, AppToken
from app.tiers.schemas import RateLimitRead
from app.users.models import User
from app.users.schemas import UserCreate, UserRateLimits, UserRead, UserTier, UserTierUpdate, UserUpdate
from app.users.services import UserService, provide_users


def read_fields(user: User) -> dict[str, Any]:
    """The ``UserRead`` fields, for the bodies that extend it."""
    return msgspec.structs.asdict(to_struct(user, UserRead))


class UserController(Controller):
    tags = ["users"]
    dependencies = {
        "users": Provide(provide_users),
        "auth_service": Provide(provide_auth_service),
    }

    @post("/user", exclude_from_auth=True)
    async def register(self, data: JSONBody[UserCreate], users: NamedDependency[UserService]) -> UserRead:
        """Register a user."""
        return to_struct(await users.register(data), UserRead)

    @get("/users", exclude_from_auth=True)
    async def list_users(
        self, users: NamedDependency[UserService], pagination: NamedDependency[Pagination]
    ) -> Page[UserRead]:
        """Users that are not deleted, by id."""
        rows, total = await users.list_active(pagination)
        return pagination.page_of(rows, total, UserRead)

    @get("/user/me", security=BEARER)
    async def read_me(self, request: Request[User, AppToken, Any]) -> UserRead:
        """The caller's own profile."""
        return to_struct(request.user, UserRead)

    @get("/user/{username:str}", exclude_from_auth=True)
    async def read_user(self, username: FromPath[str], users: NamedDependency[UserService]) -> UserRead:
        return await users.get_profile(username)

    @patch("/user/{username:str}", security=BEARER)
    async def update_user(
        self,
        username: FromPath[str],
        data: JSONBody[UserUpdate],
        request: Request[User, AppToken, Any],
        users: NamedDependency[UserService],
    ) -> Message:
        """Owner only. Renaming invalidates the user's tokens: they must log in again."""
        await users.update_profile(await users.get_for_owner(username, request.user), data)
        return Message("User updated")

    @delete("/user/{username:str}", status_code=200, security=BEARER)
    async def delete_user(
        self,
        username: FromPath[str],
        request: Request[User, AppToken, Any],
        users: NamedDependency[UserService],
        auth_service: NamedDependency[AuthService],
        refresh_token: FromCookie[str | None] = None,
    ) -> Response[Message]:
        """Owner only: soft delete, then revoke the presented access token and refresh cookie."""
        await users.soft_delete(await users.get_for_owner(username, request.user))
        cookie_revoked = await auth_service.revoke_session(request.auth, refresh_token)
        return Response(Message("User deleted"), cookies=[expired_refresh_cookie()] if cookie_revoked else [])

    @delete("/db_user/{username:str}", status_code=200, guards=[requires_superuser], security=BEARER)
    async def erase_user(self, username: FromPath[str], users: NamedDependency[UserService]) -> Message:
        """Superuser only: delete the row for good; the user's posts go with it."""
        await users.hard_delete(await users.get_by_username(username, include_deleted=True))
        return Message("User deleted from the database")

    @get("/user/{username:str}/rate_limits", guards=[requires_superuser], security=BEARER)
    async def read_user_rate_limits(
        self, username: FromPath[str], users: NamedDependency[UserService]
    ) -> UserRateLimits:
        """Superuser only: the user with every rate limit of their tier."""
        user = await users.get_by_username(username, include_deleted=True)
        limits = await users.rate_limits_of(user)
        return UserRateLimits(
            **read_fields(user),
            tier_rate_limits=[to_struct(limit, RateLimitRead) for limit in limits],
        )

    @get("/user/{username:str}/tier", exclude_from_auth=True)
    async def read_user_tier(self, username: FromPath[str], users: NamedDependency[UserService]) -> UserTier:
        """The user with their tier; the tier fields are null when the user has none."""
        user = await users.get_by_username(username)
        tier = await users.tier_of(user)
        return UserTier(
            **read_fields(user),
            tier_name=tier.name if tier else None,
            tier_created_at=tier.created_at if tier else None,
        )

    @patch("/user/{username:str}/tier", guards=[requires_superuser], security=BEARER)
    async def update_user_tier(
        self, username: FromPath[str], data: JSONBody[UserTierUpdate], users: NamedDependency[UserService]
    ) -> Message:
        """Superuser only: move the user to another tier."""
        user = await users.get_by_username(username, include_deleted=True)
        await users.set_tier(user, data.tier_id)
        return Message(f"User {user.name} Tier updated")

"""User business rules: uniqueness, password hashing, soft and hard delete, tiers (SPEC §4.3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from advanced_alchemy.exceptions import ErrorMessages
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, NotFoundException
from sqlalchemy import ColumnElement, Row, bindparam, exists, false, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import Repository, lock_row, save_unique, utc_now
from app.core.errors import USER_NOT_AUTHENTICATED, USER_NOT_FOUND, UnprocessableError
from app.core.fields import storable
from app.core.guards import ensure_owner
from app.core.passwords import hash_password
from app.core.rows import FastRow, is_autocommit
from app.core.schemas import Pagination
from app.posts.services import invalidate_user_posts
from app.tiers.models import RateLimit, Tier
from app.users.models import User
from app.users.schemas import RESERVED_USERNAMES, UserCreate, UserRead, UserUpdate, normalize_email

TIER_NOT_FOUND = "Tier not found"
EMAIL_TAKEN = "Email is already registered"
USERNAME_TAKEN = "Username not available"


def named(identifier: str) -> ColumnElement[bool]:
    """The user a login name or a token's ``sub`` names (SPEC §3.5, §4.2): an ``@`` means the email
    (stored with the domain lowercased), anything else the username."""
    if "@" in identifier:
        return User.email == normalize_email(identifier)
    return User.username == identifier


# U4 is the hottest public read: one statement, built once, of only the response's columns, read into the response
# without an ORM object and sent straight with asyncpg (`FastRow`). The routes that go on to use the user (owner
# checks, writes, tiers) load the whole row. Table columns, not the model's attributes: a Core statement skips the
# ORM's compile and loading steps (measured ~20 % less CPU per statement, U2 below).
_USERS = User.__table__.c
_PROFILE_COLUMNS = tuple(_USERS[field] for field in UserRead.__struct_fields__)
_PROFILE_BY_USERNAME = FastRow(
    select(*_PROFILE_COLUMNS).where(_USERS.username == bindparam("username"), _USERS.is_deleted.is_(False))
)
# U2, the same way: one page of profiles and, in the same statement, the count of all of them (PostgreSQL runs
# the uncorrelated subquery once). Only a page past the end, which has no row to carry it, counts on its own.
_ACTIVE_COUNT = select(func.count()).select_from(User.__table__).where(_USERS.is_deleted.is_(False))
_ACTIVE_PAGE = (
    select(*_PROFILE_COLUMNS, _ACTIVE_COUNT.scalar_subquery().label("total_count"))
    .where(_USERS.is_deleted.is_(False))
    .order_by(_USERS.id)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)


class UserService(SQLAlchemyAsyncRepositoryService[User]):
    class Repo(Repository[User]):
        model_type = User
        # `self.get(id)` on a missing row answers this 404 (app.core.errors maps the error).
        error_messages: ErrorMessages | None = {"not_found": USER_NOT_FOUND}

    repository_type = Repo

    async def get_by_username(self, username: str, *, include_deleted: bool = False) -> User:
        filters: dict[str, Any] = (
            {"username": username} if include_deleted else {"username": username, "is_deleted": False}
        )
        user = await self.get_one_or_none(**filters) if storable(username) else None
        if user is None:
            raise NotFoundException(USER_NOT_FOUND)
        return user

    async def get_profile(self, username: str) -> UserRead:
        """U4: the profile of a user that is not deleted, else 404."""
        row = None
        if storable(username):
            row = await _PROFILE_BY_USERNAME.first(self.repository.session, {"username": username})
        if row is None:
            raise NotFoundException(USER_NOT_FOUND)
        return msgspec.convert(dict(row), UserRead)

    async def get_for_owner(self, username: str, caller: User, *, include_deleted: bool = True) -> User:
        """Owner routes (SPEC §1.2): 404 when there is no such user (soft-deleted included unless
        ``include_deleted=False``, as on the post routes), then 403 when it is not the caller."""
        session = self.repository.session
        if username == caller.username and (caller in session or is_autocommit(session)):
            # The token check loaded the caller in this session moments ago, existing and not deleted (SPEC §3.5
            # check 6): the lookup would return this same row (in a transaction, this same object; outside one,
            # nothing changes it through the ORM). One statement less per write.
            return caller
        user = await self.get_by_username(username, include_deleted=include_deleted)
        ensure_owner(user.username, caller)
        return user

    async def get_for_login(self, username_or_email: str) -> User | None:
        """SPEC §4.2 A1: soft-deleted users cannot log in; a name that cannot be stored names nobody."""
        if not storable(username_or_email):
            return None
        return await self.get_one_or_none(named(username_or_email), User.is_deleted.is_(False))

    async def list_active(self, pagination: Pagination) -> tuple[Sequence[Row[Any]], int]:
        """U2: one page of the profiles of users that are not deleted, by id, and how many there are."""
        session = self.repository.session
        rows = (await session.execute(_ACTIVE_PAGE, {"limit": pagination.limit, "offset": pagination.offset})).all()
        total = rows[0].total_count if rows else await session.scalar(_ACTIVE_COUNT)
        return rows, int(total or 0)

    async def _reject_taken(self, *, username: str | None, email: str | None, email_first: bool) -> None:
        """The 422 of the first of ``username`` (reserved included) and ``email`` that is taken, in the route's
        order (``None``: not checked); soft-deleted users keep theirs (SPEC §2.6).

        One statement, so one snapshot: a concurrent request that commits in between cannot make a later check
        answer where an earlier one would have (SPEC §1.3: a race's loser answers as its pre-check would now).
        """
        username_taken = true() if username in RESERVED_USERNAMES else exists().where(User.username == username)
        checks = [
            (EMAIL_TAKEN, false() if email is None else exists().where(User.email == email)),
            (USERNAME_TAKEN, false() if username is None else username_taken),
        ]
        if not email_first:
            checks.reverse()
        row = (await self.repository.session.execute(select(*(check for _, check in checks)))).one()
        for (detail, _), taken in zip(checks, row, strict=True):
            if taken:
                raise UnprocessableError(detail)

    async def find_by_username_or_email(self, username: str, email: str) -> User | None:
        statement = select(User).where(or_(User.username == username, User.email == normalize_email(email)))
        return await self.get_one_or_none(statement=statement)

    async def register(self, data: UserCreate, *, is_superuser: bool = False) -> User:
        email = normalize_email(data.email)
        await self._reject_taken(username=data.username, email=email, email_first=True)
        user = User(
            name=data.name,
            username=data.username,
            email=email,
            hashed_password=await hash_password(data.password),
            is_superuser=is_superuser,
        )
        if not await save_unique(self.repository.session, lambda: self.repository.session.add(user)):
            await self._reject_taken(username=data.username, email=email, email_first=True)  # a concurrent one won
            raise UnprocessableError(USERNAME_TAKEN)
        return user

    async def update_profile(self, user: User, data: UserUpdate) -> None:
        """Only fields that are present and changed are checked for uniqueness (SPEC §4.3 U5)."""
        await self._lock_caller(user)
        changes = data.to_dict()
        if "email" in changes:
            changes["email"] = normalize_email(changes["email"])
        new_username = changes["username"] if changes.get("username", user.username) != user.username else None
        new_email = changes["email"] if changes.get("email", user.email) != user.email else None
        if new_username is not None or new_email is not None:
            await self._reject_taken(username=new_username, email=new_email, email_first=False)
        old_username = user.username

        def apply() -> None:
            for name, value in changes.items():
                setattr(user, name, value)
            user.updated_at = utc_now()

        if not await save_unique(self.repository.session, apply):
            await self._reject_taken(username=new_username, email=new_email, email_first=False)  # a concurrent one won
            raise UnprocessableError(USERNAME_TAKEN)
        if new_username is not None:
            invalidate_user_posts(self.repository.session, old_username)

    async def soft_delete(self, user: User) -> None:
        await self._lock_caller(user)
        user.mark_deleted()
        await self.repository.session.flush()
        invalidate_user_posts(self.repository.session, user.username)

    async def hard_delete(self, user: User) -> None:
        """The user's posts go with the row (ON DELETE CASCADE). A concurrent delete that won answers 404."""
        if not await lock_row(self.repository.session, user):
            raise NotFoundException(USER_NOT_FOUND)
        username = user.username
        await self.delete(user.id)
        invalidate_user_posts(self.repository.session, username)

    async def _lock_caller(self, user: User) -> None:
        """The owner routes (U5, U6) change the caller: a concurrent U6 or U7 that removed them first leaves this
        request where one sent after it would be, with a token that no longer authenticates (SPEC §3.5 check 6)."""
        if not await lock_row(self.repository.session, user, User.is_deleted.is_(False)):
            raise NotAuthorizedException(USER_NOT_AUTHENTICATED)

    async def tier_of(self, user: User) -> Tier | None:
        if user.tier_id is None:
            return None
        tier: Tier | None = await self.repository.session.get(Tier, user.tier_id)
        return tier

    async def rate_limits_of(self, user: User) -> list[RateLimit]:
        if user.tier_id is None:
            return []
        statement = select(RateLimit).where(RateLimit.tier_id == user.tier_id).order_by(RateLimit.id)
        return list((await self.repository.session.scalars(statement)).all())

    async def set_tier(self, user: User, tier_id: int) -> None:
        if await self.repository.session.get(Tier, tier_id) is None:
            raise NotFoundException(TIER_NOT_FOUND)
        user.tier_id = tier_id
        user.updated_at = utc_now()
        await self.repository.session.flush()


# Every service has a `provide_<name>` beside it, registered as `Provide(provide_<name>)`: a plain coroutine on the
# request's `db_session` (advanced-alchemy's `create_service_provider` wraps the same in an async generator whose
# set-up and clean-up cost ~15 % of a write request).
async def provide_users(db_session: NamedDependency[AsyncSession]) -> UserService:
    """The ``users`` dependency: a UserService on the request's session (and so its transaction)."""
    return UserService(session=db_session)

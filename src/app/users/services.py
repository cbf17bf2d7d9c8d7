"""User business rules: uniqueness, password hashing, soft delete (SPEC §4.3)."""

from __future__ import annotations

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import or_, select

from app.core.passwords import hash_password
from app.users.models import User
from app.users.schemas import RESERVED_USERNAMES, UserCreate, normalize_email


class UserService(SQLAlchemyAsyncRepositoryService[User]):
    class Repo(SQLAlchemyAsyncRepository[User]):
        model_type = User

    repository_type = Repo

    async def email_taken(self, email: str) -> bool:
        """Soft-deleted users keep their email (SPEC §2.6)."""
        return await self.exists(email=normalize_email(email))

    async def username_available(self, username: str) -> bool:
        return username not in RESERVED_USERNAMES and not await self.exists(username=username)

    async def find_by_username_or_email(self, username: str, email: str) -> User | None:
        statement = select(User).where(or_(User.username == username, User.email == normalize_email(email)))
        return await self.get_one_or_none(statement=statement)

    async def register(self, data: UserCreate, *, is_superuser: bool = False) -> User:
        user = User(
            name=data.name,
            username=data.username,
            email=normalize_email(data.email),
            hashed_password=await hash_password(data.password),
            is_superuser=is_superuser,
        )
        return await self.create(user)

"""Login, refresh rotation, logout and the token blacklist (SPEC §3, §4.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from advanced_alchemy.exceptions import IntegrityError as RepositoryIntegrityError
from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from sqlalchemy import delete, exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import TokenBlacklist
from app.core.db import caused_by, utc_now
from app.core.passwords import verify_password
from app.core.security import AppToken, IssuedToken, TokenCodec, UserLoader
from app.users.models import User
from app.users.schemas import normalize_email
from app.users.services import UserService

logger = structlog.get_logger("app.auth")


class BlacklistService(SQLAlchemyAsyncRepositoryService[TokenBlacklist]):
    class Repo(SQLAlchemyAsyncRepository[TokenBlacklist]):
        model_type = TokenBlacklist

    repository_type = Repo

    async def any_blacklisted(self, *tokens: AppToken) -> bool:
        statement = select(exists().where(TokenBlacklist.token.in_([token.encoded for token in tokens])))
        return bool(await self.repository.session.scalar(statement))

    async def revoke(self, token: AppToken) -> bool:
        """Blacklist ``token`` until its expiry; ``False`` if it already was (e.g. a concurrent request won)."""
        session = self.repository.session
        try:
            async with session.begin_nested():
                session.add(TokenBlacklist(token=token.encoded, expires_at=token.exp))
                await session.flush()
        except (IntegrityError, RepositoryIntegrityError) as error:
            if not caused_by(error, IntegrityError):  # e.g. a lost connection, reported as 503
                raise
            return False
        return True

    async def purge_expired(self) -> int:
        """Rows past ``expires_at`` can never match a usable token (SPEC §3.7)."""
        result = await self.repository.session.execute(
            delete(TokenBlacklist).where(TokenBlacklist.expires_at < utc_now())
        )
        return int(getattr(result, "rowcount", 0) or 0)


async def load_active_user(session: AsyncSession, token: AppToken) -> User | None:
    """Checks 1 and 6 of SPEC §3.5 in one query: the token is not blacklisted and its user is active.

    This keeps an authenticated request at one database query before the handler, and revocation can
    never fail open: the blacklist is read from the same database that stores it.
    """
    subject = User.email == normalize_email(token.sub) if "@" in token.sub else User.username == token.sub
    blacklisted = exists().where(TokenBlacklist.token == token.encoded)
    row = (await session.execute(select(User, blacklisted).where(subject, User.is_deleted.is_(False)))).first()
    if row is None or row[1]:
        return None
    user: User = row[0]
    return user


def request_user_loader(alchemy: SQLAlchemyAsyncConfig) -> UserLoader:
    """The authentication middleware's user lookup, in the request's own session (and transaction)."""

    async def load(connection: ASGIConnection[Any, Any, Any, Any], token: AppToken) -> User | None:
        return await load_active_user(alchemy.provide_session(connection.app.state, connection.scope), token)

    return load


@dataclass(frozen=True, slots=True)
class TokenPair:
    access: IssuedToken
    refresh: IssuedToken


class AuthService:
    def __init__(self, session: AsyncSession, codec: TokenCodec) -> None:
        self.session = session
        self.codec = codec
        self.users = UserService(session=session)
        self.blacklist = BlacklistService(session=session)

    def issue(self, user: User) -> TokenPair:
        # SPEC §3.2: `sub` is always the username, even after a login by email.
        return TokenPair(self.codec.issue(user.username, "access"), self.codec.issue(user.username, "refresh"))

    async def login(self, username_or_email: str, password: str) -> TokenPair | None:
        user = await self.users.get_for_login(username_or_email)
        # An unknown account still costs one verification, so timing does not reveal whether it exists.
        valid, upgraded_hash = await verify_password(password, user.hashed_password if user else None)
        if user is None or not valid:
            return None
        if upgraded_hash is not None:  # a legacy bcrypt hash becomes Argon2id transparently
            user.hashed_password = upgraded_hash
            await self.session.flush()
        return self.issue(user)

    async def refresh(self, encoded: str) -> TokenPair | None:
        """SPEC §4.2 A2: rotation — the presented refresh token is blacklisted as the new pair is issued."""
        token = self.codec.decode(encoded, "refresh")
        if token is None:
            return None
        user = await load_active_user(self.session, token)
        if user is None:
            if await self.blacklist.any_blacklisted(token):
                logger.warning("rotated refresh token presented again: possible replay", sub=token.sub, jti=token.jti)
            return None
        if not await self.blacklist.revoke(token):
            logger.warning("refresh token rotated concurrently: possible replay", sub=token.sub, jti=token.jti)
            return None
        return self.issue(user)

    async def logout(self, access_encoded: str, refresh_encoded: str) -> bool:
        """SPEC §4.2 A3: both tokens must pass checks 1–5 for their type; both are then blacklisted."""
        access = self.codec.decode(access_encoded, "access")
        refresh = self.codec.decode(refresh_encoded, "refresh")
        if access is None or refresh is None or await self.blacklist.any_blacklisted(access, refresh):
            return False
        return await self.blacklist.revoke(access) and await self.blacklist.revoke(refresh)

    async def revoke_session(self, access: AppToken, refresh_encoded: str | None) -> bool:
        """Account deletion (SPEC §4.3 U6): revoke the presented access token and, if valid, the refresh cookie.

        Returns whether the refresh cookie was revoked (and so must be expired).
        """
        await self.blacklist.revoke(access)
        refresh = self.codec.decode(refresh_encoded, "refresh") if refresh_encoded else None
        if refresh is None or await self.blacklist.any_blacklisted(refresh):
            return False
        return await self.blacklist.revoke(refresh)


def provide_auth_service(
    db_session: NamedDependency[AsyncSession], token_codec: NamedDependency[TokenCodec]
) -> AuthService:
    """Dependency provider: the service shares the request's session (and so its transaction)."""
    return AuthService(db_session, token_codec)

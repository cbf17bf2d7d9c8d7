"""Login, refresh rotation with refresh families, logout and the token blacklist (SPEC §3, §4.2)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import uuid4

import structlog
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from sqlalchemy import ColumnElement, bindparam, delete, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.util import identity_key

from app.auth.models import TokenBlacklist
from app.core.db import AlchemyConfig, Repository, save_unique, utc_now
from app.core.metrics import record_refresh_reuse
from app.core.passwords import verify_password
from app.core.rows import FastRow, is_autocommit
from app.core.security import (
    AppToken,
    IssuedToken,
    TokenCodec,
    TokenKind,
    TokenRejected,
    UserLoader,
    log_rejection,
)
from app.users.models import User
from app.users.schemas import normalize_email
from app.users.services import UserService

logger = structlog.get_logger("app.auth")


class BlacklistService(SQLAlchemyAsyncRepositoryService[TokenBlacklist]):
    """``token_blacklist`` holds the ``jti`` of every revoked token and the id of every revoked refresh family."""

    class Repo(Repository[TokenBlacklist]):
        model_type = TokenBlacklist

    repository_type = Repo

    async def revoked_keys(self, *tokens: AppToken) -> set[str]:
        """Which of the tokens' ``jti``/``fid`` values are blacklisted."""
        keys = [key for token in tokens for key in token.revocation_keys]
        statement = select(TokenBlacklist.token).where(TokenBlacklist.token.in_(keys))
        return set((await self.repository.session.scalars(statement)).all())

    async def revoke(self, key: str, expires_at: datetime) -> bool:
        """Blacklist ``key`` until ``expires_at``; ``False`` if it already was (e.g. a concurrent request won)."""
        session = self.repository.session
        return await save_unique(session, lambda: session.add(TokenBlacklist(token=key, expires_at=expires_at)))

    async def revoke_token(self, token: AppToken) -> bool:
        return await self.revoke(str(token.jti), token.exp)

    async def purge_expired(self) -> int:
        """Rows past ``expires_at`` can never match a usable token (SPEC §3.7)."""
        result = await self.repository.session.execute(
            delete(TokenBlacklist).where(TokenBlacklist.expires_at < utc_now())
        )
        return int(getattr(result, "rowcount", 0) or 0)


def _token_user_statement(subject: ColumnElement[str]) -> FastRow:
    revoked = exists().where(or_(TokenBlacklist.token == bindparam("jti"), TokenBlacklist.token == bindparam("fid")))
    users = User.__table__.c
    return FastRow(
        select(*users, revoked.label(_REVOKED)).where(
            users.id == bindparam("uid"), subject == bindparam("sub"), users.is_deleted.is_(False)
        )
    )


# Built once: this query runs on every authenticated request, and building it per request cost ~10 % of one.
_REVOKED = "revoked"
_TOKEN_USER_BY_USERNAME = _token_user_statement(User.__table__.c.username)
_TOKEN_USER_BY_EMAIL = _token_user_statement(User.__table__.c.email)


async def token_user(session: AsyncSession | AsyncEngine, token: AppToken) -> User:
    """Checks 5 and 6 of SPEC §3.5 in one query: neither the token nor its family is blacklisted, and its
    user exists, is not soft-deleted, is named by ``sub`` and has the id ``uid``; else ``TokenRejected``.

    This keeps an authenticated request at one database query before the handler, and revocation can
    never fail open: the blacklist is read from the same database that stores it. Given an engine (a request
    outside a transaction, see ``request_user_loader``), the user is returned without a session.
    """
    # `sub` names the user like a login name does (`named()`): an `@` means the email.
    by_email = "@" in token.sub
    statement = _TOKEN_USER_BY_EMAIL if by_email else _TOKEN_USER_BY_USERNAME
    jti = str(token.jti)
    parameters = {
        "uid": token.uid,
        "sub": normalize_email(token.sub) if by_email else token.sub,
        "jti": jti,
        "fid": token.fid or jti,
    }
    columns = await statement.first(session, parameters)
    if columns is None:
        raise TokenRejected("unknown user")
    if columns[_REVOKED]:
        raise TokenRejected("revoked")
    user = User(**{name: value for name, value in columns.items() if name != _REVOKED})
    if isinstance(session, AsyncSession) and not is_autocommit(session):
        # A write: the user joins the session as loaded, so the handler's own lookups and changes of it need no
        # statement (GET and HEAD only read it).
        make_transient_to_detached(user)
        loaded: User | None = session.identity_map.get(identity_key(User, user.id))
        if loaded is not None:
            return loaded  # already in this session: the ORM would also answer that object
        session.add(user)
    return user


async def load_active_user(session: AsyncSession, token: AppToken) -> User | None:
    try:
        return await token_user(session, token)
    except TokenRejected:
        return None


def request_user_loader(alchemy: AlchemyConfig) -> UserLoader:
    """The authentication middleware's user lookup, in the request's own session inside its transaction for a
    write, so the handler can reuse the user it loads. Outside a transaction (GET and HEAD, ``ONE_STATEMENT``) the
    lookup needs no session: it reads through the AUTOCOMMIT engine, and the request makes a session only if its
    handler asks for one. Creating and closing that unused session cost ``/user/me/`` 2-6 % of its server CPU."""

    async def load(connection: ASGIConnection[Any, Any, Any, Any], token: AppToken) -> User:
        scope = connection.scope
        engine = alchemy.sessionless_engine(scope)
        return await token_user(engine or alchemy.provide_session(connection.app.state, scope), token)

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

    def issue(self, user: User, *, family: str) -> TokenPair:
        # SPEC §3.2: `sub` is always the username, even after a login by email; `uid` binds the token to the row.
        return TokenPair(
            self.codec.issue(user.username, user.id, "access", family=family),
            self.codec.issue(user.username, user.id, "refresh", family=family),
        )

    async def login(self, username_or_email: str, password: str) -> TokenPair | None:
        user = await self.users.get_for_login(username_or_email)
        # An unknown account still costs one verification, so timing does not reveal whether it exists.
        valid, upgraded_hash = await verify_password(password, user.hashed_password if user else None)
        if user is None or not valid:
            return None
        if upgraded_hash is not None:  # a legacy bcrypt hash becomes Argon2id transparently
            user.hashed_password = upgraded_hash
            await self.session.flush()
        return self.issue(user, family=uuid4().hex)  # every login starts a refresh family

    async def refresh(self, encoded: str) -> TokenPair | None:
        """SPEC §4.2 A2: rotation — the presented refresh token is blacklisted as the new pair is issued.

        A refresh token is used once. When it comes back — later or in a concurrent request — that is a
        replay (SPEC §3.7): its whole family is revoked, so the thief and the victim cannot both keep a
        session alive. Clients refresh single-flight (one refresh at a time per session).
        """
        token = self.codec.decode(encoded, "refresh")
        if token is None:
            return None
        revoked = await self.blacklist.revoked_keys(token)
        if revoked:
            log_rejection("revoked", kind="refresh", user_id=token.uid)
        if token.fid in revoked:
            return None
        if token.jti in revoked:
            await self._revoke_family(token)
            return None
        user = await load_active_user(self.session, token)
        if user is None:
            return None
        if not await self.blacklist.revoke_token(token):
            # A concurrent request with the same token rotated it first: this is a second use all the same.
            await self._revoke_family(token)
            return None
        return self.issue(user, family=token.fid or uuid4().hex)

    async def _revoke_family(self, token: AppToken) -> None:
        record_refresh_reuse()
        logger.warning(
            "rotated refresh token presented again: possible replay, its family is revoked",
            user_id=token.uid,
            jti=token.jti,
            family=token.fid,
        )
        if token.fid is None:
            return
        # Every token of the family expires within one refresh lifetime from now.
        await self.blacklist.revoke(token.fid, utc_now() + self.codec.lifetimes["refresh"])
        # The 401 that follows rolls the request's transaction back (SPEC §1.6); the revocation must outlive it.
        await self.session.commit()

    async def logout(self, access_encoded: str, refresh_encoded: str) -> bool:
        """SPEC §4.2 A3: both tokens must pass checks 1–5 for their type; both are then blacklisted."""
        access = self.codec.decode(access_encoded, "access")
        refresh = self.codec.decode(refresh_encoded, "refresh")
        if access is None or refresh is None:
            return False
        if revoked := await self.blacklist.revoked_keys(access, refresh):
            kind: TokenKind = "access" if revoked & set(access.revocation_keys) else "refresh"
            log_rejection("revoked", kind=kind, user_id=access.uid)
            return False
        return await self.blacklist.revoke_token(access) and await self.blacklist.revoke_token(refresh)

    async def revoke_session(self, access: AppToken, refresh_encoded: str | None) -> bool:
        """Account deletion (SPEC §4.3 U6): revoke the presented access token and, if valid, the refresh cookie.

        Returns whether the refresh cookie was revoked (and so must be expired).
        """
        await self.blacklist.revoke_token(access)
        refresh = self.codec.decode(refresh_encoded, "refresh") if refresh_encoded else None
        if refresh is None:
            return False
        if await self.blacklist.revoked_keys(refresh):
            log_rejection("revoked", kind="refresh", user_id=refresh.uid)
            return False
        return await self.blacklist.revoke_token(refresh)


async def provide_auth_service(
    db_session: NamedDependency[AsyncSession], token_codec: NamedDependency[TokenCodec]
) -> AuthService:
    """The ``auth_service`` dependency: it shares the request's session (and so its transaction)."""
    return AuthService(db_session, token_codec)

"""Database plumbing shared by every feature: declarative base, common columns, engine configuration."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, ClassVar

import msgspec
import structlog
from advanced_alchemy.base import IdentityBase, orm_registry
from advanced_alchemy.config.asyncio import AlembicAsyncConfig, AsyncSessionConfig, SQLAlchemyAsyncConfig
from advanced_alchemy.config.engine import EngineConfig
from advanced_alchemy.repository import ModelT, SQLAlchemyAsyncRepository
from advanced_alchemy.types import DateTimeUTC
from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.datastructures import MutableScopeHeaders, State
from litestar.di import Provide
from litestar.plugins import InitPluginProtocol
from litestar.types import BeforeMessageSendHookHandler, HTTPResponseStartEvent, Message, Scope
from sqlalchemy import ColumnElement, Select, event, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from app.core.settings import PROJECT_ROOT, Settings

logger = structlog.get_logger("app.db")

MIGRATIONS_DIR = PROJECT_ROOT / "src" / "app" / "migrations"
ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"


def utc_now() -> datetime:
    return datetime.now(UTC)


class Base(IdentityBase):
    """Integer identity primary key (SPEC §2); every model sets its singular ``__tablename__``."""

    __abstract__ = True


metadata = orm_registry.metadata


class Repository(SQLAlchemyAsyncRepository[ModelT]):
    """advanced-alchemy's repository, each feature's base (``class Repo(Repository[Thing])``). A service, and so its
    repository, is made per request; the base ``select(model)`` it starts from is built once per model instead (it
    was ~3 % of a one-statement read's CPU). A ``Select`` is immutable: every query builds on a copy."""

    _base_statements: ClassVar[dict[type[Any], Select[Any]]] = {}

    def __init__(self, *, statement: Select[Any] | None = None, **kwargs: Any) -> None:
        if statement is None:
            statement = self._base_statements.get(self.model_type)
            if statement is None:
                statement = self._base_statements.setdefault(self.model_type, select(self.model_type))
        super().__init__(statement=statement, **kwargs)


class TimestampColumns:
    """SPEC §2: ``created_at`` set on insert, ``updated_at`` NULL until the first update."""

    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utc_now, sort_order=3001)
    updated_at: Mapped[datetime | None] = mapped_column(
        DateTimeUTC(timezone=True), default=None, onupdate=utc_now, sort_order=3002
    )


class SoftDeleteColumns:
    """SPEC §2.6: deleting sets the flag and the time; the row stays."""

    deleted_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None, sort_order=3003)
    is_deleted: Mapped[bool] = mapped_column(default=False, index=True, sort_order=3004)

    def mark_deleted(self) -> None:
        self.is_deleted = True
        self.deleted_at = utc_now()


def caused_by(error: BaseException, kinds: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
    """Whether ``error`` or anything in its cause chain is one of ``kinds``.

    advanced-alchemy re-raises driver errors as its own types (a closed connection becomes its
    ``IntegrityError``), so the original error is only visible in the chain.
    """
    return any(isinstance(cause, kinds) for cause in _causes(error))


def _causes(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def is_unique_violation(error: BaseException) -> bool:
    """Whether a database error is a UNIQUE constraint rejecting a row (PostgreSQL or SQLite)."""
    for cause in _causes(error):
        if getattr(cause, "sqlstate", None) == "23505":  # PostgreSQL unique_violation
            return True
        if isinstance(cause, sqlite3.IntegrityError) and str(cause).startswith("UNIQUE constraint failed"):
            return True
    return False


async def save_unique(session: AsyncSession, apply: Callable[[], None]) -> bool:
    """Apply a change and flush it in a savepoint; ``False`` when a UNIQUE constraint rejected it.

    SPEC §1.3: a concurrent request can win the race between a service's pre-check and its write. The
    savepoint keeps the request's transaction usable, so the caller can still answer the pre-check's 422
    (or treat the row as already there). Any other error propagates unchanged.
    """
    try:
        async with session.begin_nested():
            apply()
            await session.flush()
    except IntegrityError as error:
        if not is_unique_violation(error):
            raise
        return False
    return True


async def lock_row(session: AsyncSession, row: Base, *still: ColumnElement[bool]) -> bool:
    """Lock ``row`` for this transaction before changing it; ``False`` if it is gone or no longer matches ``still``.

    The lookup that found ``row`` did not lock it: a concurrent request may have changed or deleted it since.
    ``FOR UPDATE`` waits for that request to commit, and PostgreSQL then re-checks the conditions against the row as
    committed, so of two racing writes the second answers as if sent after the first (never a 500 from an UPDATE
    or DELETE that finds no row).
    """
    model = type(row)
    statement = select(model.id).where(model.id == row.id, *still).with_for_update()
    return await session.scalar(statement) is not None


# Any constant: identifies "creating the tables" among PostgreSQL advisory locks.
CREATE_ALL_LOCK = 0x4C69_7465_7374


# RFC 9110 §9.2.1: requests that must not change anything. No GET or HEAD route writes (a write there would not
# be atomic: each statement commits on its own).
SAFE_METHODS = frozenset({"GET", "HEAD"})
_AUTOCOMMIT = "autocommit"  # the ``Session.info`` flag of a session outside a transaction

ONE_STATEMENT = "one_statement"
"""Route ``opt`` flag of a write whose only change is one statement, its last (P1's ``INSERT … RETURNING``): its
session runs outside a transaction like a GET's, since a single statement is atomic on its own; the BEGIN and COMMIT
round trips around it are saved. Nothing after that statement may fail, or the client would get an error for a row
that is stored (mapping the returned row to the response is fine); the cache invalidation still runs once it is in."""


# Where the app keeps the database (advanced-alchemy's names): the engine and the session maker in the app's state,
# the request's session in the request's scope state (a copy per request), the dependency that hands it out.
ENGINE_STATE_KEY = "db_engine"
SESSION_MAKER_STATE_KEY = "session_maker_class"
SESSION_DEPENDENCY = "db_session"
_REQUEST_SESSION = "_db_session"


def request_session(scope: Scope, *, pop: bool = False) -> AsyncSession | None:
    """The session a request opened, if any (``pop``: and forget it)."""
    state = scope.setdefault("state", {})
    session: AsyncSession | None = state.pop(_REQUEST_SESSION, None) if pop else state.get(_REQUEST_SESSION)
    return session


class AlchemyConfig(SQLAlchemyAsyncConfig):
    """advanced-alchemy's framework-agnostic config, with read-only requests outside a transaction and workers
    taking turns to create missing tables (DB__CREATE_TABLES_ON_START).

    A request's session is created by whoever needs it first (the auth middleware's token check in a write, a
    guard, a handler's dependency); outside a transaction the token check reads without one
    (``sessionless_engine``). For GET and HEAD the session is bound to an AUTOCOMMIT view of the engine (same
    pool): asyncpg then sends no BEGIN before the first statement and no COMMIT after the last, so a
    one-statement read is one round trip instead of three. That gives up nothing under PostgreSQL's READ
    COMMITTED, where every statement takes its own snapshot inside a transaction too. So is a write route flagged
    ``ONE_STATEMENT``; every other write keeps one transaction per request. SQLite (embedded mode) sends no BEGIN
    before a read anyway and keeps the plain session.

    Granian starts its workers at once: two ``create_all`` on an empty PostgreSQL database would create the
    same table, and one worker would crash on a unique violation in ``pg_type``.
    """

    def sessionless_engine(self, scope: Scope) -> AsyncEngine | None:
        """The AUTOCOMMIT engine a request outside a transaction can read through without a session (``FastRow``),
        while it has none: the auth middleware's token check on a GET needs no session of its own, and a handler that
        needs one still gets it (``provide_session``). ``None`` on SQLite, in a transaction, or once a session exists.
        """
        if self._autocommit_engine is None or request_session(scope) is not None or not _outside_transaction(scope):
            return None
        return self._autocommit_engine

    def provide_session(self, state: State, scope: Scope) -> AsyncSession:
        session = request_session(scope)
        if session is not None:
            return session
        session_maker: async_sessionmaker[AsyncSession] = state[SESSION_MAKER_STATE_KEY]
        if self._autocommit_engine is not None and _outside_transaction(scope):
            # SQLAlchemy's way to one session's isolation level: its own bind, a view of the engine with the option.
            session = session_maker(bind=self._autocommit_engine, info={_AUTOCOMMIT: True})
        else:
            session = session_maker()
        scope.setdefault("state", {})[_REQUEST_SESSION] = session
        return session

    @cached_property
    def _autocommit_engine(self) -> AsyncEngine | None:
        engine = self.get_engine()
        if engine.dialect.name != "postgresql" or self.routing_config is not None:  # replicas: their own makers
            return None
        return engine.execution_options(isolation_level="AUTOCOMMIT")

    async def create_all_metadata(self) -> None:
        async with self.get_engine().begin() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CREATE_ALL_LOCK})
            await connection.run_sync(metadata.create_all)


def _outside_transaction(scope: Scope) -> bool:
    """GET and HEAD, and the writes of one statement (``ONE_STATEMENT``)."""
    if scope.get("method") in SAFE_METHODS:
        return True
    handler = scope.get("route_handler")
    return handler is not None and bool(handler.opt.get(ONE_STATEMENT))


AfterCommit = Callable[[Scope, AsyncSession | None], Awaitable[None]]
"""Runs once a request's transaction committed, before its response is sent (the response cache's invalidation)."""


class DatabasePlugin(InitPluginProtocol):
    """The database in the app, as advanced-alchemy's ``SQLAlchemyPlugin`` would wire it, without that plugin's
    package: importing it also loads Alembic and the Litestar CLI (click, rich), ~10 MiB and ~250 ms in every
    Granian worker. The migration commands (``litestar database …``) are added by the CLI alone (``app.cli``).

    The engine and session maker go into the app's state at startup (missing tables created first when
    ``config.create_all``), the engine is disposed at shutdown; ``db_session`` is the request's session
    (``AlchemyConfig.provide_session``); the transaction ends before the response is sent (``transaction_handler``).
    """

    __slots__ = ("after_commit", "config")

    def __init__(self, config: AlchemyConfig, *, after_commit: AfterCommit | None = None) -> None:
        self.config = config
        self.after_commit = after_commit

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.lifespan.append(self.lifespan)
        app_config.dependencies[SESSION_DEPENDENCY] = Provide(self.config.provide_session, sync_to_thread=False)
        app_config.before_send.append(transaction_handler(self.after_commit))
        app_config.signature_namespace["AsyncSession"] = AsyncSession
        return app_config

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        engine = self.config.get_engine()
        app.state.update({ENGINE_STATE_KEY: engine, SESSION_MAKER_STATE_KEY: self.config.create_session_maker()})
        try:
            if self.config.create_all:
                await self.config.create_all_metadata()
            yield
        finally:
            await engine.dispose()


_COMMIT_FAILED = "commit_failed"
_COMMIT_FAILED_BODY = msgspec.json.encode({"status_code": 503, "detail": "Service Unavailable"})


def transaction_handler(after_commit: AfterCommit | None) -> BeforeMessageSendHookHandler:
    """SPEC §1.6: commit when the response status is below 400, roll back otherwise, then close the session.

    advanced-alchemy's ``autocommit`` handler does the same, but logs a failed commit at DEBUG and still sends the
    2xx: the client would be told a write happened that did not. Here a failed commit turns the response into the
    503 of SPEC §1.3, and ``after_commit`` (cache invalidation) runs only after a commit that succeeded, before the
    client can send its next request.
    """

    async def handler(message: Message, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            try:
                await end_transaction(message, scope)
            finally:
                await _close(scope)
        elif message["type"] == "http.response.body" and scope.get("state", {}).get(_COMMIT_FAILED):
            message["body"] = b"" if scope["state"][_COMMIT_FAILED] == "sent" else _COMMIT_FAILED_BODY
            scope["state"][_COMMIT_FAILED] = "sent"
        elif message["type"] in {"http.disconnect", "websocket.disconnect", "websocket.close"}:
            await _close(scope)

    async def end_transaction(message: HTTPResponseStartEvent, scope: Scope) -> None:
        session = request_session(scope)
        if message["status"] >= 400:
            if session is not None:
                await session.rollback()
            return
        # An AUTOCOMMIT session has nothing to commit: each statement committed itself (closing it is enough).
        if session is not None and not session.info.get(_AUTOCOMMIT):
            try:
                await session.commit()
            except Exception:
                logger.exception("commit failed", path=scope.get("path"))
                _answer_unavailable(message, scope)
                return
        if after_commit is not None and scope.get("method") not in SAFE_METHODS:  # a read invalidates nothing
            await after_commit(scope, session)

    return handler


def _answer_unavailable(message: HTTPResponseStartEvent, scope: Scope) -> None:
    message["status"] = 503
    headers = MutableScopeHeaders.from_message(message)
    headers["Content-Type"] = "application/json"
    headers["Content-Length"] = str(len(_COMMIT_FAILED_BODY))
    headers["Retry-After"] = "5"
    scope.setdefault("state", {})[_COMMIT_FAILED] = "pending"


async def _close(scope: Scope) -> None:
    session = request_session(scope, pop=True)
    if session is None:
        return
    try:
        await session.close()
    except Exception:
        logger.warning("session close failed", path=scope.get("path"), exc_info=True)


def build_alchemy_config(settings: Settings) -> AlchemyConfig:
    """The database of ``settings``: the app's (``DatabasePlugin``), the CLI's and the queue worker's."""
    if settings.embedded:
        engine = EngineConfig(hide_parameters=True)
    else:
        engine = EngineConfig(
            # Bound values (password hashes, tokens) never reach the SQL log of DB__ECHO (SPEC §11).
            hide_parameters=True,
            pool_size=settings.db.pool_size,
            max_overflow=settings.db.max_overflow,
            pool_timeout=settings.db.connect_timeout,
            # No pre-ping: it costs a round trip per request (measured -15 % on an authenticated GET). A connection
            # broken by a database restart fails its one request with 503 and SQLAlchemy then recycles the pool.
            # A database that does not answer gives 503 after the timeout instead of a hung request. asyncpg's
            # command timeout also cancels the statement on the server (a request stuck behind a lock frees its
            # pooled connection).
            connect_args={"timeout": settings.db.connect_timeout, "command_timeout": settings.db.statement_timeout},
        )
    config = AlchemyConfig(
        connection_string=settings.database_url,
        session_config=AsyncSessionConfig(expire_on_commit=False),
        engine_config=engine,
        create_all=settings.db.create_tables_on_start and not settings.embedded,
        alembic_config=AlembicAsyncConfig(
            script_config=str(ALEMBIC_INI),
            script_location=str(MIGRATIONS_DIR),
            version_table_name="alembic_version",
        ),
        # TimestampColumns already sets updated_at on update; the listener would also set it on insert.
        enable_touch_updated_timestamp_listener=False,
    )
    if settings.embedded:
        settings.db.embedded_path.parent.mkdir(parents=True, exist_ok=True)
        event.listen(config.get_engine().sync_engine, "connect", _enable_sqlite_foreign_keys)
    return config


def _enable_sqlite_foreign_keys(dbapi_connection: object, _: object) -> None:
    """SQLite ignores ON DELETE CASCADE / SET NULL unless foreign keys are switched on per connection."""
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@asynccontextmanager
async def session_scope(config: SQLAlchemyAsyncConfig) -> AsyncIterator[AsyncSession]:
    """A unit of work outside HTTP (CLI, worker jobs): committed on success, rolled back on error."""
    async with config.get_session() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise

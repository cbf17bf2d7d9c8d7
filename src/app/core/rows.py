"""The hottest statements sent with asyncpg's own ``fetchrow``, on a connection of the request session's pool.

SQLAlchemy's execution path (the greenlet hand-off, the adapted cursor, result and row objects, ORM loading) costs
more CPU than PostgreSQL's answer to a one-row statement: on a GET, ``/user/me/`` spent as much in it as in
everything else. A ``FastRow`` is one Core statement (a ``SELECT``, or a write with ``RETURNING``), compiled once,
whose first row comes back as a mapping of column names. On PostgreSQL it is sent as SQL with ``$n`` parameters
through asyncpg, with the pool's statement timeout:

- On a session outside a transaction (``is_autocommit``: GET and HEAD, and ``ONE_STATEMENT`` writes), every
  statement commits on its own, so the statement needs nothing of the session: it goes on a connection checked out
  of the session's pool for it alone and checked in right after. The session's own connection handling (its
  transaction bookkeeping, the checkout and the close) cost as much CPU as the statement; a read that runs only
  FastRows never makes the session connect.
- On a session with a transaction, a read runs on the session's own connection, inside the transaction once that
  has begun. A write request's first statement (the token check) therefore runs just before SQLAlchemy sends its
  BEGIN; under READ COMMITTED every statement has its own snapshot anyway. A write goes through the session, so that
  it is part of the transaction.

On any other database (SQLite in embedded mode) the session executes the statement. Like any Core statement, a
``FastRow`` does not flush the session's pending ORM changes first. Parameters get their types' bind processing
(``DateTimeUTC``'s conversion to UTC, say) as SQLAlchemy would give them; results come as asyncpg decodes them, so
the columns read must be of types asyncpg returns as the model does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg
from sqlalchemy import Select, UpdateBase
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.util import greenlet_spawn

_AUTOCOMMIT = "AUTOCOMMIT"
_ECHO = logging.getLogger("sqlalchemy.engine.Engine")  # where SQLAlchemy's own echo writes
_POSTGRESQL = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]


class FastRow:
    """``await FastRow(statement).first(session, values)``: the statement's first row as a mapping, or ``None``.

    Given the AUTOCOMMIT engine itself (``AlchemyConfig.sessionless_engine``) instead of a session, it reads the same
    way as on an AUTOCOMMIT session, with no session made for it.
    """

    __slots__ = ("names", "processors", "sql", "statement", "writes")

    def __init__(self, statement: Select[Any] | UpdateBase) -> None:
        self.statement = statement
        self.writes = not isinstance(statement, Select)
        compiled = statement.compile(dialect=_POSTGRESQL)
        self.sql = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        self.processors = tuple(compiled.binds[name].type._cached_bind_processor(_POSTGRESQL) for name in self.names)

    async def first(self, session: AsyncSession | AsyncEngine, values: Mapping[str, Any]) -> Mapping[Any, Any] | None:
        if isinstance(session, AsyncEngine):
            return await self._first_pooled(session, values)
        bind = session.bind
        if isinstance(bind, AsyncEngine) and bind.dialect.name == "postgresql" and is_autocommit(session):
            return await self._first_pooled(bind, values)
        connection = await session.connection()
        if connection.dialect.name != "postgresql" or self.writes:
            row = (await session.execute(self.statement, values)).first()
            return row._mapping if row is not None else None
        raw = await connection.get_raw_connection()
        try:
            return await self._fetchrow(raw.driver_connection, values)
        except BaseException as error:
            if _lost(raw.driver_connection, error):  # SQLAlchemy invalidates it the same way in its execute
                await connection.invalidate(error if isinstance(error, Exception) else None)
            raise

    async def _first_pooled(self, engine: AsyncEngine, values: Mapping[str, Any]) -> Mapping[Any, Any] | None:
        raw = await engine.raw_connection()
        try:
            return await self._fetchrow(raw.driver_connection, values)
        except BaseException as error:
            if _lost(raw.driver_connection, error):
                await greenlet_spawn(raw.invalidate, error if isinstance(error, Exception) else None)
            raise
        finally:
            await greenlet_spawn(raw.close)  # back to the pool (an invalidated one is discarded)

    async def _fetchrow(self, driver: asyncpg.Connection[Any], values: Mapping[str, Any]) -> Mapping[Any, Any] | None:
        if _ECHO.isEnabledFor(logging.INFO):  # DB__ECHO shows these statements like every other
            _ECHO.info("%s\n[FastRow: parameters hidden]", self.sql)
        parameters = [
            values[name] if process is None else process(values[name])
            for name, process in zip(self.names, self.processors, strict=True)
        ]
        record: Mapping[Any, Any] | None = await driver.fetchrow(self.sql, *parameters)
        return record


def _lost(driver: asyncpg.Connection[Any], error: BaseException) -> bool:
    """A statement PostgreSQL refused leaves the connection usable; one closed, timed out or cancelled mid-exchange
    must never go back to the pool."""
    return driver.is_closed() or not isinstance(error, asyncpg.PostgresError)


def is_autocommit(session: AsyncSession) -> bool:
    """Whether ``session`` is a GET or HEAD one, bound to the AUTOCOMMIT view of the engine (``AlchemyConfig``)."""
    bind = session.bind
    return isinstance(bind, AsyncEngine) and bind.get_execution_options().get("isolation_level") == _AUTOCOMMIT

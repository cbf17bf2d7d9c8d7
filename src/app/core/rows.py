"""The hottest reads sent with asyncpg's own ``fetchrow``, on the connection the request's session holds.

SQLAlchemy's execution path (the greenlet hand-off, the adapted cursor, result and row objects, ORM loading) costs
more CPU than PostgreSQL's answer to a one-row read: on a GET, ``/user/me/`` spent as much in it as in everything
else. A ``FastRead`` is one Core statement, compiled once, whose first row comes back as a mapping of column names.
On PostgreSQL it is sent as SQL with ``$n`` parameters through asyncpg on the session's own connection: same pool,
same statement timeout, inside the session's transaction once that has begun. A write request's first statement
(the token check) therefore runs just before SQLAlchemy sends its BEGIN; under READ COMMITTED every statement has its
own snapshot anyway. On any other database (SQLite in embedded mode) the session executes the statement.

Like any Core statement, a ``FastRead`` does not flush the session's pending ORM changes first. Values are passed to
asyncpg as they are: a statement whose parameters need SQLAlchemy's type processing is refused when it is built.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg
from sqlalchemy import Select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

_AUTOCOMMIT = "AUTOCOMMIT"
_ECHO = logging.getLogger("sqlalchemy.engine.Engine")  # where SQLAlchemy's own echo writes
_POSTGRESQL = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]


class FastRead:
    """``await FastRead(statement).first(session, values)``: the statement's first row as a mapping, or ``None``."""

    __slots__ = ("names", "sql", "statement")

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        compiled = statement.compile(dialect=_POSTGRESQL)
        if any(bind.type.bind_processor(_POSTGRESQL) for bind in compiled.binds.values()):
            raise ValueError("FastRead parameters must be values asyncpg encodes itself (no bind processing)")
        self.sql = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())

    async def first(self, session: AsyncSession, values: Mapping[str, Any]) -> Mapping[Any, Any] | None:
        connection = await session.connection()
        driver: asyncpg.Connection[Any] | None = None
        if connection.dialect.name == "postgresql":
            driver = (await connection.get_raw_connection()).driver_connection
        if driver is None:
            row = (await session.execute(self.statement, values)).first()
            return row._mapping if row is not None else None
        if _ECHO.isEnabledFor(logging.INFO):  # DB__ECHO shows these statements like every other
            _ECHO.info("%s\n[FastRead: parameters hidden]", self.sql)
        try:
            record: Mapping[Any, Any] | None = await driver.fetchrow(self.sql, *(values[name] for name in self.names))
        except BaseException as error:
            # A statement PostgreSQL refused leaves the connection usable; one closed, timed out or cancelled
            # mid-exchange must never go back to the pool (SQLAlchemy invalidates it the same way in its execute).
            if driver.is_closed() or not isinstance(error, asyncpg.PostgresError):
                await connection.invalidate(error if isinstance(error, Exception) else None)
            raise
        return record


def is_autocommit(session: AsyncSession) -> bool:
    """Whether ``session`` is a GET or HEAD one, bound to the AUTOCOMMIT view of the engine (``AlchemyConfig``)."""
    bind = session.bind
    return isinstance(bind, AsyncEngine) and bind.get_execution_options().get("isolation_level") == _AUTOCOMMIT

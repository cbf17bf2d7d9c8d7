"""The hottest reads sent with asyncpg's own ``fetchrow``, on the connection the request's session holds.

SQLAlchemy's execution path (the greenlet hand-off, the adapted cursor, result and row objects, ORM loading) costs
more CPU than PostgreSQL's answer to a one-row read: on a GET, ``/user/me/`` spent as much in it as in everything
else. A ``FastRead`` is one Core statement, compiled once, whose first row comes back as a mapping of column
names. On PostgreSQL it is sent as SQL with ``$n`` parameters through asyncpg, on the session's own connection (same
pool, same statement timeout); anywhere else (SQLite in embedded mode) the session executes the statement as usual.

Only AUTOCOMMIT connections (GET and HEAD requests, ``app.core.db.AlchemyConfig``) take the asyncpg path: a
transaction's first statement must go through SQLAlchemy, which sends the BEGIN, and its rows belong in the
session's identity map. Values are passed to asyncpg as they are: a statement whose parameters need SQLAlchemy's
type processing is refused when it is built.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg
from sqlalchemy import Select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

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
        if not await reads_outside_transaction(session):
            row = (await session.execute(self.statement, values)).first()
            return row._mapping if row is not None else None
        connection = await session.connection()
        if _ECHO.isEnabledFor(logging.INFO):  # DB__ECHO shows these statements like every other
            _ECHO.info("%s\n[FastRead: parameters hidden]", self.sql)
        driver: asyncpg.Connection[Any] = (await connection.get_raw_connection()).driver_connection
        try:
            record: Mapping[Any, Any] | None = await driver.fetchrow(self.sql, *(values[name] for name in self.names))
        except asyncpg.PostgresError as error:  # the statement failed; the connection is fine unless it says so
            if isinstance(error, asyncpg.PostgresConnectionError):
                await connection.invalidate(error)
            raise
        except BaseException as error:
            # Closed, timed out or cancelled mid-exchange: never hand the connection back to the pool (SQLAlchemy
            # invalidates it the same way when this happens inside its own execute).
            await connection.invalidate(error if isinstance(error, Exception) else None)
            raise
        return record


async def reads_outside_transaction(session: AsyncSession) -> bool:
    """Whether ``session`` is on an AUTOCOMMIT PostgreSQL connection, where ``FastRead`` uses asyncpg."""
    connection = await session.connection()
    sync = connection.sync_connection
    return (
        connection.dialect.name == "postgresql"
        and sync is not None
        and sync.get_execution_options().get("isolation_level") == _AUTOCOMMIT
    )

"""The hottest statements sent with asyncpg's own ``fetchrow``, on the connection the request's session holds.

SQLAlchemy's execution path (the greenlet hand-off, the adapted cursor, result and row objects, ORM loading) costs
more CPU than PostgreSQL's answer to a one-row statement: on a GET, ``/user/me/`` spent as much in it as in
everything else. A ``FastRow`` is one Core statement (a ``SELECT``, or a write with ``RETURNING``), compiled once,
whose first row comes back as a mapping of column names.
On PostgreSQL it is sent as SQL with ``$n`` parameters through asyncpg on the session's own connection: same pool,
same statement timeout, inside the session's transaction once that has begun. A write request's first statement
(the token check) therefore runs just before SQLAlchemy sends its BEGIN; under READ COMMITTED every statement has its
own snapshot anyway. On any other database (SQLite in embedded mode) the session executes the statement.

A write goes this way only on a session outside a transaction (``is_autocommit``: a ``ONE_STATEMENT`` route), where
it commits on its own as it would through the session; inside a transaction it goes through the session, so that it
is part of that transaction. Like any Core statement, a ``FastRow`` does not flush the session's pending ORM changes
first. Parameters get their types' bind processing (``DateTimeUTC``'s conversion to UTC, say) as SQLAlchemy would give
them; results come as asyncpg decodes them, so the columns read must be of types asyncpg returns as the model does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg
from sqlalchemy import Select, UpdateBase
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

_AUTOCOMMIT = "AUTOCOMMIT"
_ECHO = logging.getLogger("sqlalchemy.engine.Engine")  # where SQLAlchemy's own echo writes
_POSTGRESQL = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]


class FastRow:
    """``await FastRow(statement).first(session, values)``: the statement's first row as a mapping, or ``None``."""

    __slots__ = ("names", "processors", "sql", "statement", "writes")

    def __init__(self, statement: Select[Any] | UpdateBase) -> None:
        self.statement = statement
        self.writes = not isinstance(statement, Select)
        compiled = statement.compile(dialect=_POSTGRESQL)
        self.sql = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        self.processors = tuple(compiled.binds[name].type._cached_bind_processor(_POSTGRESQL) for name in self.names)

    async def first(self, session: AsyncSession, values: Mapping[str, Any]) -> Mapping[Any, Any] | None:
        connection = await session.connection()
        driver: asyncpg.Connection[Any] | None = None
        if connection.dialect.name == "postgresql" and (not self.writes or is_autocommit(session)):
            driver = (await connection.get_raw_connection()).driver_connection
        if driver is None:
            row = (await session.execute(self.statement, values)).first()
            return row._mapping if row is not None else None
        if _ECHO.isEnabledFor(logging.INFO):  # DB__ECHO shows these statements like every other
            _ECHO.info("%s\n[FastRow: parameters hidden]", self.sql)
        parameters = [
            values[name] if process is None else process(values[name])
            for name, process in zip(self.names, self.processors, strict=True)
        ]
        try:
            record: Mapping[Any, Any] | None = await driver.fetchrow(self.sql, *parameters)
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

"""Structured logging (SPEC §11): structlog for the app, the standard library routed through the same processors.

Granian's own loggers included, so the server and the app print one style. This module does not import
Litestar: ``python -m app`` (the Granian supervisor) configures logging with it and stays small.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import stat
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from app.core.settings import Settings

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

LOG_FILE_MAX_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5

# Never logged (SPEC §11): values under these keys are replaced wherever they appear in an event.
_SECRET_KEYS = frozenset(
    {
        "password",
        "hashed_password",
        "token",
        "access_token",
        "refresh_token",
        "authorization",
        "cookie",
        "set-cookie",
        "secret_key",
    }
)

_OWNED = "_configured_by_app"
# Set by authentication: the user row itself may be expired by a rollback before the access log is written.
USER_ID_STATE_KEY = "user_id"

# Granian configures these with handlers of its own (plain text on stdout); they must reach the root handlers.
GRANIAN_LOGGERS = ("_granian", "granian.access")

access_logger = structlog.get_logger("app.access")
_access = logging.getLogger("app.access")  # its level decides before structlog does any work
startup_logger = structlog.get_logger("app")


def _redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in _SECRET_KEYS.intersection(event):
        event[key] = "[redacted]"
    return event


def configure_logging(settings: Settings) -> None:
    """Idempotent: the app factory, the CLI and the worker all call it."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_secrets,
    ]
    json_renderer = structlog.processors.JSONRenderer()
    console_renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if settings.app.environment == "local"
        else json_renderer
    )

    def formatter(renderer: structlog.types.Processor) -> logging.Formatter:
        return _RenderOnce(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=shared,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    renderer,
                ],
            )
        )

    json_formatter = formatter(json_renderer)
    console = _Console(sys.stderr)
    console.setFormatter(json_formatter if console_renderer is json_renderer else formatter(console_renderer))
    handlers: list[_Console | _RotatingFile] = [console]
    if settings.log.file_path is not None:
        settings.log.file_path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = _RotatingFile(
            settings.log.file_path,
            maxBytes=LOG_FILE_MAX_BYTES,
            backupCount=LOG_FILE_BACKUPS,
            encoding="utf-8",
        )
        file_handler.setFormatter(json_formatter)
        handlers.append(file_handler)

    root = logging.getLogger()
    # Replace the handlers of an earlier call (each app factory call configures again); keep foreign ones.
    for handler in root.handlers[:]:
        if getattr(handler, _OWNED, False):
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        setattr(handler, _OWNED, True)
        root.addHandler(handler)
    root.setLevel(settings.log.level)
    # SQL statements only when asked for (DB__ECHO); bound parameters are hidden by the engine config.
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO if settings.db.echo else logging.WARNING)
    for name in GRANIAN_LOGGERS:
        granian_logger = logging.getLogger(name)
        for handler in granian_logger.handlers[:]:
            granian_logger.removeHandler(handler)
        granian_logger.propagate = True
        granian_logger.setLevel(logging.NOTSET)  # LOG_LEVEL applies (Granian pins INFO on its own)
    # Granian's access log would repeat the app's own access event (AccessLog below); Alembic lists the plugins
    # it registers at INFO whenever a worker imports it.
    for noisy in ("granian.access", "alembic.runtime.plugins", "httpx", "aiosqlite", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    global _json_lines  # noqa: PLW0603 - one logging configuration per process, replaced by each call
    flush_access_log()  # lines of the handlers just replaced
    _json_lines = _AccessLines(tuple(handlers)) if console_renderer is json_renderer else None


# Flushed this long after the first line of a batch, or as soon as a batch holds this much (nginx's
# `access_log … buffer= flush=`): one write per handler for every batch instead of one per request.
FLUSH_SECONDS = 0.1
BUFFER_BYTES = 32 * 1024
_encode = msgspec.json.Encoder().encode


class _AccessLines:
    """Outside ``local`` every handler prints the same JSON line. The access event, one per request, is then
    rendered once with msgspec and written straight to the handlers, past the standard library's and structlog's
    machinery, in batches. A batch is written within ``FLUSH_SECONDS``, when the app stops, and when logging is
    configured again; a worker killed with SIGKILL loses at most its last ``FLUSH_SECONDS`` of access lines."""

    def __init__(self, handlers: tuple[_Console | _RotatingFile, ...]) -> None:
        self.handlers = handlers
        self.lines: list[str] = []
        self.size = 0
        self.timer_loop: asyncio.AbstractEventLoop | None = None  # whose timer will flush the batch

    def write(self, message: str, fields: dict[str, Any]) -> None:
        """The event as the structlog chain renders it: the same keys in the same order (context variables, the
        fields, ``event``, then level, logger and timestamp), as compact JSON."""
        context = structlog.contextvars.get_contextvars()
        event = {**context, **fields} if context else fields
        event["event"] = message
        event["level"] = "info"
        event["logger"] = "app.access"
        event["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        line = _encode(event).decode() + "\n"
        self.lines.append(line)
        self.size += len(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop to flush later
            loop = None
        if loop is None or self.size >= BUFFER_BYTES:
            self.flush()
        elif self.timer_loop is not loop:  # also when the loop of an earlier timer was closed before it fired
            self.timer_loop = loop
            loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        self.timer_loop = None
        if not self.lines:
            return
        batch = "".join(self.lines)
        self.lines.clear()
        self.size = 0
        for handler in self.handlers:
            handler.write_line(batch)


_json_lines: _AccessLines | None = None


def flush_access_log() -> None:
    """Write the buffered access lines now (the app's shutdown hook)."""
    if _json_lines is not None:
        _json_lines.flush()


class _RenderOnce(logging.Formatter):
    """Renders a record once for every handler sharing this formatter: outside ``local`` the console and the file
    both print JSON, and the rotating file renders each record once more to check its size."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner
        self.key = f"_rendered_{id(self)}"

    def format(self, record: logging.LogRecord) -> str:
        rendered: str | None = record.__dict__.get(self.key)
        if rendered is None:
            rendered = self.inner.format(record)
            record.__dict__[self.key] = rendered
        return rendered


class _Console(logging.StreamHandler):  # type: ignore[type-arg]  # typeshed's TextIO parameter
    def write_line(self, line: str) -> None:
        """Rendered lines, under the handler's lock like ``emit``; a failed write never fails a request."""
        with self.lock or _NO_LOCK:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):  # a closed or broken stream: the record is dropped, as ``emit`` would
                pass


class _RotatingFile(logging.handlers.RotatingFileHandler):
    """The standard rotating file, shared by the processes of one server (the supervisor and every Granian worker).

    Each process appends to the file it opened. The first to find it full rotates it, under an exclusive ``flock``
    of the log directory; the others see that the path names another file now and reopen it, instead of rotating
    again: that second rotation shifted the fresh file out at once, and a file still being written to was later
    deleted past the last backup, lines and all. The standard handler's two ``stat`` calls per record guard against
    a path that is not a regular file (bpo-45401), checked once here, when the file is opened; one ``stat`` per
    written batch sees another process's rotation.
    """

    def _open(self) -> Any:
        stream = super()._open()
        opened = os.fstat(stream.fileno())  # of the file opened: the path may name another one a moment later
        self._opened, self._regular = _identity(opened), stat.S_ISREG(opened.st_mode)
        return stream

    def shouldRollover(self, record: logging.LogRecord) -> bool:  # noqa: N802 - the standard library's name
        return self._full_after(len(self.format(record)) + 1)

    def _full_after(self, length: int) -> bool:
        if self.stream is None:
            self.stream = self._open()
        if not self._regular or self.maxBytes <= 0:
            return False
        if self._rotated_elsewhere():
            self._reopen()
        self.stream.seek(0, 2)  # other worker processes append to the same file
        return bool(self.stream.tell() + length >= self.maxBytes)

    def doRollover(self) -> None:  # noqa: N802 - the standard library's name
        with _directory_lock(Path(self.baseFilename).parent):
            if self._rotated_elsewhere():  # another process rotated while this one waited for the lock
                self._reopen()
            else:
                super().doRollover()

    def _rotated_elsewhere(self) -> bool:
        try:
            return _identity(os.stat(self.baseFilename)) != self._opened
        except FileNotFoundError:  # renamed, its successor not yet created
            return True

    def _reopen(self) -> None:
        if self.stream is not None:
            self.stream.close()
        self.stream = self._open()

    def write_line(self, line: str) -> None:
        """Rendered lines, rotating first when they would fill the file (as ``emit`` does for a record)."""
        with self.lock or _NO_LOCK:
            try:
                if self._full_after(len(line)):
                    self.doRollover()
                if self.stream is None:
                    self.stream = self._open()
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):
                pass


_NO_LOCK = nullcontext()


def _identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive ``flock`` of ``directory``, held by one process of the machine at a time (none on Windows)."""
    if sys.platform == "win32":
        yield
        return
    import fcntl  # noqa: PLC0415 - POSIX only

    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


class AccessLog:
    """One event per request (SPEC §11); wraps the router so unknown routes (404/405) are logged too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type: str = scope["type"]  # a str enum; Litestar's own enum is not imported here (module docstring)
        if scope_type != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        status_code = 500

        async def capture_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture_status)
        finally:
            if _access.isEnabledFor(logging.INFO):
                self._log(scope, status_code, started)

    @staticmethod
    def _log(scope: Scope, status_code: int, started: float) -> None:
        client = scope.get("client")
        fields: dict[str, Any] = {
            "method": scope.get("method"),
            "path": scope["path"],
            "status_code": status_code,
            "duration_ms": round((perf_counter() - started) * 1000, 2),
            "client": client[0] if client else None,
        }
        user_id = scope.get("state", {}).get(USER_ID_STATE_KEY)
        if user_id is not None:
            fields["user_id"] = user_id
        if _json_lines is not None:
            _json_lines.write("request", fields)
        else:
            access_logger.info("request", **fields)


def log_startup(settings: Settings, *, url: str | None = None) -> None:
    """The one line that says what runs (SPEC §9.3, §11): mode, database, Redis, URL and docs; never a password.

    In embedded mode it is the WARNING of SPEC §9.3. ``url`` is known to the launcher that binds the socket.
    """
    where = f"Serving {url}" if url else "Serving the API"
    environment = settings.app.environment
    docs = _docs_location(environment, url or "")
    head = f"{where} (ENVIRONMENT={environment}, {docs})"
    if settings.embedded:
        startup_logger.warning(
            "%s in embedded mode: SQLite database at %s (one process only, no PostgreSQL or Redis). "
            "To use PostgreSQL and Redis, copy src/.env.example to src/.env and edit it.",
            head,
            settings.db.embedded_path,
        )
        return
    db, rate_limit, queue = settings.db, settings.redis_rate_limit, settings.redis_queue
    # Each Redis the app talks to, by purpose (the response cache's is still to be added here).
    startup_logger.info(
        "%s in PostgreSQL+Redis mode: database %s:%s/%s, rate-limit Redis %s:%s/%s, queue Redis %s:%s/%s",
        head,
        db.server,
        db.port,
        db.name,
        rate_limit.host,
        rate_limit.port,
        rate_limit.db,
        queue.host,
        queue.port,
        queue.db,
    )


def _docs_location(environment: str, base: str) -> str:
    # SPEC §8: public in local, superusers only in staging, absent in production.
    if environment == "production":
        return "no docs"
    return f"docs at {base}/docs" + (" for superusers" if environment == "staging" else "")

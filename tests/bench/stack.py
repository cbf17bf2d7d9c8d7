"""What ``task bench`` runs against: the API's environment, its own database and Redis db, and its servers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import asyncpg
import httpx
import redis

from app.core.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0
HEALTH = "/api/v1/health"
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "!B3nchAdm1nP4ss!"
TIER_NAME = "free"
# Every path a seeded user calls gets the tier's huge limit; anonymous calls get DEFAULT_RATE_LIMIT_LIMIT.
RATE_LIMIT = 100_000_000
RATE_LIMIT_PATHS = (
    "api/v1/users,api/v1/login,api/v1/user/me,api/v1/nonexistent,api/v1/tasks/task,api/v1/{username}/post"
)


class BenchError(Exception):
    """The bench cannot go on; the message is the one line the user sees."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the API of the bench lives: its own database and Redis db on the servers the project is set up for."""

    database: str
    redis_db: int
    settings: Settings

    @classmethod
    def from_env(cls) -> Target:
        return cls.named(os.environ.get("BENCH_DATABASE", "bench_suite"), int(os.environ.get("BENCH_REDIS_DB", "7")))

    @classmethod
    def named(cls, database: str, redis_db: int) -> Target:
        """``database`` and ``redis_db`` on the servers of this environment (``task soak`` uses its own pair, so it
        can run beside ``task bench``)."""
        return cls(database, redis_db, Settings.from_env({**os.environ, "EMBEDDED": "false"}))

    def api_env(self, port: int, workers: int, log_file: Path, *, environment: str) -> dict[str, str]:
        db, rds = self.settings.db, self.settings.redis
        return {
            **os.environ,
            "EMBEDDED": "false",
            "ENVIRONMENT": environment,
            "POSTGRES_SERVER": db.server,
            "POSTGRES_PORT": str(db.port),
            "POSTGRES_USER": db.user,
            "POSTGRES_PASSWORD": db.password,
            "POSTGRES_DB": self.database,
            "DB__CREATE_TABLES_ON_START": "false",
            **{f"REDIS_{purpose}_HOST": rds.host for purpose in ("CLIENT", "CACHE", "QUEUE", "RATE_LIMIT")},
            **{f"REDIS_{purpose}_PORT": str(rds.port) for purpose in ("CLIENT", "CACHE", "QUEUE", "RATE_LIMIT")},
            **{f"REDIS_{purpose}_DB": str(self.redis_db) for purpose in ("CLIENT", "CACHE", "QUEUE", "RATE_LIMIT")},
            "RUN__HOST": "127.0.0.1",
            "RUN__PORT": str(port),
            "GRANIAN__WORKERS": str(workers),
            "GRANIAN__TIMEOUT": "5",
            "LOG_FILE_PATH": str(log_file),
            # The seeded tokens must outlive the whole run (default 30 min).
            "ACCESS_TOKEN_EXPIRE_MINUTES": "1440",
            "DEFAULT_RATE_LIMIT_LIMIT": str(RATE_LIMIT),
            "ADMIN_USERNAME": ADMIN_USERNAME,
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
            "TIER_NAME": TIER_NAME,
        }

    def reset(self, out_dir: Path, workers: int) -> None:
        """A fresh database (dropped, then created and migrated by ``app.core.bootstrap``) and an empty Redis db."""
        db = self.settings.db
        asyncio.run(_drop_database(db.server, db.port, db.user, db.password, self.database))
        with redis.Redis(host=self.settings.redis.host, port=self.settings.redis.port, db=self.redis_db) as client:
            client.flushdb()
        log = out_dir / "bootstrap.log"
        # Only ENVIRONMENT=local creates a missing database; the server itself runs in production.
        env = self.api_env(free_port(), workers, out_dir / "app.log", environment="local")
        with log.open("wb") as output:
            done = subprocess.run(
                [sys.executable, "-m", "app.core.bootstrap"],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if done.returncode != 0:
            raise BenchError(f"bootstrap of database {self.database!r} failed: {_last_line(log)} (see {log})")


async def _drop_database(host: str, port: int, user: str, password: str, database: str) -> None:
    try:
        connection = await asyncpg.connect(host=host, port=port, user=user, password=password, database="postgres")
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"PostgreSQL on {host}:{port} not reachable ({exc}): is it running?") from None
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await connection.close()


@contextmanager
def served_api(target: Target, out_dir: Path, workers: int) -> Iterator[tuple[str, int]]:
    """``python -m app`` as ``task serve`` starts it (ENVIRONMENT=production, the default LOG_LEVEL) on a fresh
    ``target``; yields its base URL and the supervisor's pid, and stops it when the block ends."""
    target.reset(out_dir, workers)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    env = target.api_env(port, workers, out_dir / "app.log", environment="production")
    env.pop("LOG_LEVEL", None)  # the default level (INFO), as `task serve` runs it
    command = [sys.executable, "-m", "app"]
    with served(
        command, cwd=PROJECT_ROOT / "src", env=env, log_file=out_dir / "server.log", url=api_url + HEALTH
    ) as pid:
        yield api_url, pid


def interrupt_on_signals() -> None:
    """A ``kill`` (or a closed terminal) stops what the process started, like Ctrl+C does (also when started in the
    background, where the shell would have it ignore SIGINT): every one raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def served(command: list[str], *, cwd: Path, env: dict[str, str], log_file: Path, url: str) -> Iterator[int]:
    """A server in a process group of its own, answering ``url`` on every worker; stopped when the block ends,
    also on Ctrl+C or an error. Yields the supervisor's pid (the harness samples its process tree)."""
    with log_file.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 - fixed commands of this bench
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_until_serving(process, url, log_file, workers=int(env.get("GRANIAN__WORKERS", "1")))
        yield process.pid
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group started with ``process``, SIGKILL after STOP_TIMEOUT."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _wait_until_serving(process: subprocess.Popen[bytes], url: str, log_file: Path, *, workers: int) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    answered = 0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"server exited with {process.returncode}: {_last_line(log_file)} (see {log_file})")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                answered += 1
                if answered >= 3 * workers:  # whichever worker accepts a request answers it
                    return
                continue
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise BenchError(f"server did not answer {url} within {STARTUP_TIMEOUT:.0f} s (see {log_file})")


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"

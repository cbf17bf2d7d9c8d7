"""Dependencies the fault tests own and break on purpose: a private redis-server and a cuttable PostgreSQL relay.

The machine's Redis and PostgreSQL are shared with every other test run, so they are never stopped: a test that
needs Redis to die starts its own ``redis-server`` (no persistence, so a restart loses everything, like a fresh
container), and a test that needs PostgreSQL to go away points the app at a TCP relay it can cut.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

from tests.servers import free_port

STARTUP_TIMEOUT = 10.0
# Slower than this is a hang: the Redis clients give up after 1 s, the database pool after DB__CONNECT_TIMEOUT.
BOUND = 5.0
T = TypeVar("T")


def wait_until(condition: Callable[[], T], *, timeout: float, what: str) -> T:
    """The first truthy value of ``condition()`` within ``timeout`` seconds; an exception counts as "not yet"."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if value := condition():
                return value
            last = value
        except Exception as error:  # noqa: BLE001 - retried until the deadline, then reported
            last = error
        time.sleep(0.05)
    raise AssertionError(f"{what} not within {timeout} s (last: {last!r})")


class PrivateRedis:
    """``redis-server`` on a free port, owned by one test: killed (SIGKILL, data lost) and started again on the
    same port, so the app under test keeps its configuration across the outage."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_file = log_dir / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        with self.log_file.open("ab") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)  # noqa: S603
        with self.client() as client:
            wait_until(client.ping, timeout=STARTUP_TIMEOUT, what="redis-server answering")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()


@contextmanager
def private_redis(log_dir: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(log_dir)
    server.start()
    try:
        yield server
    finally:
        server.kill()


class PostgresRelay:
    """A TCP relay in front of the real PostgreSQL, on its own event loop in a thread.

    ``cut()`` drops every relayed connection (the app's pooled ones break, as when the server goes away) and, with
    ``refuse=True``, stops listening (new connections are refused); with ``refuse=False`` new connections are
    accepted but never answered (a database that hangs). ``restore()`` relays again on the same port.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="postgres-relay", daemon=True)
        self._listener: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._answering = True

    def start(self) -> None:
        self._thread.start()
        self.restore()

    def stop(self) -> None:
        self._call(self._drop(refuse=True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def cut(self, *, refuse: bool = True) -> None:
        self._call(self._drop(refuse=refuse))

    def restore(self) -> None:
        self._call(self._listen())

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=5)

    async def _listen(self) -> None:
        self._answering = True
        if self._listener is None:
            self._listener = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _drop(self, *, refuse: bool) -> None:
        self._answering = False
        if refuse and self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._open.add(client_writer)
        if not self._answering:
            return  # held open, never answered, until the next cut
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self._open.add(upstream_writer)
        await asyncio.gather(
            _pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer), return_exceptions=True
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with suppress(OSError):
            writer.close()


@contextmanager
def postgres_relay(target_host: str, target_port: int) -> Iterator[PostgresRelay]:
    relay = PostgresRelay(target_host, target_port)
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


def logged(log_file: Path, level: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``level`` in the app's log file (LOG_FILE_PATH), all workers together."""
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    return [line for line in lines if line.get("level") == level]


async def wait_async(condition: Callable[[], Awaitable[T]], *, what: str) -> T:
    """``wait_until`` for a coroutine condition, in the test's event loop."""
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while True:
                if value := await condition():
                    return value
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{what} not within {STARTUP_TIMEOUT} s") from None


def timed(send: Any, *args: Any, **kwargs: Any) -> httpx.Response:
    """One request that must be answered within ``BOUND`` seconds."""
    started = time.monotonic()
    response: httpx.Response = send(*args, timeout=2 * BOUND, **kwargs)
    elapsed = time.monotonic() - started
    assert elapsed < BOUND, f"{response.request.method} {response.request.url} took {elapsed:.1f} s"
    return response


def assert_never_500(log_file: Path) -> None:
    """No request of the run was answered 500 (the access log has every status) and nothing logged a traceback."""
    statuses = [line["status_code"] for line in logged(log_file, "info") if line.get("logger") == "app.access"]
    assert statuses
    assert 500 not in statuses
    assert "Traceback" not in log_file.read_text()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", maxsplit=1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

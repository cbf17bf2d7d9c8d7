"""Real servers of the app for the tests that need one: races, fuzzing, browsers.

Litestar's ``AsyncTestClient`` handles one request at a time, so concurrency is only proven against a
real Granian server with truly parallel clients. Each server gets a free port and is stopped by the test
that started it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 60.0
REQUEST_TIMEOUT = 20.0
Send = Callable[[httpx.Client], httpx.Response]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class LiveServer:
    base_url: str
    log_file: Path
    pid: int
    """The supervisor's; it leads a process group of its own with its workers (``os.killpg(pid, SIGKILL)``)."""

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@contextmanager
def live_server(
    env: dict[str, str], log_dir: Path, *, workers: int = 2, factory: str | None = None
) -> Iterator[LiveServer]:
    """``python -m app`` (the project's Granian launcher) on 127.0.0.1 and a free port, until the block ends.

    ``factory`` (``"tests.ratelimit_app:create_app"``): plain Granian serves that app factory instead, e.g. the app
    with test-only routes.
    """
    port = free_port()
    log_file = log_dir / f"server-{port}.log"
    server_env = {
        **os.environ,
        **env,
        "RUN__HOST": "127.0.0.1",
        "RUN__PORT": str(port),
        "GRANIAN__WORKERS": str(workers),
        "GRANIAN__TIMEOUT": "5",
        "LOG_LEVEL": env.get("LOG_LEVEL", "WARNING"),
    }
    with log_file.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 - a fixed command of this test suite
            _command(factory, port, workers),
            cwd=PROJECT_ROOT / "src" if factory is None else PROJECT_ROOT,
            env=server_env if factory is None else {**server_env, "PYTHONPATH": str(PROJECT_ROOT)},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LiveServer(base_url=f"http://127.0.0.1:{port}", log_file=log_file, pid=process.pid)
    try:
        _wait_until_serving(server, process, workers)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _command(factory: str | None, port: int, workers: int) -> list[str]:
    if factory is None:
        return [sys.executable, "-m", "app"]
    return [
        *(sys.executable, "-m", "granian", "--interface", "asgi", "--factory"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), factory),
    ]


def _wait_until_serving(server: LiveServer, process: subprocess.Popen[bytes], workers: int) -> None:
    """Every worker must be up: a request is answered by whichever worker accepts it."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    answered = 0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/api/v1/health", timeout=2).status_code == 200:
                answered += 1
                if answered >= 3 * workers:
                    return
                continue
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server did not answer within {STARTUP_TIMEOUT} s:\n{server.log()}")


async def simultaneously(base_url: str, sends: list[Send]) -> list[httpx.Response]:
    """All requests at the same moment, each on its own connection (threads released by a barrier); the responses
    in order. What Litestar's one-request-at-a-time test client can never do."""
    return await anyio.to_thread.run_sync(_simultaneously, base_url, sends)


def _simultaneously(base_url: str, sends: list[Send]) -> list[httpx.Response]:
    barrier = threading.Barrier(len(sends), timeout=REQUEST_TIMEOUT)

    def run(send: Send) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT) as http:
            # Open the keep-alive connection first, so the barrier releases only the requests that race.
            assert http.get("/api/v1/health").status_code == 200
            barrier.wait()
            return send(http)

    with ThreadPoolExecutor(max_workers=len(sends)) as pool:
        futures = [pool.submit(run, send) for send in sends]
        return [future.result(timeout=3 * REQUEST_TIMEOUT) for future in futures]

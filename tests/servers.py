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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class LiveServer:
    base_url: str
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@contextmanager
def live_server(env: dict[str, str], log_dir: Path, *, workers: int = 2) -> Iterator[LiveServer]:
    """``python -m app`` (the project's Granian launcher) on 127.0.0.1 and a free port, until the block ends."""
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
        process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=PROJECT_ROOT / "src",
            env=server_env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(base_url=f"http://127.0.0.1:{port}", log_file=log_file)
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

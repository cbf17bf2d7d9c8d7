"""What a developer sees in the first minutes: the startup line, ``/``, the dev server's address, Ctrl+C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from app.core.logging import configure_logging, log_startup
from app.core.settings import CONTAINER_HOST, DEVELOPMENT_HOST, Settings
from app.main import create_app
from tests.conftest import StartServer
from tests.servers import free_port

pytestmark = pytest.mark.anyio

DB_PASSWORD = "Db-secret-pw-31337"


def logged_events(settings_with: Callable[..., Settings], log_file: Path, **overrides: str) -> list[dict[str, Any]]:
    settings = settings_with(LOG_FILE_PATH=str(log_file), **overrides)
    configure_logging(settings)
    log_startup(settings, url="http://127.0.0.1:8000")
    return [json.loads(line) for line in log_file.read_text().splitlines()]


def test_startup_line_names_mode_database_redis_url_and_docs(
    settings_with: Callable[..., Settings], tmp_path: Path
) -> None:
    log_file = tmp_path / "app.log"
    (event,) = logged_events(settings_with, log_file, POSTGRES_PASSWORD=DB_PASSWORD, POSTGRES_DB="shop")
    assert event["level"] == "info"
    assert event["logger"] == "app"
    line = event["event"]
    assert line.startswith("Serving http://127.0.0.1:8000 (ENVIRONMENT=local, docs at http://127.0.0.1:8000/docs)")
    assert "PostgreSQL+Redis mode" in line
    settings = settings_with()
    assert f"database {settings.db.server}:{settings.db.port}/shop" in line
    redis = settings.redis_rate_limit
    assert f"rate-limit Redis {redis.host}:{redis.port}/{redis.db}" in line
    queue = settings.redis_queue
    assert f"queue Redis {queue.host}:{queue.port}/{queue.db}" in line
    assert DB_PASSWORD not in log_file.read_text()


def test_startup_line_in_embedded_mode_is_the_one_embedded_warning(
    settings_with: Callable[..., Settings], tmp_path: Path
) -> None:
    sqlite = tmp_path / "embedded.sqlite3"
    (event,) = logged_events(settings_with, tmp_path / "app.log", EMBEDDED="true", EMBEDDED_DATABASE_PATH=str(sqlite))
    assert event["level"] == "warning"
    assert "in embedded mode: SQLite database at " + str(sqlite) in event["event"]
    assert "copy src/.env.example to src/.env" in event["event"]
    assert "PostgreSQL+Redis mode" not in event["event"]


@pytest.mark.parametrize(
    ("environment", "docs"),
    [("staging", "docs at http://127.0.0.1:8000/docs for superusers"), ("production", "no docs")],
)
def test_startup_line_names_docs_only_where_they_exist(
    settings_with: Callable[..., Settings], tmp_path: Path, environment: str, docs: str
) -> None:
    (event,) = logged_events(settings_with, tmp_path / "app.log", ENVIRONMENT=environment)
    assert f"(ENVIRONMENT={environment}, {docs})" in event["event"]


async def test_the_app_logs_the_startup_line_unless_its_launcher_did(
    settings_with: Callable[..., Settings], tmp_path: Path
) -> None:
    log_file = tmp_path / "app.log"
    settings = settings_with(LOG_FILE_PATH=str(log_file))
    async with AsyncTestClient(create_app(settings)):  # Granian's own CLI, `litestar run`: each worker says it
        pass
    async with AsyncTestClient(create_app(settings, announce=False)):  # python -m app said it once for all
        pass
    lines = [json.loads(line)["event"] for line in log_file.read_text().splitlines()]
    assert [line for line in lines if line.startswith("Serving")] == [
        "Serving the API (ENVIRONMENT=local, docs at /docs) in PostgreSQL+Redis mode: "
        f"database {settings.db.server}:{settings.db.port}/{settings.db.name}, "
        f"rate-limit Redis {settings.redis_rate_limit.host}:{settings.redis_rate_limit.port}/"
        f"{settings.redis_rate_limit.db}, "
        f"queue Redis {settings.redis_queue.host}:{settings.redis_queue.port}/{settings.redis_queue.db}"
    ]


async def test_root_redirects_to_the_docs_in_local(settings_with: Callable[..., Settings]) -> None:
    async with AsyncTestClient(create_app(settings_with(LOG_FILE_PATH=""))) as client:
        response = await client.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "/docs"


@pytest.mark.parametrize("environment", ["staging", "production"])
async def test_root_is_not_found_outside_local(settings_with: Callable[..., Settings], environment: str) -> None:
    async with AsyncTestClient(create_app(settings_with(ENVIRONMENT=environment, LOG_FILE_PATH=""))) as client:
        response = await client.get("/", follow_redirects=False)
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("run_host", "development", "bound"),
    [
        ("", True, DEVELOPMENT_HOST),  # the dev server stays on this machine (127.0.0.1)
        ("", False, CONTAINER_HOST),  # a container listens on every interface (SPEC §9.2)
        (CONTAINER_HOST, True, CONTAINER_HOST),  # an explicit RUN__HOST always wins
        ("192.0.2.7", False, "192.0.2.7"),
    ],
)
def test_dev_server_binds_localhost_unless_run_host_is_set(
    settings_with: Callable[..., Settings], run_host: str, development: bool, bound: str
) -> None:
    assert settings_with(RUN__HOST=run_host).server.bind_host(development=development) == bound


def test_server_logs_one_startup_line_for_all_workers_in_the_apps_format(start_server: StartServer) -> None:
    server = start_server(workers=2, ENVIRONMENT="production", LOG_LEVEL="INFO")
    assert httpx.get(f"{server.base_url}/", timeout=5).status_code == 404
    lines = server.log().splitlines()
    # Granian's own lines go through the app's structlog processors: JSON outside local, not "[INFO] …" text.
    assert not [line for line in lines if line.startswith(("[INFO]", "[WARNING]", "[ERROR]"))], lines
    events = [json.loads(line) for line in lines if line.startswith("{")]
    granian = [event["event"] for event in events if event["logger"].startswith("_granian")]
    assert any(event.startswith("Starting granian") for event in granian), lines
    assert any(event.startswith("Spawning worker-2") for event in granian), lines
    startup = [event for event in events if event["event"].startswith("Serving")]
    assert len(startup) == 1, lines
    assert startup[0]["event"].startswith(f"Serving {server.base_url} (ENVIRONMENT=production, no docs)")
    # No Alembic narration when a worker starts.
    assert not [event for event in events if event["logger"].startswith("alembic")], lines


def test_ctrl_c_stops_the_dev_server_with_status_0(
    test_env: dict[str, str], project_root: Path, tmp_path: Path
) -> None:
    """SIGINT to the whole process group, as a terminal sends it, to ``python -m app --reload`` (``task dev``)."""
    port = free_port()
    env = {**os.environ, **test_env, "RUN__HOST": "", "RUN__PORT": str(port), "LOG_FILE_PATH": ""}
    log = tmp_path / "dev.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "app", "--reload"],
            cwd=project_root,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_health(f"http://127.0.0.1:{port}", server, log)
        os.killpg(server.pid, signal.SIGINT)
        status = server.wait(timeout=30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    text = log.read_text()
    assert status == 0, text
    assert "Unexpected exit" not in text
    # RUN__HOST unset (empty): the dev server listens on localhost only.
    assert f"Listening at: http://127.0.0.1:{port}" in text
    # Granian's lines in the app's console format: a timestamp first, the logger name in brackets.
    (listening,) = [line for line in text.splitlines() if "Listening at:" in line]
    assert listening.startswith("20")
    assert listening.endswith("[_granian]")


def _wait_for_health(base_url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the dev server exited with {server.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base_url}/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the dev server did not answer within 60 s:\n{log.read_text()}")

"""Logging rules of SPEC §11 that a whole request flow must respect."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar.testing import AsyncTestClient, RequestFactory, TestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import logging as app_logging
from app.core.errors import exception_to_response
from app.core.keys import load_signing_keys
from app.core.security import TokenCodec
from app.core.settings import Settings
from app.main import create_app
from app.users.models import User
from tests.helpers import bearer
from tests.servers import PROJECT_ROOT

pytestmark = pytest.mark.anyio

SECRET_PASSWORD = "Sup3r-secret-pw"


async def test_logs_never_contain_passwords_hashes_or_tokens(
    settings_with: Callable[..., Settings], db_session: AsyncSession, tmp_path: Path
) -> None:
    log_file = tmp_path / "app.log"
    settings = settings_with(LOG_FILE_PATH=str(log_file), LOG_LEVEL="DEBUG", DB__ECHO="true")
    async with AsyncTestClient(create_app(settings), base_url="https://testserver.local") as client:
        signup = {"name": "Ann", "username": "ann", "email": "ann@example.com", "password": SECRET_PASSWORD}
        assert (await client.post("/api/v1/user", json=signup)).status_code == 201
        assert (
            await client.post("/api/v1/login", data={"username": "ann", "password": "wrong-pw-1"})
        ).status_code == 401
        login = await client.post("/api/v1/login", data={"username": "ann", "password": SECRET_PASSWORD})
        access = login.json()["access_token"]
        first_refresh = client.cookies["refresh_token"]
        assert (await client.get("/api/v1/user/me", headers=bearer(access))).status_code == 200
        refreshed = await client.post("/api/v1/refresh")
        second_refresh = client.cookies["refresh_token"]
        client.cookies.clear()
        logout = await client.post(
            "/api/v1/logout",
            headers={**bearer(refreshed.json()["access_token"]), "Cookie": f"refresh_token={second_refresh}"},
        )
        assert logout.status_code == 200
        replay = await client.post("/api/v1/refresh", headers={"Cookie": f"refresh_token={first_refresh}"})
        assert replay.status_code == 401

    hashed = (await db_session.scalars(select(User.hashed_password))).one()
    text = log_file.read_text()
    events = [json.loads(line) for line in text.splitlines()]
    assert any(event.get("logger") == "sqlalchemy.engine.Engine" for event in events)  # SQL was logged
    assert any("possible replay" in event["event"] for event in events)
    me = [e for e in events if e.get("logger") == "app.access" and e["path"] == "/api/v1/user/me"]
    assert me[0]["user_id"] == 1
    assert all("user_id" not in e for e in events if e.get("logger") == "app.access" and e["path"] == "/api/v1/user")
    for secret in (SECRET_PASSWORD, "wrong-pw-1", hashed, access, first_refresh, second_refresh):
        assert secret not in text
    # Token fragments too: a JWT signature is the part most likely to leak through truncation.
    assert access.split(".")[2][:20] not in text


@pytest.mark.parametrize("environment", ["staging", "production"])
async def test_console_logs_are_json_outside_local(
    settings_with: Callable[..., Settings], capsys: pytest.CaptureFixture[str], environment: str
) -> None:
    app = create_app(settings_with(ENVIRONMENT=environment, LOG_FILE_PATH=""))
    async with AsyncTestClient(app) as client:
        await client.get("/api/v1/health")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]
    access = [event for event in events if event.get("logger") == "app.access"]
    assert access
    assert {"timestamp", "level", "logger", "event", "method", "path", "status_code", "duration_ms"} <= access[
        -1
    ].keys()


def test_an_unexpected_error_is_a_500_without_details(settings_with: Callable[..., Settings], tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    app = create_app(settings_with(LOG_FILE_PATH=str(log_file)))
    request = RequestFactory(app=app).get("/api/v1/anything")
    response = exception_to_response(request, RuntimeError("secret internals"))
    assert response.status_code == 500
    assert response.content == {"status_code": 500, "detail": "Internal Server Error"}
    logged = [json.loads(line) for line in log_file.read_text().splitlines()]
    errors = [event for event in logged if event["event"] == "unhandled error"]
    assert "RuntimeError: secret internals" in errors[-1]["exception"]  # the traceback goes to the log only


async def test_the_reason_for_a_401_is_logged_at_info_without_the_token(
    settings_with: Callable[..., Settings], tmp_path: Path
) -> None:
    log_file = tmp_path / "app.log"
    settings = settings_with(LOG_FILE_PATH=str(log_file))
    codec = TokenCodec(settings.jwt, load_signing_keys(settings.jwt))
    past = int(time.time()) - 60
    expired = jwt.encode(
        {"sub": "ann", "uid": 1, "jti": "j1", "exp": past, "type": "access"}, codec.keys.signing, algorithm="RS256"
    )
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        {"sub": "ann", "uid": 1, "jti": "j2", "exp": past + 3600, "type": "access"}, other_key, algorithm="RS256"
    )
    cases = {
        "expired": expired,
        "bad signature": forged,
        "malformed": "not-a-jwt",
        "wrong type": codec.issue("ann", 1, "refresh", family="f").encoded,
        "unknown user": codec.issue("ghost", 999, "access", family="f").encoded,
    }
    async with AsyncTestClient(create_app(settings)) as client:
        assert (await client.get("/api/v1/user/me/")).status_code == 401  # no Authorization header
        for token in cases.values():
            assert (await client.get("/api/v1/user/me/", headers=bearer(token))).status_code == 401

    text = log_file.read_text()
    rejected = [event for event in map(json.loads, text.splitlines()) if event["event"] == "token rejected"]
    assert [event["reason"] for event in rejected] == ["missing", *cases]
    assert all(event["logger"] == "app.auth" and event["level"] == "info" for event in rejected)
    assert all(event["path"] == "/api/v1/user/me" for event in rejected)
    for token in cases.values():
        assert token not in text
        assert token.split(".")[-1][:20] not in text


def test_the_log_file_rotates_at_its_size_limit_and_each_record_is_written_once(
    settings_with: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_file = tmp_path / "app.log"
    monkeypatch.setattr(app_logging, "LOG_FILE_MAX_BYTES", 2_000)
    app_logging.configure_logging(settings_with(LOG_FILE_PATH=str(log_file), ENVIRONMENT="production"))
    for number in range(40):
        app_logging.access_logger.info("request", number=number)
    files = sorted(tmp_path.glob("app.log*"))
    assert [path.name for path in files] == ["app.log", *(f"app.log.{index}" for index in range(1, 6))][: len(files)]
    assert len(files) > 1
    assert all(path.stat().st_size < 2_000 for path in files)
    numbers = [json.loads(line)["number"] for path in files for line in path.read_text().splitlines()]
    # None written twice (a rotation check that rendered a record twice must not write it twice).
    assert len(set(numbers)) == len(numbers)
    assert max(numbers) == 39


# One worker process writing its lines to the shared log file (granian's workers all log to LOG_FILE_PATH).
LOG_WRITER = """
import os, sys, time
from app.core import logging as app_logging
from app.core.settings import Settings

name, max_bytes, lines, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
app_logging.LOG_FILE_MAX_BYTES = max_bytes
app_logging.configure_logging(Settings.from_env(os.environ))
time.sleep(max(0.0, start - time.time()))
for number in range(lines):
    app_logging.access_logger.info("request", writer=name, number=number, padding="x" * 100)
    time.sleep(0.0005)
"""


def test_worker_processes_sharing_the_log_file_rotate_it_once_and_lose_no_line(tmp_path: Path) -> None:
    """Each process rotating on its own shifted the others' fresh files out: backups held a few lines each, and a
    file still being written to was deleted past the last backup with its lines."""
    log_file, writers, lines, max_bytes = tmp_path / "app.log", 3, 400, 70_000  # ~300 kB: 5 of the 6 files
    env = {**os.environ, "LOG_FILE_PATH": str(log_file), "ENVIRONMENT": "production", "LOG_LEVEL": "INFO"}
    start = time.time() + 3
    processes = [
        subprocess.Popen(  # noqa: S603 - this interpreter and a script of this test
            [sys.executable, "-c", LOG_WRITER, f"w{index}", str(max_bytes), str(lines), str(start)],
            cwd=PROJECT_ROOT / "src",
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for index in range(writers)
    ]
    assert [process.wait(timeout=60) for process in processes] == [0] * writers
    files = sorted(tmp_path.glob("app.log*"))
    written = [json.loads(line) for path in files for line in path.read_text().splitlines()]
    found = sorted((event["writer"], event["number"]) for event in written if event.get("logger") == "app.access")
    assert found == sorted((f"w{index}", number) for index in range(writers) for number in range(lines))
    assert len(files) <= 6
    sizes = {path.name: path.stat().st_size for path in files}
    # A process that found the file not yet full writes its line, even when another rotates it meanwhile.
    assert all(size <= max_bytes + writers * 300 for size in sizes.values()), sizes
    # Rotated once per full file: every backup but the oldest was filled to within a few lines of the limit.
    backups = sorted((path for path in files if path.name != "app.log"), key=lambda path: path.name)
    assert all(sizes[path.name] > max_bytes - 2_000 for path in backups), sizes


def test_access_events_are_not_written_below_their_level(
    settings_with: Callable[..., Settings], tmp_path: Path
) -> None:
    log_file = tmp_path / "app.log"
    app = create_app(settings_with(LOG_FILE_PATH=str(log_file), LOG_LEVEL="WARNING"))
    with TestClient(app) as client:
        assert client.get("/api/v1/health").status_code == 200
    assert "app.access" not in log_file.read_text()


async def test_outside_local_the_access_line_is_what_the_structlog_chain_renders(
    settings_with: Callable[..., Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The access event skips structlog and the standard library outside ``local``; its line must not differ."""
    log_file = tmp_path / "app.log"
    app = create_app(settings_with(ENVIRONMENT="production", LOG_FILE_PATH=str(log_file)))
    async with AsyncTestClient(app) as client:
        assert (await client.get("/api/v1/health")).status_code == 200
    app_logging.access_logger.info(  # the same fields through the structlog chain
        "request", method="GET", path="/api/v1/health", status_code=200, duration_ms=1.5, client="testclient"
    )
    fast, chained = [json.loads(line) for line in log_file.read_text().splitlines() if '"app.access"' in line]
    assert list(fast) == list(chained)
    assert fast | {"duration_ms": 0, "timestamp": ""} == chained | {"duration_ms": 0, "timestamp": ""}
    assert fast["timestamp"].endswith("Z")
    console = [line for line in capsys.readouterr().err.splitlines() if '"app.access"' in line]
    assert [json.loads(line) for line in console] == [fast, chained]  # the console gets the same line, once


async def test_outside_local_access_lines_reach_the_file_shortly_while_the_app_runs(
    settings_with: Callable[..., Settings], tmp_path: Path
) -> None:
    """Access lines are written in batches: within ``FLUSH_SECONDS`` (0.1 s), not only when the app stops."""
    log_file = tmp_path / "app.log"
    app = create_app(settings_with(ENVIRONMENT="production", LOG_FILE_PATH=str(log_file)))
    async with AsyncTestClient(app) as client:
        for _ in range(3):
            assert (await client.get("/api/v1/health")).status_code == 200
        for _ in range(40):  # one second at most
            if log_file.read_text().count('"app.access"') == 3:
                break
            await asyncio.sleep(0.025)
        assert log_file.read_text().count('"app.access"') == 3

"""The production server (``python -m app``, ``task serve``): Granian's graceful stop on SIGTERM (SPEC §12.4).

A container runtime or Kubernetes stops a pod with SIGTERM, then SIGKILL after its grace period. In between, the
requests already in flight must be answered, the process must exit 0, and no new connection is accepted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx

from app.core.db import CREATE_ALL_LOCK
from tests.conftest import PG_HOST, PG_PASSWORD, PG_PORT, PG_USER
from tests.servers import free_port

# Long enough for the test's slow request, far below Granian's default of 900 s.
GRACE_SECONDS = 10


def start(
    test_env: dict[str, str], project_root: Path, log: Path, **overrides: str
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        **test_env,
        "RUN__HOST": "127.0.0.1",
        "RUN__PORT": str(port),
        "GRANIAN__WORKERS": "2",
        "GRANIAN__TIMEOUT": str(GRACE_SECONDS),
        "LOG_LEVEL": "INFO",
        **overrides,
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"], cwd=project_root, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 60
    answered = 0
    while answered < 6:  # both workers up: each new connection may land on either
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        try:
            answered += httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200
        except httpx.TransportError:
            time.sleep(0.1)
    return process, port


def test_sigterm_lets_an_in_flight_request_finish_then_exits_0(
    test_env: dict[str, str], project_root: Path, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    process, port = start(test_env, project_root, log)
    try:
        body = json.dumps(
            {"name": "Slow Sam", "username": "slowsam", "email": "sam@example.com", "password": "password1"}
        ).encode()
        request = (
            f"POST /api/v1/user HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=GRACE_SECONDS) as slow_client:
            # A slow client: the headers and half of the body, then the stop signal, then the rest.
            slow_client.sendall(request + body[: len(body) // 2])
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert process.poll() is None, "the server exited with a request in flight"
            # Stopping: new connections are no longer served.
            try:
                refused = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).status_code != 200
            except httpx.TransportError:
                refused = True
            assert refused
            slow_client.sendall(body[len(body) // 2 :])
            response = _read_all(slow_client)
        status = process.wait(timeout=GRACE_SECONDS + 5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert response.startswith(b"HTTP/1.1 201"), response
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["username"] == "slowsam"
    assert status == 0, log.read_text()
    assert "Unexpected exit" not in log.read_text()


def _read_all(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_sigterm_while_the_workers_boot_stops_at_once(
    test_env: dict[str, str], project_root: Path, tmp_path: Path
) -> None:
    """Not after GRANIAN__TIMEOUT: a booting worker used to swallow the signal until the supervisor killed it."""
    log = tmp_path / "boot.log"
    env = {**os.environ, **test_env, "RUN__HOST": "127.0.0.1", "RUN__PORT": str(free_port())}
    env |= {"GRANIAN__WORKERS": "2", "GRANIAN__TIMEOUT": "60", "LOG_LEVEL": "INFO"}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"], cwd=project_root, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while "Spawning worker-2" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        assert "Started worker" not in log.read_text()  # still booting: importing and building the app
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert status == 0, log.read_text()
    assert "refused to gracefully stop" not in log.read_text()


def test_workers_signalled_twice_while_their_app_starts_still_stop(
    test_env: dict[str, str], project_root: Path, tmp_path: Path
) -> None:
    """systemd stops a service by signalling all its processes, and the supervisor then signals its workers again
    (so does the repeated parent-death signal of a killed supervisor). A worker that got its second SIGTERM during its
    lifespan startup used to hang for good in Granian's handler of the first; the server waited GRANIAN__TIMEOUT."""
    log = tmp_path / "twice.log"
    env = {**os.environ, **test_env, "RUN__HOST": "127.0.0.1", "RUN__PORT": str(free_port())}
    env |= {"GRANIAN__WORKERS": "2", "GRANIAN__TIMEOUT": "60", "LOG_LEVEL": "INFO"}
    env["DB__CREATE_TABLES_ON_START"] = "true"  # each worker's startup takes the lock below before its create_all
    loop = asyncio.new_event_loop()
    lock = loop.run_until_complete(
        asyncpg.connect(
            host=PG_HOST, port=int(PG_PORT), user=PG_USER, password=PG_PASSWORD, database=test_env["POSTGRES_DB"]
        )
    )  # advisory locks are per database: the app's
    loop.run_until_complete(lock.execute("SELECT pg_advisory_lock($1)", CREATE_ALL_LOCK))
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock' "
        "AND wait_event = 'advisory'"
    )
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"], cwd=project_root, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while loop.run_until_complete(lock.fetchval(waiting, test_env["POSTGRES_DB"])) < 2:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        for worker in _children(process.pid):  # both in their lifespan startup, waiting for the lock
            os.kill(worker, signal.SIGTERM)
        time.sleep(0.5)  # handled: the second signal below is another one, not merged with the first
        process.send_signal(signal.SIGTERM)  # the supervisor passes it on to each worker
        time.sleep(0.5)
        loop.run_until_complete(lock.execute("SELECT pg_advisory_unlock($1)", CREATE_ALL_LOCK))
        status = process.wait(timeout=20)
    finally:
        loop.run_until_complete(lock.close())
        loop.close()
        if process.poll() is None:
            for worker in _children(process.pid):
                os.kill(worker, signal.SIGKILL)
            process.kill()
            process.wait()
    assert status == 0, log.read_text()
    assert "refused to gracefully stop" not in log.read_text()


def test_workers_stop_when_the_supervisor_is_killed(
    test_env: dict[str, str], project_root: Path, tmp_path: Path
) -> None:
    """A supervisor killed outright (SIGKILL, the OOM killer) takes its workers with it: they no longer serve on,
    unsupervised, holding the port."""
    log = tmp_path / "killed.log"
    process, port = start(test_env, project_root, log)
    workers = _children(process.pid)
    try:
        assert len(workers) == 2, log.read_text()
        process.kill()
        process.wait()
        deadline = time.monotonic() + GRACE_SECONDS + 5
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        try:
            served = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).status_code == 200
        except httpx.TransportError:
            served = False
        assert not served
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _children(parent: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent (init, here) to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"

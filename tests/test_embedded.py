"""Smoke test of the README's first command in embedded mode: no PostgreSQL, no Redis, only Python."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_embedded_mode_serves_api_docs_and_jobs(test_env: dict[str, str], project_root: Path, tmp_path: Path) -> None:
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("POSTGRES_", "REDIS_"))}
    env |= {
        "RUN__HOST": "127.0.0.1",
        "RUN__PORT": str(port),
        "EMBEDDED_DATABASE_PATH": str(tmp_path / "embedded.sqlite3"),
        "JWT_PRIVATE_KEY_PATH": test_env["JWT_PRIVATE_KEY_PATH"],
        "JWT_PUBLIC_KEY_PATH": test_env["JWT_PUBLIC_KEY_PATH"],
        "LOG_FILE_PATH": "",
        "ENVIRONMENT": "local",
        # Forced, so a developer's src/.env cannot switch the smoke test to PostgreSQL (selection is unit-tested).
        "EMBEDDED": "true",
    }
    log = tmp_path / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "app"], env=env, cwd=project_root, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 60
            health = None
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    health = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2)
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            assert health is not None, log.read_text()
            assert health.status_code == 200
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{base}/docs", timeout=5).status_code == 200
            # The same routes work on SQLite: register, log in, read oneself.
            signup = {"name": "Ann", "username": "ann", "email": "ann@example.com", "password": "password1"}
            assert httpx.post(f"{base}/api/v1/user", json=signup, timeout=10).status_code == 201
            login = httpx.post(f"{base}/api/v1/login", data={"username": "ann", "password": "password1"}, timeout=10)
            token = login.json()["access_token"]
            me = httpx.get(f"{base}/api/v1/user/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert me.json()["username"] == "ann"
            # A job runs end to end without Redis: the in-process worker takes it from the in-process broker.
            created = httpx.post(f"{base}/api/v1/tasks/task", params={"message": "embedded"}, timeout=10)
            assert created.status_code == 201, created.text
            task = f"{base}/api/v1/tasks/task/{created.json()['id']}"
            deadline = time.monotonic() + 20
            while (body := httpx.get(task, timeout=10).json())["status"] != "complete" and time.monotonic() < deadline:
                time.sleep(0.2)
            assert (body["status"], body["result"]) == ("complete", "Task embedded is complete!")
            # Idle, the in-process worker waits without spinning: it once burnt two thirds of a core, and requests
            # waited up to half a second for the event loop (the bound is generous: idle is about 0).
            busy_before = _cpu_seconds(server.pid)
            time.sleep(2)
            assert _cpu_seconds(server.pid) - busy_before < 0.5
        finally:
            server.terminate()
            server.wait(timeout=30)
    output_text = log.read_text()
    embedded_lines = [line for line in output_text.splitlines() if "embedded mode" in line]
    assert len(embedded_lines) == 1, output_text
    assert "Worker Started" in output_text
    assert "Worker end" in output_text
    assert "src/.env.example" in embedded_lines[0]
    assert (tmp_path / "embedded.sqlite3").is_file()


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (the Granian worker), from /proc."""
    ticks = 0
    for child in [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]:
        fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")

"""What a production server's worker loads: the app, not the command line nor the migrations (issue 12).

The worker's memory and start time are what it imports. The ``litestar`` CLI loads the same factory,
``app.main:create_app``; its commands (advanced-alchemy's ``database`` group with Alembic, Granian's ``run``, the
first-run commands, click and rich under all of them) are added only when the CLI starts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.core.settings import Settings
from tests.servers import free_port

LITESTAR = str(Path(sys.executable).parent / "litestar")
STARTUP_TIMEOUT = 60.0

# Packages of the CLI and the migrations; a worker that imports any of them (or a submodule) pays for it.
CLI_ONLY = (
    "advanced_alchemy.extensions.litestar",
    "alembic",
    "mako",
    "pygments",
    "litestar.cli",
    "click",
    "rich",
    "rich_click",
)

# `python -m app` itself, its worker writing the names of the modules it has loaded once it built the app. A name
# mapped to None in `sys.modules` is a module marked "not installed", not one that was loaded.
REPORTING_SERVER = """
import json, os, sys
import app.__main__ as launcher

build_worker_app = launcher.build_worker_app

def build_and_report(target):
    app = build_worker_app(target)
    loaded = sorted(name for name, module in sys.modules.items() if module is not None)
    with open(os.environ["WORKER_MODULES_REPORT"], "w") as report:
        json.dump(loaded, report)
    return app

launcher.build_worker_app = build_and_report
launcher.main()
"""


def cli_only(modules: list[str]) -> list[str]:
    return [name for name in modules if any(name == cli or name.startswith(f"{cli}.") for cli in CLI_ONLY)]


def worker_modules(env: dict[str, str], project_root: Path, tmp_path: Path) -> list[str]:
    report = tmp_path / "worker-modules.json"
    port = free_port()
    server_env = {
        **os.environ,
        **env,
        "RUN__HOST": "127.0.0.1",
        "RUN__PORT": str(port),
        "GRANIAN__WORKERS": "1",
        "GRANIAN__TIMEOUT": "5",
        "WORKER_MODULES_REPORT": str(report),
        # How production serves (`python -OO`), given here: the launcher would otherwise exec `python -OO -m app`
        # itself (optimize_in_production) and this script's report hook would be gone.
        "PYTHONOPTIMIZE": "2",
    }
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 - a fixed command of this test
            [sys.executable, "-c", REPORTING_SERVER],
            cwd=project_root / "src",
            env=server_env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _serving(port):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        modules: list[str] = json.loads(report.read_text())
        return modules
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _serving(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_a_production_worker_imports_neither_the_cli_nor_the_migrations(
    test_env: dict[str, str], project_root: Path, tmp_path: Path
) -> None:
    modules = worker_modules({**test_env, "ENVIRONMENT": "production"}, project_root, tmp_path)
    assert "app.main" in modules  # the report is the worker's, after it built the app
    assert "sqlalchemy.ext.asyncio" in modules
    assert cli_only(modules) == []


def taskfile_litestar_app(project_root: Path) -> str:
    match = re.search(r"^\s*LITESTAR_APP:\s*(\S+)\s*$", (project_root / "Taskfile.yml").read_text(), re.MULTILINE)
    assert match is not None, "Taskfile.yml names no LITESTAR_APP"
    return match.group(1)


def litestar(test_env: dict[str, str], project_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A ``litestar`` command on the app the Taskfile's commands use (``task migrate``, ``task worker``, …)."""
    env = {**os.environ, **test_env, "LITESTAR_APP": taskfile_litestar_app(project_root)}
    return subprocess.run(  # noqa: S603 - fixed arguments
        [LITESTAR, *args], env=env, cwd=project_root, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def cli_help(test_env: dict[str, str], project_root: Path) -> str:
    result = litestar(test_env, project_root, "--help")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("group", ["database", "workers", "run", "users", "tiers"])
def test_the_cli_app_still_has_its_command_groups(cli_help: str, group: str) -> None:
    assert re.search(rf"^\W*{group}\s", cli_help, re.MULTILINE), cli_help


def test_the_cli_reads_the_migrations_of_the_app(test_env: dict[str, str], project_root: Path) -> None:
    result = litestar(test_env, project_root, "database", "heads")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "(head)" in output


@pytest.mark.parametrize(
    ("environment", "reload", "optimize", "execs"),
    [
        ("production", False, None, True),
        ("production", False, "0", False),
        ("production", True, None, False),
        ("staging", False, None, False),
        ("local", False, None, False),
    ],
)
def test_production_serves_as_python_oo_unless_pythonoptimize_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
    settings_with: Callable[..., Settings],
    environment: str,
    reload: bool,
    optimize: str | None,
    execs: bool,
) -> None:
    """Docstrings and asserts out of every worker's code (~6 MiB each); staging keeps the docstrings its API docs
    show, and an operator's PYTHONOPTIMIZE (even 0) is final. The launcher execs itself: same pid, not serving yet."""
    from app.__main__ import optimize_in_production  # noqa: PLC0415 - the launcher, imported by no other test

    seen: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda _path, args: seen.append(args))
    monkeypatch.setattr(sys, "argv", ["app/__main__.py", "--reload"] if reload else ["app/__main__.py"])
    if optimize is None:
        monkeypatch.delenv("PYTHONOPTIMIZE", raising=False)
    else:
        monkeypatch.setenv("PYTHONOPTIMIZE", optimize)
    optimize_in_production(settings_with(ENVIRONMENT=environment), reload=reload)
    flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    assert seen == ([[sys.executable, *flags, "-OO", "-m", "app"]] if execs else [])

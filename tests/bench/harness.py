"""The shared bench harness (``BENCH_DIR``: ``run_workload.sh``, ``seed_via_api.py``, ``lua/``) and wrk itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.bench.results import CEILING, Result, parse_line
from tests.bench.stack import ADMIN_PASSWORD, ADMIN_USERNAME, PROJECT_ROOT, RATE_LIMIT, RATE_LIMIT_PATHS, BenchError

DEFAULT_BENCH_DIR = PROJECT_ROOT.parent / "shared" / "bench"
ALL_WORKLOADS = "W0 W1 W2 W3 W4 W5 W6 W7 W8"
WRK_INSTALL = "sudo apt-get install -y wrk"


@dataclass(frozen=True, slots=True)
class Knobs:
    """The harness's settings, from the environment like ``run_workload.sh`` reads them (issue 12's defaults)."""

    workloads: str = ALL_WORKLOADS
    duration: int = 15
    warmup: int = 3
    repeat: int = 1
    threads: int = 2
    connections: int = 64

    @classmethod
    def from_env(cls) -> Knobs:
        try:
            return cls(
                workloads=" ".join(os.environ.get("WORKLOADS", ALL_WORKLOADS).upper().split()),
                duration=int(os.environ.get("DURATION", "15")),
                warmup=int(os.environ.get("WARMUP", "3")),
                repeat=int(os.environ.get("REPEAT", "1")),
                threads=int(os.environ.get("THREADS", "2")),
                connections=int(os.environ.get("CONNECTIONS", "64")),
            )
        except ValueError as exc:
            raise BenchError(f"DURATION, WARMUP, REPEAT, THREADS and CONNECTIONS must be integers ({exc})") from None

    def env(self) -> dict[str, str]:
        return {
            "WORKLOADS": self.workloads,
            "DURATION": str(self.duration),
            "WARMUP": str(self.warmup),
            "REPEAT": str(self.repeat),
            "THREADS": str(self.threads),
            "CONNECTIONS": str(self.connections),
        }


def bench_dir() -> Path:
    """``BENCH_DIR`` (default ``../shared/bench`` beside the repository), checked for the harness's files."""
    directory = Path(os.environ.get("BENCH_DIR") or DEFAULT_BENCH_DIR).resolve()
    if not (directory / "run_workload.sh").is_file() or not (directory / "seed_via_api.py").is_file():
        raise BenchError(
            f"no bench harness in {directory} (run_workload.sh, seed_via_api.py, lua/): "
            "set BENCH_DIR to the shared bench directory"
        )
    return directory


def ensure_wrk(say: Callable[[str], None]) -> str:
    """wrk's path; installed from Debian's ``wrk`` package when this process may (root, apt-get)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError(f"wrk is not installed: install Debian's package with `{WRK_INSTALL}`, then rerun")
    say("wrk is not installed: installing Debian's package (apt-get install -y wrk)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install, update = ["apt-get", "install", "-y", "-q", "wrk"], ["apt-get", "update", "-q"]
    for commands in ([install], [update, install]):  # a fresh machine's package lists may not be there yet
        for command in commands:
            subprocess.run(command, env=env, check=False, stdout=subprocess.DEVNULL)  # noqa: S603
        if shutil.which("wrk"):
            break
    found = shutil.which("wrk")
    if not found:
        raise BenchError(f"wrk could not be installed with apt-get: install it with `{WRK_INSTALL}`, then rerun")
    return found


def seed(harness: Path, base_url: str, data_file: Path, log_file: Path) -> None:
    """Users, posts and writer accounts through the API only (``seed_via_api.py``), tokens into ``data_file``."""
    command = [
        *(sys.executable, str(harness / "seed_via_api.py"), "--base-url", base_url),
        *("--admin-username", ADMIN_USERNAME, "--admin-password", ADMIN_PASSWORD),
        *("--rate-limit", str(RATE_LIMIT), "--rate-limit-paths", RATE_LIMIT_PATHS, "--out", str(data_file)),
    ]
    with log_file.open("wb") as output:
        done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, check=False)  # noqa: S603
    if done.returncode != 0:
        raise BenchError(f"seeding through the API failed (exit {done.returncode}, see {log_file})")


def run_workloads(
    harness: Path,
    knobs: Knobs,
    base_url: str,
    data_file: Path,
    server_pid: int,
    raw_dir: Path,
    say: Callable[[str], None],
) -> list[Result]:
    """``run_workload.sh`` on the API, each of its lines passed on as it comes; the parsed result lines."""
    env = {**os.environ, **knobs.env(), "SERVER_PIDS": str(server_pid), "RAW_DIR": str(raw_dir)}
    results: list[Result] = []
    process = subprocess.Popen(  # noqa: S603 - the shared harness
        ["bash", str(harness / "run_workload.sh"), base_url, str(data_file)],  # noqa: S607
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # stopped as a group (its wrk too) when the bench is interrupted
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            say(line.rstrip("\n"))
            result = parse_line(line)
            if result is not None:
                results.append(result)
        process.wait()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            process.wait()
    if process.returncode != 0:
        raise BenchError(f"run_workload.sh exited with {process.returncode}")
    return results


def measure_ceiling(harness: Path, knobs: Knobs, base_url: str, raw_dir: Path) -> list[Result]:
    """The harness's W0 script (``GET /api/v1/health``) against the ceiling app, with the harness's wrk options."""
    env = {**os.environ, "BENCH_LUA_DIR": str(harness / "lua"), "BENCH_THREADS": str(knobs.threads)}
    results: list[Result] = []
    for run in range(1, knobs.repeat + 1):
        for seconds, keep in ((knobs.warmup, False), (knobs.duration, True)):
            if seconds <= 0:
                continue
            load_before = _load1()
            output = _wrk(knobs, seconds, harness / "lua" / "w0.lua", base_url, env)
            if not keep:
                time.sleep(1)
                continue
            (raw_dir / f"{CEILING}-run{run}.txt").write_text(output)
            line = next((x for x in reversed(output.splitlines()) if x.startswith("RESULT ")), None)
            result = parse_line(
                f"{CEILING} {line.removeprefix('RESULT ')} load1={load_before}->{_load1()}" if line else ""
            )
            if result is None:
                raise BenchError(f"wrk gave no result for the ceiling: {' '.join(output.split())[:300]}")
            results.append(result)
    return results


def _wrk(knobs: Knobs, seconds: int, script: Path, url: str, env: dict[str, str]) -> str:
    command = [
        *("wrk", f"-t{knobs.threads}", f"-c{knobs.connections}", f"-d{seconds}s", "--timeout", "30s"),
        *("-s", str(script), url),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    return done.stdout + done.stderr


def _load1() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "na"

"""``task soak``: issue 13's soak. ``python -m app`` on 2 Granian workers (ENVIRONMENT=production, default LOG_LEVEL),
started and seeded like ``task bench`` does, under one mixed workload (``soak.lua``: reads, cached reads, writes,
logins) for SOAK_MINUTES minutes; per minute its requests, errors, p50/p99 and the server's peak RSS, then the
verdict: 0 errors, RSS growth < 10 % from minute 2 to the last, p99 max/min over minutes 2.. within 2x.

    task soak                                   # 10 minutes
    SOAK_MINUTES=2 task soak                    # a quick look
    task soak -- --minute-seconds 10            # "minutes" of 10 s, to try a change of the script

Environment: ``SOAK_MINUTES`` (default 10, at least 2), ``SOAK_CONNECTIONS`` (default 16; wrk runs one thread per
connection), ``SOAK_DATABASE`` (default ``soak_suite``, dropped and recreated), ``SOAK_REDIS_DB`` (default 9,
flushed), ``BENCH_DIR`` (the shared harness: its seeding script and lua/common.lua). Its own database, Redis db and
ports, so it can run beside ``task bench``. Exit status 1 on FAIL, 130 when interrupted (servers stopped).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.bench import harness
from tests.bench.run import say
from tests.bench.stack import ADMIN_PASSWORD, ADMIN_USERNAME, BenchError, Target, interrupt_on_signals, served_api
from tests.soak.process_tree import Sampler
from tests.soak.results import BASELINE_MINUTE, Minute, SoakResultError, Summary, parse_wrk

SCRIPT = Path(__file__).with_name("soak.lua")
SAMPLE_INTERVAL = 3.0  # seconds between two RSS samples
WRK_TIMEOUT = "10s"  # a request slower than this counts as an error (a timeout)


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    minutes: int
    connections: int
    minute_seconds: int
    workers: int

    @classmethod
    def from_env(cls, *, minute_seconds: int, workers: int) -> Plan:
        try:
            minutes, connections = (
                int(os.environ.get("SOAK_MINUTES", "10")),
                int(os.environ.get("SOAK_CONNECTIONS", "16")),
            )
        except ValueError as exc:
            raise BenchError(f"SOAK_MINUTES and SOAK_CONNECTIONS must be integers ({exc})") from None
        if minutes < BASELINE_MINUTE:
            raise BenchError(f"SOAK_MINUTES must be at least {BASELINE_MINUTE} (minute 1 only warms up)")
        if connections < 1 or minute_seconds < 1 or workers < 1:
            raise BenchError("SOAK_CONNECTIONS, --minute-seconds and --workers must be at least 1")
        return cls(minutes, connections, minute_seconds, workers)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    interrupt_on_signals()
    try:
        plan = Plan.from_env(minute_seconds=args.minute_seconds, workers=args.workers)
        return soak(plan, args.out_dir)
    except (BenchError, SoakResultError) as exc:
        sys.stderr.write(f"task soak: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("task soak: interrupted, server stopped\n")
        return 130


def soak(plan: Plan, out_dir: Path | None) -> int:
    shared = harness.bench_dir()
    harness.ensure_wrk(say)
    out_dir = out_dir or Path(tempfile.gettempdir()) / "litestar-soak" / time.strftime("%Y%m%dT%H%M%S")
    (out_dir / "raw").mkdir(parents=True, exist_ok=True)
    try:
        target = Target.named(os.environ.get("SOAK_DATABASE", "soak_suite"), int(os.environ.get("SOAK_REDIS_DB", "9")))
    except ValueError as exc:  # SettingsError or a SOAK_REDIS_DB that is no number
        raise BenchError(str(exc)) from None
    results = out_dir / "soak.txt"
    say(
        f"# task soak: {plan.minutes} x {plan.minute_seconds} s, {plan.connections} connections, {plan.workers} "
        f"workers, database {target.database}, Redis db {target.redis_db}; output in {out_dir}"
    )
    say(f"# load average at start: {_loadavg()}")
    with served_api(target, out_dir, plan.workers) as (api_url, pid):
        harness.seed(shared, api_url, out_dir / "data.tsv", out_dir / "seed.log")
        minutes = run_minutes(plan, api_url, pid, shared, out_dir, results)
    summary = Summary.of(minutes)
    with results.open("a") as saved:
        saved.write(summary.line() + "\n")
    say(summary.line())
    for failure in summary.failures:
        say(f"# FAIL: {failure}")
    say(f"# load average at end: {_loadavg()}; result lines: {results}")
    return 0 if summary.passed else 1


def run_minutes(plan: Plan, api_url: str, pid: int, shared: Path, out_dir: Path, results: Path) -> list[Minute]:
    """One wrk run of soak.lua per minute on the seeded API, each minute's line said and saved as it ends."""
    admin, writers = _admin_token(api_url), _writers(out_dir / "data.tsv")
    env = {**os.environ, "BENCH_DATA": str(out_dir / "data.tsv"), "BENCH_LUA_DIR": str(shared / "lua")}
    env["SOAK_ADMIN_TOKEN"] = admin
    minutes: list[Minute] = []
    with Sampler(pid, SAMPLE_INTERVAL) as sampler, results.open("w") as saved:
        for number in range(1, plan.minutes + 1):
            output = _wrk(plan, api_url, env)
            (out_dir / "raw" / f"minute-{number}.txt").write_text(output)
            minute = parse_wrk(output, minute=number, server=sampler.take(), load1=_loadavg(1))
            minute = _purge(api_url, admin, writers, minute)
            minutes.append(minute)
            say(minute.line())
            saved.write(minute.line() + "\n")
            saved.flush()  # a run stopped half-way keeps its minutes
    return minutes


def _wrk(plan: Plan, url: str, env: dict[str, str]) -> str:
    # One thread per connection: soak.lua tells each response's kind by its thread's last request.
    command = [
        *("wrk", f"-t{plan.connections}", f"-c{plan.connections}", f"-d{plan.minute_seconds}s"),
        *("--timeout", WRK_TIMEOUT, "-s", str(SCRIPT), url),
    ]
    # subprocess.run kills wrk when KeyboardInterrupt (Ctrl+C, SIGTERM) arrives while it waits.
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    return done.stdout + done.stderr


def _admin_token(api_url: str) -> str:
    form = {"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD}
    response = httpx.post(f"{api_url}/api/v1/login", data=form, timeout=30)
    if response.status_code != 200:
        raise BenchError(f"login of the bench's superuser gave HTTP {response.status_code}: {response.text[:200]}")
    token: str = response.json()["access_token"]
    return token


def _writers(data_file: Path) -> list[str]:
    return [line.split("\t")[1] for line in data_file.read_text().splitlines() if line.startswith("writer\t")]


def _purge(api_url: str, admin: str, writers: list[str], minute: Minute) -> Minute:
    """Hard-deletes every post of the writer accounts, which the seeding gives none: what wrk's writes left when it
    stopped, also creates whose response it never read. So the table keeps the seeded size; a refusal counts as an
    unexpected status of ``minute``."""
    failed: Counter[str] = Counter()
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {admin}"}, timeout=30) as client:
        for writer in writers:
            listed = client.get(f"/api/v1/{writer}/posts", params={"items_per_page": 100})
            if listed.status_code != 200:
                failed[f"purge_list:{listed.status_code}"] += 1
                continue
            for post in listed.json()["data"]:
                status = client.delete(f"/api/v1/{writer}/db_post/{post['id']}").status_code
                if status != 200:
                    failed[f"purge_delete:{status}"] += 1
    if not failed:
        return minute
    bad = ",".join([*([] if minute.bad == "-" else [minute.bad]), *(f"{k}:{n}" for k, n in sorted(failed.items()))])
    return dataclasses.replace(minute, unexpected=minute.unexpected + failed.total(), bad=bad)


def _loadavg(count: int = 3) -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:count])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="task soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out-dir", type=Path, help="where logs, data and raw wrk output go (default: $TMPDIR/litestar-soak/<time>/)"
    )
    parser.add_argument("--minute-seconds", type=int, default=60, help="length of one reported interval (default 60)")
    parser.add_argument("--workers", type=int, default=2, help="Granian workers (default 2)")
    return parser


if __name__ == "__main__":
    sys.exit(main())

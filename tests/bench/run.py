"""``task bench``: W0–W8 against ``python -m app`` (2 Granian workers, ENVIRONMENT=production, default LOG_LEVEL) on
this machine's PostgreSQL and Redis, the bare-Litestar ceiling right after W0 in each pass, then the ratios and a chart.

    task bench                                     # issue 12's run: 15 s per workload, 3 s warm-up
    DURATION=3 WORKLOADS="W0 W3" task bench        # a quick look
    task bench -- --out-dir /tmp/b --chart /tmp/b/bench.svg

Environment: ``BENCH_DIR`` (the shared harness, default ``../shared/bench``), ``DURATION``, ``WARMUP``,
``WORKLOADS``, ``REPEAT``, ``THREADS``, ``CONNECTIONS`` (as ``run_workload.sh`` reads them), ``BENCH_DATABASE``
(default ``bench_suite``, dropped and recreated) and ``BENCH_REDIS_DB`` (default 7, flushed). PostgreSQL and Redis
are found as the API finds them (``POSTGRES_SERVER``, ``REDIS_CLIENT_HOST``, …, or ``src/.env``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from tests.bench import harness
from tests.bench.chart import render_svg
from tests.bench.results import CEILING, Result, ceiling_line, medians, parse_line, ratios
from tests.bench.stack import (
    HEALTH,
    PROJECT_ROOT,
    BenchError,
    Target,
    free_port,
    interrupt_on_signals,
    served,
    served_api,
)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    interrupt_on_signals()
    try:
        if args.from_results:
            return redraw(args.from_results, args.chart, workers=args.workers)
        return bench(args.out_dir, args.chart, workers=args.workers)
    except BenchError as exc:
        sys.stderr.write(f"task bench: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("task bench: interrupted, servers stopped\n")
        return 130


def bench(out_dir: Path | None, chart: Path | None, *, workers: int) -> int:
    shared = harness.bench_dir()
    harness.ensure_wrk(say)
    knobs = harness.Knobs.from_env()
    out_dir = out_dir or Path(tempfile.gettempdir()) / "litestar-bench" / time.strftime("%Y%m%dT%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    chart = chart or out_dir / "bench.svg"
    try:
        target = Target.from_env()
    except ValueError as exc:  # SettingsError: an invalid variable, named in the message
        raise BenchError(str(exc)) from None
    say(
        f"# task bench: {knobs.workloads}, {knobs.duration} s each (+{knobs.warmup} s warm-up), repeat {knobs.repeat}, "
        f"{knobs.threads} threads, {knobs.connections} connections, {workers} workers; output in {out_dir}"
    )
    say(f"# load average at start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")

    with served_ceiling(out_dir, workers) as ceiling_url:
        runs, ceiling_runs = measure(shared, knobs, target, ceiling_url, out_dir, workers)
    return report(runs, ceiling_runs, chart, expected=len(knobs.workloads.split()) * knobs.repeat, workers=workers)


def measure(
    shared: Path, knobs: harness.Knobs, target: Target, ceiling_url: str, out_dir: Path, workers: int
) -> tuple[list[Result], list[Result]]:
    """``python -m app`` as ``task serve`` starts it, on a fresh database seeded through its API, under W0-W8; the
    ceiling right after W0 in every pass (first when W0 is not asked for), so that ``W0/CEILING`` compares two runs a
    few seconds apart: the machine's speed drifts by tens of percent within minutes."""
    floor, rest = split_floor(knobs.workloads)
    runs: list[Result] = []
    ceiling_runs: list[Result] = []
    with served_api(target, out_dir, workers) as (api_url, pid):
        data = out_dir / "data.tsv"
        harness.seed(shared, api_url, data, out_dir / "seed.log")
        for run in range(1, knobs.repeat + 1):
            if knobs.repeat > 1:
                say(f"# pass {run} of {knobs.repeat}")
            one_pass = replace(knobs, repeat=1)
            raw_dir = out_dir / "raw" / f"pass{run}"
            raw_dir.mkdir(parents=True, exist_ok=True)
            if floor:
                floor_pass = replace(one_pass, workloads=floor)
                runs += harness.run_workloads(shared, floor_pass, api_url, data, pid, raw_dir, say)
            ceiling_runs += measure_ceiling(shared, one_pass, ceiling_url, raw_dir)
            if rest:
                rest_pass = replace(one_pass, workloads=rest)
                runs += harness.run_workloads(shared, rest_pass, api_url, data, pid, raw_dir, say)
    return runs, ceiling_runs


def split_floor(workloads: str) -> tuple[str, str]:
    """``"W0"`` (when asked for) and the other workloads, in their order."""
    names = workloads.split()
    return ("W0" if "W0" in names else ""), " ".join(name for name in names if name != "W0")


@contextmanager
def served_ceiling(out_dir: Path, workers: int) -> Iterator[str]:
    """The bare-Litestar app on the same Granian settings, idle beside the API until its turn; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "GRANIAN__WORKERS": str(workers)}
    command = [sys.executable, "-m", "tests.bench.ceiling_app", "--port", str(port)]
    with served(command, cwd=PROJECT_ROOT, env=env, log_file=out_dir / "ceiling.log", url=url + HEALTH):
        yield url


def measure_ceiling(shared: Path, knobs: harness.Knobs, url: str, raw_dir: Path) -> list[Result]:
    """The ceiling's ``CEILING`` lines (one per repeat of ``knobs``), said as they come."""
    results = harness.measure_ceiling(shared, knobs, url, raw_dir)
    for result in results:
        say(result.line)
    return results


def redraw(results_file: Path, chart: Path | None, *, workers: int) -> int:
    """Ratios and chart again from a saved results file (``bench.txt``), without measuring anything."""
    if not results_file.is_file():
        raise BenchError(f"no results file {results_file}")
    parsed = [r for r in map(parse_line, results_file.read_text().splitlines()) if r is not None]
    runs = [r for r in parsed if r.name != CEILING]
    ceiling_runs = [r for r in parsed if r.name == CEILING]
    return report(runs, ceiling_runs, chart or results_file.with_suffix(".svg"), expected=len(runs), workers=workers)


def report(runs: list[Result], ceiling_runs: list[Result], chart: Path, *, expected: int, workers: int = 2) -> int:
    """Ratios, the chart and the result lines next to it; 1 when a workload failed or had errors."""
    workloads = medians(runs)
    ceiling = medians(ceiling_runs).get(CEILING)
    found = ratios(workloads, ceiling)
    if len(runs) + len(ceiling_runs) > len(workloads) + 1:
        say("# medians over the repeats:")
        say("\n".join([*(r.line for r in workloads.values()), *([ceiling_line(ceiling)] if ceiling else [])]))
    say("\n".join(ratio.line() for ratio in found))
    chart.parent.mkdir(parents=True, exist_ok=True)
    chart.write_text(render_svg(workloads, ceiling, subtitle=_subtitle(runs, workers)))
    lines = [r.line for r in runs] + [r.line for r in ceiling_runs] + [ratio.line() for ratio in found]
    results_file = chart.with_suffix(".txt")
    results_file.write_text("\n".join(lines) + "\n")
    say(f"# chart: {chart}  result lines: {results_file}")
    failed = [r.name for r in runs if r.failures] + ([] if len(runs) == expected else ["a FAILED workload"])
    if failed:
        say(f"# errors or unexpected statuses in: {', '.join(failed)}")
        return 1
    return 0


def _subtitle(runs: list[Result], workers: int) -> str:
    loads = [float(r.fields["load1"].split("->")[0]) for r in runs if r.fields.get("load1", "").count("->") == 1]
    load = f", load1 {min(loads):.2f}-{max(loads):.2f}" if loads else ""
    return f"python -m app, {workers} Granian workers, ENVIRONMENT=production, {time.strftime('%Y-%m-%d')}{load}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="task bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        help="where logs, data and raw wrk output go (default: a new directory under $TMPDIR/litestar-bench/)",
    )
    parser.add_argument(
        "--chart",
        type=Path,
        help="SVG to write (default OUT_DIR/bench.svg); the result lines go next to it, same name with .txt",
    )
    parser.add_argument(
        "--from-results", type=Path, metavar="FILE", help="only redraw the chart and ratios from a saved bench.txt"
    )
    parser.add_argument("--workers", type=int, default=2, help="Granian workers of both servers (default 2)")
    return parser


if __name__ == "__main__":
    sys.exit(main())

"""The soak's numbers: one ``Minute`` per wrk run of ``soak.lua``, and the ``Summary`` judged against issue 13.

A minute line reads ``minute=3 requests=… rps=… p50_ms=… p99_ms=… errors=… rss_mb=… …``; the summary line
``SUMMARY minutes=10 errors=0 rss_growth_pct=… p99_ratio=… verdict=PASS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.soak.process_tree import Interval

# Issue 13, "Acceptance": 0 errors, RSS growth < 10 % between minute 2 and the last, p99 stable within 2x.
MAX_RSS_GROWTH_PCT = 10.0
MAX_P99_RATIO = 2.0
BASELINE_MINUTE = 2
"""Minute 1 warms up (caches fill, pools open, workers reach their working set): it is not compared."""
_WRK_FIELDS = ("requests", "rps", "p50_ms", "p99_ms", "max_ms", "socket_errors", "timeouts", "unexpected", "status_5xx")


class SoakResultError(ValueError):
    """wrk's output holds no usable ``RESULT`` line."""


@dataclass(frozen=True, slots=True)
class Minute:
    """What one minute of the mixed workload gave, with the server's largest RSS while it ran."""

    minute: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int
    """Connect, read and write errors and timeouts: requests that never got a response."""
    timeouts: int
    unexpected: int
    """Responses whose status is not the one their kind expects (5xx included)."""
    status_5xx: int
    rss_mb: float
    """The server's largest RSS (supervisor and workers) sampled during the minute."""
    cpu_ms_per_req: float = 0.0
    """The server's CPU time per request: steady while the server itself stays as fast."""
    server_cpu_pct: float = 0.0
    machine_cpu_pct: float = 0.0
    """Busy share of the whole machine: beside ``server_cpu_pct``, how much the neighbours took."""
    load1: str = "na"
    kinds: str = "-"
    bad: str = "-"
    """``kind:status:count`` of the unexpected responses, to tell what failed."""

    @property
    def errors(self) -> int:
        return self.socket_errors + self.unexpected

    def line(self) -> str:
        return (
            f"minute={self.minute} requests={self.requests} rps={self.rps:.1f} p50_ms={self.p50_ms:.2f} "
            f"p99_ms={self.p99_ms:.2f} max_ms={self.max_ms:.2f} errors={self.errors} "
            f"socket_errors={self.socket_errors} timeouts={self.timeouts} unexpected={self.unexpected} "
            f"status_5xx={self.status_5xx} rss_mb={self.rss_mb:.1f} cpu_ms_per_req={self.cpu_ms_per_req:.3f} "
            f"server_cpu_pct={self.server_cpu_pct:.0f} machine_cpu_pct={self.machine_cpu_pct:.0f} "
            f"load1={self.load1} kinds={self.kinds} bad={self.bad}"
        )


def parse_wrk(output: str, *, minute: int, server: Interval, load1: str = "na") -> Minute:
    """The last ``RESULT`` line of a ``soak.lua`` run, as the minute ``minute``, with what the server used."""
    line = next((x for x in reversed(output.splitlines()) if x.startswith("RESULT ")), None)
    if line is None:
        raise SoakResultError(f"wrk gave no RESULT line: {' '.join(output.split())[:300]}")
    fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
    missing = [key for key in _WRK_FIELDS if key not in fields]
    if missing:
        raise SoakResultError(f"wrk's RESULT line lacks {', '.join(missing)}: {line[:300]}")
    try:
        numbers = {key: float(fields[key]) for key in _WRK_FIELDS}
    except ValueError:
        raise SoakResultError(f"wrk's RESULT line has a field that is not a number: {line[:300]}") from None
    requests = int(numbers["requests"])
    return Minute(
        minute=minute,
        requests=requests,
        rps=numbers["rps"],
        p50_ms=numbers["p50_ms"],
        p99_ms=numbers["p99_ms"],
        max_ms=numbers["max_ms"],
        socket_errors=int(numbers["socket_errors"]),
        timeouts=int(numbers["timeouts"]),
        unexpected=int(numbers["unexpected"]),
        status_5xx=int(numbers["status_5xx"]),
        rss_mb=server.peak_rss_mb,
        cpu_ms_per_req=server.cpu_seconds * 1000 / requests if requests else 0.0,
        server_cpu_pct=server.server_cpu_pct,
        machine_cpu_pct=server.machine_cpu_pct,
        load1=load1,
        kinds=fields.get("kinds", "-"),
        bad=fields.get("bad", "-"),
    )


@dataclass(frozen=True, slots=True)
class Summary:
    """The whole run against the acceptance: errors over every minute, RSS and p99 from BASELINE_MINUTE on."""

    minutes: int
    errors: int
    rss_growth_pct: float
    p99_ratio: float
    rss_mb_baseline: float
    rss_mb_last: float
    p99_ms_min: float
    p99_ms_max: float

    @classmethod
    def of(cls, minutes: list[Minute]) -> Summary:
        compared = [m for m in minutes if m.minute >= BASELINE_MINUTE]
        if not compared:
            raise SoakResultError(f"a soak needs at least {BASELINE_MINUTE} minutes; minute 1 only warms up")
        first, last = compared[0], compared[-1]
        p99s = [m.p99_ms for m in compared]
        growth = (last.rss_mb - first.rss_mb) / first.rss_mb * 100 if first.rss_mb > 0 else float("inf")
        ratio = max(p99s) / min(p99s) if min(p99s) > 0 else float("inf")
        return cls(
            minutes=len(minutes),
            errors=sum(m.errors for m in minutes),
            rss_growth_pct=growth,
            p99_ratio=ratio,
            rss_mb_baseline=first.rss_mb,
            rss_mb_last=last.rss_mb,
            p99_ms_min=min(p99s),
            p99_ms_max=max(p99s),
        )

    @property
    def failures(self) -> list[str]:
        """Each acceptance rule the run broke, in words; empty when it passed."""
        found = []
        if self.errors:
            found.append(f"{self.errors} errors (want 0)")
        if not self.rss_growth_pct < MAX_RSS_GROWTH_PCT:
            found.append(f"RSS grew {self.rss_growth_pct:.1f} % (want < {MAX_RSS_GROWTH_PCT:g} %)")
        if not self.p99_ratio <= MAX_P99_RATIO:
            found.append(f"p99 max/min {self.p99_ratio:.2f} (want <= {MAX_P99_RATIO:g})")
        return found

    @property
    def passed(self) -> bool:
        return not self.failures

    def line(self) -> str:
        return (
            f"SUMMARY minutes={self.minutes} errors={self.errors} rss_growth_pct={self.rss_growth_pct:.1f} "
            f"rss_mb={self.rss_mb_baseline:.1f}->{self.rss_mb_last:.1f} p99_ratio={self.p99_ratio:.2f} "
            f"p99_ms={self.p99_ms_min:.2f}..{self.p99_ms_max:.2f} verdict={'PASS' if self.passed else 'FAIL'}"
        )

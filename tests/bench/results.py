"""The harness's result lines (``W3 rps=… p50_ms=… …``), their medians over repeats, and the ratios of issue 12."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CEILING = "CEILING"
FLOOR = "W0"
_LINE = re.compile(r"^(?P<name>W\d+|CEILING)\s+(?P<fields>\S+=.*)$")
_REQUIRED = ("rps", "p50_ms", "p99_ms")
# Issue 12, "Acceptance": the lowest share each workload must reach (of W0; W0 itself of the ceiling).
TARGETS: dict[str, float] = {"W0": 0.50, "W1": 0.10, "W2": 0.20, "W3": 0.60, "W4": 0.60, "W6": 0.08, "W7": 0.20}


@dataclass(frozen=True, slots=True)
class Result:
    """One measured run of one workload: the numbers of a harness line, and the line itself."""

    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    fields: dict[str, str] = field(default_factory=dict)
    line: str = ""

    @property
    def failures(self) -> int:
        """Socket errors plus responses with another status than the workload expects."""
        return int(self.fields.get("errors", "0")) + int(self.fields.get("unexpected", "0"))


@dataclass(frozen=True, slots=True)
class Ratio:
    name: str
    """``W3/W0`` or ``W0/CEILING``."""
    value: float
    target: float | None

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        return "ok" if self.value >= self.target else "BELOW"

    def line(self) -> str:
        text = f"RATIO {self.name}={self.value:.3f}"
        return text if self.target is None else f"{text} target>={self.target:.2f} {self.verdict}"


def parse_line(line: str) -> Result | None:
    """A result line of ``run_workload.sh`` (or ``CEILING …``); ``None`` for anything else, e.g. ``W5 FAILED …``."""
    match = _LINE.match(line.strip())
    if match is None:
        return None
    fields = dict(part.split("=", 1) for part in match["fields"].split() if "=" in part)
    if not all(key in fields for key in _REQUIRED):
        return None
    try:
        rps, p50, p99 = (float(fields[key]) for key in _REQUIRED)
    except ValueError:
        return None
    return Result(match["name"], rps, p50, p99, fields, line.strip())


def medians(results: list[Result]) -> dict[str, Result]:
    """Per workload, in first-seen order, the run with the median rps (the lower middle one for an even count)."""
    runs: dict[str, list[Result]] = {}
    for result in results:
        runs.setdefault(result.name, []).append(result)
    return {name: sorted(group, key=lambda r: r.rps)[(len(group) - 1) // 2] for name, group in runs.items()}


def ratios(workloads: dict[str, Result], ceiling: Result | None) -> list[Ratio]:
    """``W0/CEILING`` first, then every workload's rps over W0's."""
    floor = workloads.get(FLOOR)
    found: list[Ratio] = []
    if floor is not None and ceiling is not None and ceiling.rps > 0:
        found.append(Ratio(f"{FLOOR}/{CEILING}", floor.rps / ceiling.rps, TARGETS[FLOOR]))
    if floor is not None and floor.rps > 0:
        found.extend(
            Ratio(f"{name}/{FLOOR}", result.rps / floor.rps, TARGETS.get(name))
            for name, result in workloads.items()
            if name != FLOOR
        )
    return found


def ceiling_line(result: Result) -> str:
    return f"{CEILING} rps={result.rps:.1f} p50_ms={result.p50_ms:.2f} p99_ms={result.p99_ms:.2f}"

"""The server's process tree (the supervisor and every worker): resident memory sampled in a thread, CPU time read at
each minute's end, and the whole machine's CPU beside it, to tell a slower server from busy neighbours."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

PROC = Path("/proc")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class TreeUsage:
    rss_kb: int
    cpu_seconds: float
    """User + system time of the processes alive now (the workers live as long as the server)."""


@dataclass(frozen=True, slots=True)
class Interval:
    """What the server used between two ``Sampler.take()`` calls."""

    peak_rss_mb: float
    cpu_seconds: float
    server_cpu_pct: float
    """Of the whole machine (every core = 100 %)."""
    machine_cpu_pct: float
    """Busy share of every core, the server's, wrk's and the neighbours' together."""


def tree_usage(root: int, proc: Path = PROC) -> TreeUsage:
    """RSS and CPU time of ``root`` and all its descendants (zero when ``root`` is gone)."""
    stats: dict[int, list[str]] = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ")".
            stats[int(stat.parent.name)] = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError, ValueError):
            continue  # a process that ended while the tree was read
    tree, frontier = {root} if root in stats else set(), {root}
    while frontier:
        frontier = {pid for pid, fields in stats.items() if int(fields[1]) in frontier and pid not in tree}
        tree.update(frontier)
    rss_kb, ticks = 0, 0
    for pid in tree:
        ticks += int(stats[pid][11]) + int(stats[pid][12])  # utime, stime
        try:
            rss_kb += int((proc / str(pid) / "statm").read_text().split()[1]) * _PAGE_KB
        except (OSError, IndexError, ValueError):
            continue
    return TreeUsage(rss_kb, ticks / _TICKS)


def machine_ticks(proc: Path = PROC) -> tuple[int, int]:
    """``(busy, total)`` jiffies of all cores since boot, from the ``cpu`` line of /proc/stat."""
    values = [int(x) for x in (proc / "stat").read_text().splitlines()[0].split()[1:9]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


class Sampler:
    """Samples the tree's RSS every ``interval`` seconds; ``take()`` hands over the interval since the last call:
    its largest RSS sample (a short spike between two reports is not lost) and the CPU it used."""

    def __init__(self, root: int, interval: float) -> None:
        self._root = root
        self._interval = interval
        self._peak_kb = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="server-sampler", daemon=True)
        self._cpu = tree_usage(root).cpu_seconds
        self._machine = machine_ticks()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def take(self) -> Interval:
        usage = self._sample()  # the interval's end counts too, also when it was shorter than one period
        busy, total = machine_ticks()
        with self._lock:
            peak, self._peak_kb = self._peak_kb, 0
        cpu, self._cpu = usage.cpu_seconds - self._cpu, usage.cpu_seconds
        (busy0, total0), self._machine = self._machine, (busy, total)
        elapsed = max(total - total0, 1)  # jiffies of every core together
        return Interval(peak / 1024, cpu, cpu * _TICKS / elapsed * 100, (busy - busy0) / elapsed * 100)

    def _sample(self) -> TreeUsage:
        usage = tree_usage(self._root)
        with self._lock:
            self._peak_kb = max(self._peak_kb, usage.rss_kb)
        return usage

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

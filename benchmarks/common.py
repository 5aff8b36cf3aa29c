"""Helpers shared by the benchmarks: timing and the ratio table they all print."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass
class Row:
    """One line of a benchmark table: a measured rate, a reference rate measured in the same run, and the goal."""

    name: str
    value: float
    reference: float
    unit: str
    goal: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.reference if self.reference else float("nan")


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Fastest wall time of ``repeats`` calls, in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def print_table(title: str, rows: list[Row]) -> None:
    width = max([58] + [len(r.name) for r in rows])
    print(f"\n{title}")
    print(f"{'measure':<{width}} {'value':>12} {'reference':>12} {'ratio':>7}  goal")
    for r in rows:
        print(f"{r.name:<{width}} {r.value:>10.2f} {r.unit:<1} {r.reference:>10.2f} {r.unit:<1} {r.ratio:>7.2f}  {r.goal}")


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak since start or reset) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)

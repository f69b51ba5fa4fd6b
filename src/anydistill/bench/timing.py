"""Round-robin timing: every call in turn, so the machine's load affects every row alike."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Timing", "cpu_name", "load_average", "round_robin"]


@dataclass(frozen=True)
class Timing:
    """Wall times of one call, in ms: the median, the fastest and the 90th percentile of ``runs``."""

    median_ms: float
    min_ms: float
    p90_ms: float
    runs: int

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        ordered = sorted(seconds)
        n = len(ordered)
        return cls(ordered[n // 2] * 1e3, ordered[0] * 1e3, ordered[min(n - 1, int(0.9 * n))] * 1e3, n)


def round_robin(calls: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, Timing]:
    """Time each call ``rounds`` times, one call of each in turn, after ``warmup`` untimed calls each."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got {rounds}, {warmup}")
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: Timing.of(t) for name, t in times.items()}


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15-minute load averages (zeros where the system has none)."""
    try:
        return os.getloadavg()
    except OSError:
        return 0.0, 0.0, 0.0


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows: the machine line of a figure."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

"""Interleaved timing shared by the benchmarks: every function runs once per repetition, in turn,
so that load from elsewhere on the machine falls on all of them alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_times(functions: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Seconds of each call of each function, the functions taking turns in every repetition."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved(functions: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds of each function over interleaved repetitions."""
    return {name: statistics.median(values) for name, values in interleaved_times(functions, repeat).items()}

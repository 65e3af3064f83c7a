"""Timing helpers: medians of repeated runs, so a noisy shared machine shows in the spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable


async def per_op_us(funcs: dict[str, Callable[[], Awaitable[object]]], n: int, repeats: int = 9) -> dict[str, float]:
    """Per function, the median over ``repeats`` runs of the mean time of one call, in microseconds.
    The functions take turns, one run each per round, so a slow spell of the machine falls on all of
    them alike instead of on whichever was being measured."""
    runs: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(repeats):
        for name, func in funcs.items():
            start = time.perf_counter()
            for _ in range(n):
                await func()
            runs[name].append((time.perf_counter() - start) / n * 1e6)
    return {name: statistics.median(times) for name, times in runs.items()}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

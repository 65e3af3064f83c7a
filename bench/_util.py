"""Timing helpers: medians of repeated runs, so a noisy shared machine shows in the spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable


async def per_op_us(func: Callable[[], Awaitable[object]], n: int, repeats: int = 7) -> float:
    """Median over ``repeats`` runs of the mean time of one call, in microseconds."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            await func()
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

"""How hard the suite pushes: the short mode (the default, for CI) and the long mode.

``SHARED_CACHE_CHAOS=long`` selects the long mode: more readers, longer workloads, every fault
injected several times in one run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MODE_VARIABLE = "SHARED_CACHE_CHAOS"


@dataclass(frozen=True, slots=True)
class ChaosMode:
    name: str
    readers: int  # reader processes
    tenants: int  # rows are spread over this many tenants
    rows: int  # rows of the table, all read by every reader
    background_rows: int  # rows 0..n-1 get the background updates; faults and bursts use the others
    warm_s: float  # workload before the first fault
    between_s: float  # workload after each recovery (and before the next injection)
    repeats: int  # injections of the fault in one run
    burst: int  # updates of a burst (distinct rows, one transaction each)
    # pause between two background updates (uniform): about 10 a second, well under what one Celery
    # worker with two pool processes takes on a small shared machine, so a backlog drains
    write_gap_s: tuple[float, float]
    read_gap_s: tuple[float, float]  # pause between two reads of a reader (uniform)


SHORT = ChaosMode(
    name="short",
    readers=3,
    tenants=4,
    rows=300,
    background_rows=100,
    warm_s=3.0,
    between_s=3.0,
    repeats=1,
    burst=200,
    write_gap_s=(0.05, 0.15),
    read_gap_s=(0.001, 0.006),
)
LONG = ChaosMode(
    name="long",
    readers=4,
    tenants=8,
    rows=600,
    background_rows=200,
    warm_s=5.0,
    between_s=8.0,
    repeats=5,
    burst=200,
    write_gap_s=(0.04, 0.12),
    read_gap_s=(0.001, 0.005),
)


def current_mode() -> ChaosMode:
    """The mode named by ``SHARED_CACHE_CHAOS`` (``short`` when unset)."""
    name = os.environ.get(MODE_VARIABLE, "short").strip().lower() or "short"
    modes = {mode.name: mode for mode in (SHORT, LONG)}
    if name not in modes:
        raise ValueError(f"{MODE_VARIABLE}={name!r}: expected one of {', '.join(modes)}")
    return modes[name]

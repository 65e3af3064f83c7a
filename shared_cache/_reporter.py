"""This process's stats report, and the loop that leaves it in Redis for operators.

``shared-cache stats`` adds up the reports every process leaves under ``Keyspace.stats(origin)``
(kept 60 s, refreshed every ``stats_publish_seconds``): hits, misses and latency per data type and
tier, the busiest tenants, the memory tier, and what the eviction subscriber measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._loop_task import LoopTask
from ._memory import MemoryTier
from ._metrics import CacheStats, percentile
from ._subscriber import EvictionSubscriber

REPORT_TTL_SECONDS = 60


def stats_report(
    origin: str,
    stats: CacheStats,
    memory: MemoryTier | None,
    subscriber: EvictionSubscriber | None,
    top_tenants: int = 20,
) -> dict[str, Any]:
    """One process's stats: the snapshot, the memory tier, and what its subscriber measured."""
    report: dict[str, Any] = {"origin": origin, "at": time.time(), **stats.snapshot(top_tenants)}
    if memory is not None:
        report["memory"] = {"entries": len(memory), "bytes": memory.bytes}
    sub = subscriber
    if sub is not None:
        report["subscriber"] = {
            "connects": sub.connects,
            "events": sub.events,
            "evicted": sub.evicted,
            "malformed": sub.malformed,
            "propagation_ms": {
                "p50": percentile(list(sub.propagation_ms), 0.5),
                "p99": percentile(list(sub.propagation_ms), 0.99),
            },
            "commit_to_evict_ms": {
                "p50": percentile(list(sub.commit_to_evict_ms), 0.5),
                "p99": percentile(list(sub.commit_to_evict_ms), 0.99),
                "count": len(sub.commit_to_evict_ms),
            },
        }
    return report


class StatsPublisher(LoopTask):
    """Calls ``publish`` (which leaves the report in Redis) every ``every`` seconds on the loop that
    started it."""

    def __init__(self, publish: Callable[[], Awaitable[None]], every: float) -> None:
        super().__init__()
        self.publish = publish
        self.every = every

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = self.loop.create_task(self._run(), name="shared_cache-stats")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            with contextlib.suppress(Exception):  # Redis away: the next round tries again
                await self.publish()

"""Metrics of section 9: names, an in-process stats snapshot, and custom metric hooks.

Recording is a couple of dict updates and one append to a bounded ring of latency samples, cheap
enough for the memory-tier hit path. ``snapshot()`` computes ratios and percentiles when asked.
Hooks (``add_hook``) receive every custom metric so a service can forward them to its own exporter;
values of cache entries are never part of a metric.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from typing import Any

METRIC_CACHE_HIT = "cache_hit"
METRIC_CACHE_MISS = "cache_miss"
METRIC_LATENCY = "cache_latency"
METRIC_CACHE_SIZE = "cache_size"

_SAMPLES = 2048

MetricHook = Callable[[str, str, str, float, Mapping[str, Any]], Any]


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class CacheStats:
    """Counters and latency samples per data type and tier (``memory``/``redis``/``db``/...)."""

    def __init__(self) -> None:
        self.hits: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.memory_hits: dict[str, int] = {}  # kept apart: the memory hit path updates it inline
        self.misses: defaultdict[str, int] = defaultdict(int)
        self.errors: defaultdict[str, int] = defaultdict(int)
        self.latency: dict[tuple[str, str], deque[float]] = {}
        self.sizes: defaultdict[str, int] = defaultdict(int)
        self.custom: dict[tuple[str, str, str], list[float]] = {}
        self.hooks: list[MetricHook] = []

    def sample(self, data_type: str, tier: str, latency_ms: float) -> None:
        ring = self.latency.get((data_type, tier))
        if ring is None:
            ring = self.latency[data_type, tier] = deque(maxlen=_SAMPLES)
        ring.append(latency_ms)

    def hit(self, data_type: str, tier: str, latency_ms: float) -> None:
        self.hits[data_type, tier] += 1
        self.sample(data_type, tier, latency_ms)

    def miss(self, data_type: str, source: str, latency_ms: float) -> None:
        self.misses[data_type] += 1
        self.sample(data_type, source, latency_ms)

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def size(self, data_type: str, nbytes: int) -> None:
        self.sizes[data_type] += nbytes

    def reset(self) -> None:
        hooks = self.hooks
        self.__init__()  # type: ignore[misc]
        self.hooks = hooks

    def all_hits(self) -> dict[tuple[str, str], int]:
        merged = dict(self.hits)
        for data_type, count in self.memory_hits.items():
            merged[data_type, "memory"] = merged.get((data_type, "memory"), 0) + count
        return merged

    def snapshot(self) -> dict[str, Any]:
        """Plain-dict view: totals, hit ratio, per type and tier counts and p50/p99 latency (ms)."""
        all_hits = self.all_hits()
        hits = sum(all_hits.values())
        misses = sum(self.misses.values())
        per_type: dict[str, dict[str, Any]] = {}
        for (data_type, tier), count in all_hits.items():
            per_type.setdefault(data_type, {"hits": {}, "misses": 0})["hits"][tier] = count
        for data_type, count in self.misses.items():
            per_type.setdefault(data_type, {"hits": {}, "misses": 0})["misses"] = count
        for data_type, row in per_type.items():
            total = sum(row["hits"].values()) + row["misses"]
            row["hit_ratio"] = (sum(row["hits"].values()) / total) if total else 0.0
            row["latency_ms"] = {
                tier: {"p50": _percentile(list(ring), 0.5), "p99": _percentile(list(ring), 0.99)}
                for (dtype, tier), ring in self.latency.items()
                if dtype == data_type
            }
            row["bytes_written"] = self.sizes.get(data_type, 0)
        return {
            "hits": hits,
            "misses": misses,
            "hit_ratio": hits / (hits + misses) if hits + misses else 0.0,
            "errors": dict(self.errors),
            "by_type": per_type,
            "custom": {
                f"{t}:{d}:{m}": {"count": len(v), "sum": sum(v), "last": v[-1]}
                for (t, d, m), v in self.custom.items()
                if v
            },
        }

    async def track(
        self,
        data_type: str,
        tenant_id: str,
        metric_type: str,
        value: float,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"metric value must be a number, got {value!r}")
        samples = self.custom.setdefault((tenant_id, data_type, metric_type), [])
        samples.append(float(value))
        del samples[:-_SAMPLES]
        for hook in list(self.hooks):
            try:
                result = hook(data_type, tenant_id, metric_type, float(value), metadata or {})
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                self.error("metric_hook")

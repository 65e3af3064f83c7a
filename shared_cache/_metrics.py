"""Metrics of section 9: names, an in-process stats snapshot, per-tenant figures, custom metric hooks.

Recording is a couple of dict updates and one append to a bounded ring of latency samples; a
memory-tier hit does less: each memory entry holds the cell of its data type and tenant (see
:func:`memory_cell`, shared by their entries), so the hot path touches that list and nothing else,
and the totals and percentiles per type and per tenant are gathered from the cells when asked.
``snapshot()`` computes ratios and percentiles.
Hooks receive every custom metric so a service can forward them to its own exporter; values of cache
entries are never part of a metric.

Per tenant, hits and misses are counted for a bounded set of tenants (the busiest: when more than
``capacity`` tenants are tracked, the quieter half is forgotten), with the latency of their recent
reads, so "which tenant is cold, which one is thrashing" has an answer whose size cannot explode.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from typing import Any

METRIC_CACHE_HIT = "cache_hit"
METRIC_CACHE_MISS = "cache_miss"
METRIC_LATENCY = "cache_latency"
METRIC_CACHE_SIZE = "cache_size"

_SAMPLES = 2048
_TENANT_SAMPLES = 256
_CELLS = 20_000  # memory hit counters kept by (data type, tenant) before the unused ones are folded
_CELL_SAMPLES = 256
# A memory cell counts the hits of one (data type, tenant) in the memory tier and keeps the latency
# of one hit in 16: [hits counted in steps of 16, ring of sampled latencies (ms), hits since the last
# step (0 to 15)]; the count is CELL_STEPS + CELL_PHASE. The hot path (_cache_aside) updates it with
# literal indices and 16, as it reads entry slots. The phase stays a small int (CPython keeps those
# preallocated), so a hit allocates nothing; a count that grows by one per hit would allocate a new
# int on every hit past 256, and a sample taken through two method calls cost 6,400 instructions,
# 400 a hit on average.
CELL_STEPS, CELL_RING, CELL_PHASE = range(3)
MemoryCell = list[Any]

MetricHook = Callable[[str, str, str, float, Mapping[str, Any]], Any]
# Per tenant: [hits, misses, recent latencies in ms]
TenantCounts = list[Any]


def new_memory_cell() -> MemoryCell:
    return [0, deque(maxlen=_CELL_SAMPLES), 0]


def cell_hits(cell: MemoryCell) -> int:
    return int(cell[CELL_STEPS] + cell[CELL_PHASE])


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class TenantStats:
    """Hits, misses and recent latencies per tenant, for at most ``capacity`` tenants."""

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.by_tenant: dict[str, TenantCounts] = {}

    def track(self, tenant: str) -> TenantCounts:
        """The counts of ``tenant`` (created on first use; the quieter half goes when full)."""
        counts = self.by_tenant.get(tenant)
        if counts is None:
            if len(self.by_tenant) >= self.capacity:
                self._forget_quietest()
            counts = self.by_tenant[tenant] = [0, 0, deque(maxlen=_TENANT_SAMPLES)]
        return counts

    def _forget_quietest(self) -> None:
        ranked = sorted(self.by_tenant.items(), key=lambda item: item[1][0] + item[1][1], reverse=True)
        self.by_tenant = dict(ranked[: self.capacity // 2])

    def top(
        self,
        n: int,
        memory_hits: dict[str, int] | None = None,
        memory_samples: dict[str, list[float]] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """The ``n`` busiest tenants: hits (``memory_hits`` added), misses, hit ratio and p99 latency
        (ms) of recent reads (``memory_samples``: sampled latencies of memory-tier hits)."""
        extra = memory_hits or {}
        rows = {t: (c[0] + extra.get(t, 0), c[1], c[2]) for t, c in self.by_tenant.items()}
        for tenant, hits in extra.items():
            if hits and tenant not in rows:  # a tenant whose cells were zeroed and not hit since: none
                rows[tenant] = (hits, 0, ())
        ranked = sorted(rows.items(), key=lambda item: item[1][0] + item[1][1], reverse=True)[:n]
        samples = memory_samples or {}
        out: dict[str, dict[str, Any]] = {}
        for tenant, (hits, misses, ring) in ranked:
            total = hits + misses
            out[tenant] = {
                "hits": hits,
                "misses": misses,
                "hit_ratio": hits / total if total else 0.0,
                "p99_ms": percentile([*ring, *samples.get(tenant, ())], 0.99),
            }
        return out


class CacheStats:
    """Counters and latency samples per data type and tier (``memory``/``redis``/``db``/...)."""

    def __init__(self, tenant_capacity: int = 1000) -> None:
        self.hits: defaultdict[tuple[str, str], int] = defaultdict(int)
        # memory-tier hits and their sampled latencies: one cell per (data type, tenant), held by
        # their entries
        self.memory_cells: dict[tuple[str, str], MemoryCell] = {}
        self._folded: defaultdict[tuple[str, str], int] = defaultdict(int)  # counters no entry holds
        self.misses: defaultdict[str, int] = defaultdict(int)
        self.errors: defaultdict[str, int] = defaultdict(int)
        self.latency: dict[tuple[str, str], deque[float]] = {}
        self.sizes: defaultdict[str, int] = defaultdict(int)
        self.custom: dict[tuple[str, str, str], list[float]] = {}
        self.tenants = TenantStats(tenant_capacity)
        self.hooks: list[MetricHook] = []

    def memory_cell(self, data_type: str, tenant: str) -> MemoryCell:
        """The memory-hit cell that entries of ``data_type`` and ``tenant`` carry."""
        key = (data_type, tenant)
        cell = self.memory_cells.get(key)
        if cell is None:
            if len(self.memory_cells) >= _CELLS:
                self._fold()
            cell = self.memory_cells[key] = new_memory_cell()
        return cell

    def _fold(self) -> None:
        """Fold the counters no memory entry holds any more into plain totals (bounded memory)."""
        for key, cell in list(self.memory_cells.items()):
            if sys.getrefcount(cell) <= 3:  # this dict, ``cell`` here, getrefcount's argument
                self._folded[key] += cell_hits(cell)  # its samples go with it: recent ones count
                del self.memory_cells[key]

    def memory_hits(self) -> dict[tuple[str, str], int]:
        """Memory-tier hits by (data type, tenant)."""
        out = dict(self._folded)
        for key, cell in list(self.memory_cells.items()):
            out[key] = out.get(key, 0) + cell_hits(cell)
        return out

    def memory_samples(self) -> dict[tuple[str, str], list[float]]:
        """Sampled latencies (ms) of memory-tier hits by (data type, tenant)."""
        return {key: list(cell[CELL_RING]) for key, cell in list(self.memory_cells.items())}

    def latency_rings(self) -> dict[tuple[str, str], list[float]]:
        """Recent latencies (ms) by (data type, tier), the memory tier's samples gathered from its cells."""
        out = {key: list(ring) for key, ring in list(self.latency.items())}
        for (data_type, _), samples in self.memory_samples().items():
            if samples:
                out.setdefault((data_type, "memory"), []).extend(samples)
        return out

    def sample(self, data_type: str, tier: str, latency_ms: float) -> None:
        ring = self.latency.get((data_type, tier))
        if ring is None:
            ring = self.latency[data_type, tier] = deque(maxlen=_SAMPLES)
        ring.append(latency_ms)

    def hit(self, data_type: str, tier: str, latency_ms: float, tenant: str) -> None:
        self.hits[data_type, tier] += 1
        self.sample(data_type, tier, latency_ms)
        counts = self.tenants.track(tenant)
        counts[0] += 1
        counts[2].append(latency_ms)

    def miss(self, data_type: str, source: str, latency_ms: float, tenant: str) -> None:
        self.misses[data_type] += 1
        self.sample(data_type, source, latency_ms)
        counts = self.tenants.track(tenant)
        counts[1] += 1
        counts[2].append(latency_ms)

    def batch(self, tenant: str, hits: int, misses: int, latency_ms: float) -> None:
        self.hits["embedding", "batch"] += hits
        self.misses["embedding"] += misses
        counts = self.tenants.track(tenant)
        counts[0] += hits
        counts[1] += misses
        counts[2].append(latency_ms)

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def size(self, data_type: str, nbytes: int) -> None:
        self.sizes[data_type] += nbytes

    def reset(self) -> None:
        hooks, capacity, cells = self.hooks, self.tenants.capacity, self.memory_cells
        self.__init__(capacity)  # type: ignore[misc]
        self.hooks = hooks
        for cell in cells.values():  # entries hold them: zero them, keep them
            cell[CELL_STEPS] = cell[CELL_PHASE] = 0
            cell[CELL_RING].clear()
        self.memory_cells = cells

    def all_hits(self) -> dict[tuple[str, str], int]:
        merged = dict(self.hits)
        for (data_type, _), count in self.memory_hits().items():
            merged[data_type, "memory"] = merged.get((data_type, "memory"), 0) + count
        return merged

    def snapshot(self, top_tenants: int = 20) -> dict[str, Any]:
        """Plain-dict view: totals, hit ratio, per type and tier counts and p50/p99 latency (ms), and
        the ``top_tenants`` busiest tenants."""
        all_hits = self.all_hits()
        rings = self.latency_rings()
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
                tier: {"p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99)}
                for (dtype, tier), samples in rings.items()
                if dtype == data_type
            }
            row["bytes_written"] = self.sizes.get(data_type, 0)
        return {
            "hits": hits,
            "misses": misses,
            "hit_ratio": hits / (hits + misses) if hits + misses else 0.0,
            "errors": dict(self.errors),
            "by_type": per_type,
            "tenants": self.top_tenants(top_tenants),
            "custom": {
                f"{t}:{d}:{m}": {"count": len(v), "sum": sum(v), "last": v[-1]}
                for (t, d, m), v in self.custom.items()
                if v
            },
        }

    def top_tenants(self, n: int) -> dict[str, dict[str, Any]]:
        """The ``n`` busiest tenants: hits of every tier, misses, hit ratio, p99 of recent reads."""
        memory: dict[str, int] = {}
        for (_, tenant), count in self.memory_hits().items():
            memory[tenant] = memory.get(tenant, 0) + count
        samples: dict[str, list[float]] = {}
        for (_, tenant), ring in self.memory_samples().items():
            samples.setdefault(tenant, []).extend(ring)
        return self.tenants.top(n, memory, samples)

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

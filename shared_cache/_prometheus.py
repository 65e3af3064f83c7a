"""Prometheus metrics of a process's cache (optional: ``pip install prometheus-client``).

    from prometheus_client import start_http_server
    from shared_cache import register_metrics

    register_metrics()          # the singleton's stats, on the default registry
    start_http_server(9108)

A custom collector: each scrape reads the live counters. Latency histograms are computed at scrape
time from the bounded window of recent samples the stats keep (the last 2,048 per data type and
tier), so they describe recent traffic rather than the process's whole life.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._manager import CacheManager

BUCKETS_MS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0)


def _histogram(samples: Iterable[float]) -> tuple[list[tuple[str, float]], float]:
    values = list(samples)
    buckets = [(str(bound), float(sum(1 for v in values if v <= bound))) for bound in BUCKETS_MS]
    buckets.append(("+Inf", float(len(values))))
    return buckets, float(sum(values))


class CacheCollector:
    """Collects a ``CacheManager``'s stats and its eviction subscriber's measurements."""

    def __init__(self, manager: CacheManager | None = None) -> None:
        from ._manager import CacheManager

        self._manager = manager
        self._default = CacheManager.get_instance

    @property
    def manager(self) -> CacheManager:
        return self._manager or self._default()

    def describe(self) -> list[Any]:
        return []  # unchecked collector: names are discovered at scrape time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        manager = self.manager
        stats = manager.stats
        hits = CounterMetricFamily("shared_cache_hits", "Cache hits", labels=["data_type", "tier"])
        for (data_type, tier), count in stats.all_hits().items():
            hits.add_metric([data_type, tier], count)
        yield hits
        misses = CounterMetricFamily("shared_cache_misses", "Cache misses", labels=["data_type"])
        for data_type, count in stats.misses.items():
            misses.add_metric([data_type], count)
        yield misses
        errors = CounterMetricFamily("shared_cache_errors", "Errors the cache absorbed", labels=["kind"])
        for kind, count in stats.errors.items():
            errors.add_metric([kind], count)
        yield errors
        latency = HistogramMetricFamily(
            "shared_cache_latency_ms", "Read latency (recent samples)", labels=["data_type", "source"]
        )
        for (data_type, tier), ring in list(stats.latency.items()):
            buckets, total = _histogram(ring)
            latency.add_metric([data_type, tier], buckets, total)
        yield latency
        memory = manager.memory
        yield GaugeMetricFamily("shared_cache_memory_entries", "Memory-tier entries", value=len(memory or ()))
        yield GaugeMetricFamily("shared_cache_memory_bytes", "Memory-tier bytes", value=memory.bytes if memory else 0)
        sub = manager.subscriber
        evictions = CounterMetricFamily("shared_cache_evictions", "Memory-tier entries evicted by events")
        evictions.add_metric([], sub.evicted if sub else 0)
        yield evictions
        for name, doc, attr in (
            ("shared_cache_propagation_ms", "Eviction event publish to evicted here", "propagation_ms"),
            ("shared_cache_commit_to_evict_ms", "Change commit to evicted here", "commit_to_evict_ms"),
        ):
            family = HistogramMetricFamily(name, doc)
            buckets, total = _histogram(getattr(sub, attr) if sub else ())
            family.add_metric([], buckets, total)
            yield family


def register_metrics(manager: CacheManager | None = None, registry: Any = None) -> CacheCollector:
    """Register a ``CacheCollector`` (for ``manager``, or whatever the singleton is at scrape time)."""
    from prometheus_client import REGISTRY

    collector = CacheCollector(manager)
    (registry or REGISTRY).register(collector)
    return collector

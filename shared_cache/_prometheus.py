"""Prometheus metrics of one process's cache, read from its ``CacheManager`` at scrape time.

``register_metrics()`` once at start-up, then expose the registry as usual (``start_http_server``,
the ASGI app, your framework's exporter)::

    from prometheus_client import start_http_server
    from shared_cache import register_metrics

    register_metrics()          # the singleton (followed across configure()), on the default registry
    start_http_server(9108)

Nothing is recorded twice: the collector reads the counters and the latency samples the library
already keeps (``CacheStats``, the memory tier, the eviction subscriber) when Prometheus scrapes,
so the read path pays nothing for it. prometheus_client is imported only when a collector is
registered or scraped: importing ``shared_cache`` never imports it (``pip install
'shared-cache[prometheus]'``).

Latencies are *gauge histograms* (``# TYPE ... histogram`` in the classic text format,
``gaugehistogram`` in OpenMetrics; ``_bucket``, ``_gcount`` and ``_gsum`` series): each describes
the bounded window of samples the library keeps (the last 2,048 per data type and tier, the last
4,096 eviction events), not a running total since start. Take quantiles straight from the buckets,
e.g. ``histogram_quantile(0.99, sum by (le) (shared_cache_latency_ms_bucket))``, without ``rate()``:
counts go down as old samples leave the window, which a cumulative histogram must never do.
Memory-tier hits are sampled one in sixteen, so their histogram counts fewer observations than
``shared_cache_hits_total``. A miss is sampled under the ``tier`` it was served from (``db``,
``generated``...).

With several worker processes (gunicorn, uvicorn ``--workers``) each process exposes its own
numbers; prometheus_client's multiprocess mode does not apply to custom collectors.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

from ._manager import CacheManager

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

T = TypeVar("T")

# Milliseconds. A memory-tier hit takes microseconds, a Redis hit a fraction of a millisecond to a
# few, a database fetch tens to hundreds: the buckets cover all of them.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
)  # fmt: skip
# Eviction propagation is a pub/sub hop (sub-millisecond to a few ms); commit-to-evict adds the
# worker's polling, coalescing and queueing, so it reaches into seconds when the worker lags.
EVICTION_BUCKETS_MS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
)  # fmt: skip


def _copy(read: Callable[[], T]) -> T:
    """Copy a structure the event loop's thread may be changing while the scrape thread reads it.

    With the GIL, copying a dict or a deque is one C call and cannot see a change half-way; without
    it (free-threaded builds) a copy may raise "changed size during iteration": try again.
    """
    for _ in range(9):
        try:
            return read()
        except RuntimeError:
            continue
    return read()


def buckets_of(samples: Iterable[float], bounds: Sequence[float]) -> tuple[list[tuple[str, float]], float, int]:
    """Cumulative ``(le, count)`` buckets, the sum and the count of ``samples`` (pure)."""
    ordered = sorted(samples)
    buckets = [(repr(float(bound)), float(bisect.bisect_right(ordered, bound))) for bound in bounds]
    buckets.append(("+Inf", float(len(ordered))))
    return buckets, float(sum(ordered)), len(ordered)


class CacheCollector:
    """A prometheus_client collector over a ``CacheManager`` (``None``: the current singleton).

    With ``manager=None`` the singleton is looked up at each scrape, so a later
    ``CacheManager.configure()`` is followed; a scrape before any manager exists reports no samples
    (it never creates one: that would connect to Redis from the scrape thread).
    """

    def __init__(
        self,
        manager: CacheManager | None = None,
        latency_buckets_ms: Sequence[float] = LATENCY_BUCKETS_MS,
        eviction_buckets_ms: Sequence[float] = EVICTION_BUCKETS_MS,
    ) -> None:
        self._manager = manager
        self.latency_buckets_ms = tuple(sorted(latency_buckets_ms))
        self.eviction_buckets_ms = tuple(sorted(eviction_buckets_ms))

    @property
    def manager(self) -> CacheManager | None:
        return self._manager if self._manager is not None else CacheManager._instance

    def describe(self) -> Iterator[Metric]:
        """The families without samples: a registry checks names without reading the manager."""
        yield from _Families().all()

    def collect(self) -> Iterator[Metric]:
        f = _Families()
        manager = self.manager
        if manager is None:
            yield from f.all()
            return
        stats = manager.stats
        for (data_type, tier), count in _copy(stats.all_hits).items():
            f.hits.add_metric([data_type, tier], count)
        for data_type, count in _copy(lambda: dict(stats.misses)).items():
            f.misses.add_metric([data_type], count)
        for kind, count in _copy(lambda: dict(stats.errors)).items():
            f.errors.add_metric([kind], count)
        for data_type, count in _copy(lambda: dict(stats.sizes)).items():
            f.written.add_metric([data_type], count)
        for (data_type, tier), samples in sorted(_copy(stats.latency_rings).items()):
            buckets, total, _ = buckets_of(samples, self.latency_buckets_ms)
            f.latency.add_metric([data_type, tier], buckets, total)
        memory = manager.memory
        if memory is not None:
            f.memory_entries.add_metric([], len(memory))
            f.memory_bytes.add_metric([], memory.bytes)
            f.memory_max_entries.add_metric([], memory.max_entries)
            f.memory_max_bytes.add_metric([], memory.max_bytes)
        if manager.settings.prometheus_tenant_metrics:
            top = manager.settings.stats_top_tenants
            for tenant, row in _copy(lambda: stats.top_tenants(top)).items():
                f.tenant_hits.add_metric([tenant], row["hits"])
                f.tenant_misses.add_metric([tenant], row["misses"])
                f.tenant_p99.add_metric([tenant], row["p99_ms"])
        sub = manager.subscriber
        if sub is not None:
            f.evictions.add_metric([], sub.evicted)
            f.eviction_events.add_metric([], sub.events)
            f.connects.add_metric([], sub.connects)
            # Not ``sub.alive``: it asks for the running loop, and a scrape runs on another thread.
            f.connected.add_metric([], 1.0 if sub.subscribed.is_set() else 0.0)
            buckets, total, _ = buckets_of(_copy(sub.propagation_ms.copy), self.eviction_buckets_ms)
            f.propagation.add_metric([], buckets, total)
            buckets, total, _ = buckets_of(_copy(sub.commit_to_evict_ms.copy), self.eviction_buckets_ms)
            f.commit_to_evict.add_metric([], buckets, total)
        yield from f.all()


class _Families:
    """One scrape's metric families (prometheus_client is imported here, on first use)."""

    def __init__(self) -> None:
        from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily

        window = "; a gauge histogram of the samples kept (a bounded window), not a running total"
        self.hits = CounterMetricFamily(
            "shared_cache_hits", "Reads served from the cache, by data type and tier.", labels=["data_type", "tier"]
        )
        self.misses = CounterMetricFamily(
            "shared_cache_misses", "Reads the cache could not serve, by data type.", labels=["data_type"]
        )
        self.errors = CounterMetricFamily(
            "shared_cache_errors", "Errors the cache absorbed (reads do not fail for them), by kind.", labels=["kind"]
        )
        self.written = CounterMetricFamily(
            "shared_cache_written_bytes", "Payload bytes written to Redis, by data type.", labels=["data_type"]
        )
        self.latency = GaugeHistogramMetricFamily(
            "shared_cache_latency_ms",
            "Read latency in milliseconds by data type and tier (a miss: the tier it came from)" + window,
            labels=["data_type", "tier"],
        )
        self.memory_entries = GaugeMetricFamily("shared_cache_memory_entries", "Entries in the memory tier.")
        self.memory_bytes = GaugeMetricFamily("shared_cache_memory_bytes", "Payload bytes held by the memory tier.")
        self.memory_max_entries = GaugeMetricFamily("shared_cache_memory_max_entries", "Most entries kept in memory.")
        self.memory_max_bytes = GaugeMetricFamily("shared_cache_memory_max_bytes", "Most bytes kept in memory.")
        self.evictions = CounterMetricFamily(
            "shared_cache_evictions", "Scopes dropped from the memory tier because another process invalidated them."
        )
        self.eviction_events = CounterMetricFamily("shared_cache_eviction_events", "Eviction events received.")
        self.connects = CounterMetricFamily(
            "shared_cache_subscriber_connects", "Subscriptions of the eviction subscriber (each one flushes memory)."
        )
        self.connected = GaugeMetricFamily("shared_cache_subscriber_connected", "1 while the subscriber is subscribed.")
        self.propagation = GaugeHistogramMetricFamily(
            "shared_cache_propagation_ms", "Eviction event publish to evicted here, in milliseconds" + window
        )
        self.commit_to_evict = GaugeHistogramMetricFamily(
            "shared_cache_commit_to_evict_ms", "Database commit of a change to its eviction here, in ms" + window
        )

        # Only with prometheus_tenant_metrics: the busiest tenants of this process (a bounded top-N).
        self.tenant_hits = CounterMetricFamily(
            "shared_cache_tenant_hits", "Reads served from the cache, for the busiest tenants.", labels=["tenant"]
        )
        self.tenant_misses = CounterMetricFamily(
            "shared_cache_tenant_misses", "Reads the cache could not serve, for the busiest tenants.", labels=["tenant"]
        )
        self.tenant_p99 = GaugeMetricFamily(
            "shared_cache_tenant_latency_p99_ms",
            "p99 read latency (ms) of the busiest tenants' recent reads.",
            labels=["tenant"],
        )

    def all(self) -> list[Metric]:
        return list(vars(self).values())


def register_metrics(manager: CacheManager | None = None, registry: CollectorRegistry | None = None) -> CacheCollector:
    """Register a :class:`CacheCollector` (``manager=None``: the singleton, followed across
    ``configure()``) on ``registry`` (default ``prometheus_client.REGISTRY``) and return it."""
    from prometheus_client import REGISTRY

    collector = CacheCollector(manager)
    (registry if registry is not None else REGISTRY).register(collector)
    return collector

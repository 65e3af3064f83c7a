"""Prometheus metrics of the change listener, read from the running ``Listener`` at scrape time.

``serve_metrics(listener, port)`` (from the listener's event loop) starts prometheus_client's HTTP
server on a thread of its own and exposes, on a registry of its own:

- the listener's counters (``listener.stats``): events, processed, windows, tasks by queue, dead
  letters, conservative invalidations, delivery retries, Redis restarts, and invalidated scopes by
  kind when the listener counts them (``scopes:<kind>`` keys, see :data:`SCOPE_STAT_PREFIX`);
- per source: events received, malformed input, reconnects, and for a replication slot its lag
  in bytes (asked of Postgres at scrape time, on the listener's loop);
- the listener's own cache counters (``shared_cache_*``: Redis errors of its invalidations), and
  the process, platform and GC collectors of prometheus_client.

Counters the listener has not incremented yet are exposed as 0, so alert expressions always find a
series (the listener's ``Counter`` only has a key from its first increment).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from shared_cache import CacheCollector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from worker.listener import Listener

# The listener counts each scope it sends for invalidation under ``scopes:<kind>``, the kind being
# the scope's second element (``type``, ``res``, ``agent``, ``conv``, ``coll``) or ``tenant`` for a
# tenant-wide scope. Until it does, shared_cache_worker_invalidated_scopes_total has no samples.
SCOPE_STAT_PREFIX = "scopes:"

# listener.stats key -> (metric name without _total, help)
_COUNTERS: dict[str, tuple[str, str]] = {
    "events": ("shared_cache_worker_events", "Change events taken from the sources."),
    "processed": ("shared_cache_worker_processed", "Change events planned and delivered (or dead-lettered)."),
    "windows": ("shared_cache_worker_windows", "Coalescing windows delivered."),
    "dead_letters": ("shared_cache_worker_dead_letters", "Events parked as dead letters."),
    "dead_letters_lost": (
        "shared_cache_worker_dead_letters_lost",
        "Dead letters that could not be parked (Redis down).",
    ),
    "conservative_invalidations": (
        "shared_cache_worker_conservative_invalidations",
        "Conservative invalidations after a source may have lost changes.",
    ),
    "conservative_invalidation_failures": (
        "shared_cache_worker_conservative_invalidation_failures",
        "Conservative invalidations that failed after every retry.",
    ),
    "delivery_retries": ("shared_cache_worker_delivery_retries", "Window deliveries retried (broker or DB away)."),
    "redis_restarts": ("shared_cache_worker_redis_restarts", "Redis restarts seen (a new run id)."),
}
_TASKS: dict[str, str] = {"invalidation_tasks": "invalidation", "warm_tasks": "warming"}  # stats key -> queue
_SOURCE_COUNTERS: dict[str, tuple[str, str]] = {
    "received": ("shared_cache_worker_source_received", "Change events a source yielded."),
    "malformed": ("shared_cache_worker_source_malformed", "Input a source could not read (dead-lettered)."),
    "reconnects": ("shared_cache_worker_source_reconnects", "Reconnections of a source."),
    "subscriptions": ("shared_cache_worker_source_subscriptions", "(Re)subscriptions of an at-most-once source."),
    "probe_failures": ("shared_cache_worker_source_probe_failures", "Liveness probes that did not come back."),
}


class ListenerCollector:
    """A prometheus_client collector over a running :class:`~worker.listener.Listener`.

    ``loop`` is the listener's event loop: slot lag is a query on the source's own connection, so it
    runs there (for at most ``lag_timeout`` seconds). Without a loop, or when a scrape runs on that
    loop's own thread (it must not block it), the last lag measured is reported instead.
    """

    def __init__(
        self, listener: Listener, loop: asyncio.AbstractEventLoop | None = None, lag_timeout: float = 2.0
    ) -> None:
        self.listener = listener
        self.loop = loop
        self.lag_timeout = lag_timeout
        self.last_lag: dict[str, int] = {}
        self.lag_errors = 0

    def describe(self) -> Iterator[Metric]:
        yield from _WorkerFamilies().all()

    def collect(self) -> Iterator[Metric]:
        f = _WorkerFamilies()
        listener = self.listener
        stats = _copy_counter(listener.stats)
        for key, family in f.counters.items():
            family.add_metric([], stats.get(key, 0))  # 0 before the first one: alerts see a series
        for key, queue in _TASKS.items():
            f.tasks.add_metric([queue], stats.get(key, 0))
        for key, count in sorted(stats.items()):
            if key.startswith(SCOPE_STAT_PREFIX):
                f.scopes.add_metric([key.removeprefix(SCOPE_STAT_PREFIX)], count)
        f.queue.add_metric([], listener.queue.qsize())
        for source in list(listener.sources):
            name = source.name
            f.durable.add_metric([name], 1.0 if source.durable else 0.0)
            for attr, family in f.source_counters.items():
                value = getattr(source, attr, None)
                if isinstance(value, int):
                    family.add_metric([name], value)
            if getattr(source, "lag_bytes", None) is not None:
                lag = self._lag(source)
                if lag is not None:
                    f.slot_lag.add_metric([name], lag)
        f.lag_errors.add_metric([], self.lag_errors)
        yield from f.all()

    def _lag(self, source: Any) -> int | None:
        """The source's slot lag now, or the last one measured if it cannot be asked now."""
        loop = self.loop
        running: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):
            running = asyncio.get_running_loop()
        if loop is not None and loop.is_running() and running is not loop:
            future = asyncio.run_coroutine_threadsafe(source.lag_bytes(), loop)
            try:
                self.last_lag[source.name] = int(future.result(self.lag_timeout))
            except Exception:  # a timeout, or Postgres away
                future.cancel()
                self.lag_errors += 1  # Postgres slow or away: the last value is shown, and counted
        return self.last_lag.get(source.name)


class _WorkerFamilies:
    """One scrape's metric families (prometheus_client is imported here, on first use)."""

    def __init__(self) -> None:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self.counters = {key: CounterMetricFamily(name, doc) for key, (name, doc) in _COUNTERS.items()}
        self.tasks = CounterMetricFamily("shared_cache_worker_tasks", "Celery tasks sent, by queue.", labels=["queue"])
        self.scopes = CounterMetricFamily(
            "shared_cache_worker_invalidated_scopes",
            "Scopes sent for invalidation, by kind (tenant, type, res, agent, conv, coll).",
            labels=["kind"],
        )
        self.queue = GaugeMetricFamily("shared_cache_worker_queue_depth", "Events waiting for the next window.")
        self.durable = GaugeMetricFamily(
            "shared_cache_worker_source_durable", "1 if the source replays what it missed.", labels=["source"]
        )
        self.source_counters = {
            attr: CounterMetricFamily(name, doc, labels=["source"]) for attr, (name, doc) in _SOURCE_COUNTERS.items()
        }
        self.slot_lag = GaugeMetricFamily(
            "shared_cache_worker_slot_lag_bytes",
            "WAL bytes between the replication slot's confirmed position and the current one.",
            labels=["source"],
        )
        self.lag_errors = CounterMetricFamily(
            "shared_cache_worker_slot_lag_errors", "Scrapes that could not measure a slot's lag."
        )

    def all(self) -> list[Metric]:
        return [
            *self.counters.values(),
            self.tasks,
            self.scopes,
            self.queue,
            self.durable,
            *self.source_counters.values(),
            self.slot_lag,
            self.lag_errors,
        ]


def _copy_counter(stats: Any) -> dict[str, int]:
    # The loop's thread updates the Counter while a scrape reads it: one C-level copy, retried if a
    # free-threaded build sees it change.
    for _ in range(9):
        with contextlib.suppress(RuntimeError):
            return dict(stats)
    return dict(stats)


def make_registry(listener: Listener, loop: asyncio.AbstractEventLoop | None = None) -> CollectorRegistry:
    """A registry with the listener's collector, its cache's, and the process/platform/GC collectors."""
    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry()
    registry.register(ListenerCollector(listener, loop))
    registry.register(CacheCollector(listener.cache))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


async def serve_metrics(
    listener: Listener, port: int, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None
) -> None:
    """Serve ``/metrics`` for ``listener`` on ``addr:port`` until cancelled, then stop the server.

    Run it as a task on the listener's event loop (``asyncio.create_task(serve_metrics(...))``, as
    ``python -m worker`` does): prometheus_client's HTTP server answers on a thread of its own, and
    slot lag is measured on this loop at scrape time.
    """
    from prometheus_client import start_http_server

    loop = asyncio.get_running_loop()
    if registry is None:
        registry = make_registry(listener, loop)
    else:
        registry.register(ListenerCollector(listener, loop))
    server, thread = start_http_server(port, addr=addr, registry=registry)
    try:
        await asyncio.Event().wait()  # until cancelled
    finally:
        # shutdown() waits for the serving thread's poll (up to 0.5 s): off the loop.
        await asyncio.shield(asyncio.to_thread(_stop, server, thread))


def _stop(server: Any, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(5)

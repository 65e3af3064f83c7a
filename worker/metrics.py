"""Prometheus metrics of the change listener, read from the running ``Listener`` at scrape time.

``serve_metrics(listener, port)`` (from the listener's event loop) starts prometheus_client's HTTP
server on a thread of its own and exposes, on a registry of its own:

- the listener's counters (``listener.counters``, a :class:`~worker.counters.ListenerCounters`): every
  counter field as ``shared_cache_worker_<field>_total``, tasks sent by queue, invalidated scopes
  by kind, and gauges of what is pending (invalidations not applied yet, windows not confirmed,
  dead letters waiting to be parked), the event queue and the known tenants;
- per source (``ChangeSource.counters()``): events received, malformed input, reconnects and any
  other counter a source reports, and for a replication slot its lag in bytes (asked of Postgres at
  scrape time, on the listener's loop);
- the listener's own cache counters (``shared_cache_*``: Redis errors of its invalidations), and
  the process, platform and GC collectors of prometheus_client.

Every counter is exposed from 0, so alert expressions always find a series.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from shared_cache import CacheCollector
from worker.counters import counter_fields

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from worker.listener import Listener
    from worker.sources.base import ChangeSource

PREFIX = "shared_cache_worker_"
_TASKS: dict[str, str] = {"invalidation_tasks": "invalidation", "warm_tasks": "warming"}  # counter -> queue
# Help of the counters sources commonly report; any other gets a generic one.
_SOURCE_HELP: dict[str, str] = {
    "received": "Change events a source yielded.",
    "malformed": "Input a source could not read (dead-lettered).",
    "reconnects": "Reconnections of a source.",
    "subscriptions": "(Re)subscriptions of an at-most-once source.",
    "probe_failures": "Liveness probes that did not come back.",
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
        counters = listener.counters
        for name, family in f.counters.items():
            family.add_metric([], getattr(counters, name))
        for name, queue in _TASKS.items():
            f.tasks.add_metric([queue], getattr(counters, name))
        for kind, count in sorted(dict(counters.scopes).items()):
            f.scopes.add_metric([kind], count)
        f.queue.add_metric([], listener.queue.qsize())
        f.pending.add_metric(["invalidations"], listener.acks.pending_calls)
        f.pending.add_metric(["windows"], listener.acks.pending_windows)
        f.pending.add_metric(["held_dead_letters"], listener.acks.held)
        f.tenants.add_metric([], len(listener.tenants))
        source_families: dict[str, Any] = {}
        for source in list(listener.sources):
            f.durable.add_metric([source.name], 1.0 if source.durable else 0.0)
            for key, value in sorted(source.counters().items()):
                if key not in source_families:
                    source_families[key] = f.source_counter(key)
                source_families[key].add_metric([source.name], value)
            lag = self._lag(source)
            if lag is not None:
                f.slot_lag.add_metric([source.name], lag)
        f.lag_errors.add_metric([], self.lag_errors)
        yield from f.all()
        yield from source_families.values()

    def _lag(self, source: ChangeSource) -> int | None:
        """The source's slot lag now, or the last one measured if it cannot be asked now; None for a
        source without one."""
        loop = self.loop
        running: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):
            running = asyncio.get_running_loop()
        if loop is not None and loop.is_running() and running is not loop:
            future = asyncio.run_coroutine_threadsafe(source.lag_bytes(), loop)
            try:
                lag = future.result(self.lag_timeout)
            except Exception:  # a timeout, or Postgres away
                future.cancel()
                self.lag_errors += 1  # Postgres slow or away: the last value is shown, and counted
            else:
                if lag is None:
                    return None
                self.last_lag[source.name] = int(lag)
        return self.last_lag.get(source.name)


class _WorkerFamilies:
    """One scrape's metric families (prometheus_client is imported here, on first use)."""

    def __init__(self) -> None:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self._counter = CounterMetricFamily
        self.counters = {f.name: CounterMetricFamily(PREFIX + f.name, f.metadata["help"]) for f in counter_fields()}
        self.tasks = CounterMetricFamily(PREFIX + "tasks", "Celery tasks sent, by queue.", labels=["queue"])
        self.scopes = CounterMetricFamily(
            "shared_cache_worker_invalidated_scopes",
            "Scopes sent for invalidation, by kind (tenant, type, res, agent, conv, coll).",
            labels=["kind"],
        )
        self.queue = GaugeMetricFamily(PREFIX + "queue_depth", "Events waiting for the next window.")
        self.pending = GaugeMetricFamily(
            PREFIX + "pending",
            "Not done yet: invalidations sent and not applied, windows not confirmed, dead letters not parked.",
            labels=["what"],
        )
        self.tenants = GaugeMetricFamily(PREFIX + "known_tenants", "Tenants the listener has seen changes of.")
        self.durable = GaugeMetricFamily(
            "shared_cache_worker_source_durable", "1 if the source replays what it missed.", labels=["source"]
        )
        self.slot_lag = GaugeMetricFamily(
            "shared_cache_worker_slot_lag_bytes",
            "WAL bytes between the replication slot's confirmed position and the current one.",
            labels=["source"],
        )
        self.lag_errors = CounterMetricFamily(
            "shared_cache_worker_slot_lag_errors", "Scrapes that could not measure a slot's lag."
        )

    def source_counter(self, key: str) -> Metric:
        help_text = _SOURCE_HELP.get(key, f"A source's {key.replace('_', ' ')} counter.")
        family: Metric = self._counter(f"{PREFIX}source_{key}", help_text, labels=["source"])
        return family

    def all(self) -> list[Metric]:
        return [
            *self.counters.values(),
            self.tasks,
            self.scopes,
            self.queue,
            self.pending,
            self.tenants,
            self.durable,
            self.slot_lag,
            self.lag_errors,
        ]


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

"""Prometheus exposition: the cache's collector after real reads on a real Redis, and the listener's
metrics scraped over HTTP from a running listener (a real Postgres slot, a real Redis channel)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from devtools.embedded import EmbeddedPostgres as PostgresServer
from devtools.embedded import free_port
from shared_cache import CacheManager, get_with_cache_aside, register_metrics
from shared_cache._prometheus import EVICTION_BUCKETS_MS, LATENCY_BUCKETS_MS, CacheCollector
from tasks.settings import TaskSettings
from tests.waiting import wait_until
from worker.app import make_app
from worker.listener import Listener
from worker.metrics import ListenerCollector, serve_metrics
from worker.rules import Planner
from worker.settings import ListenerSettings
from worker.sources.postgres import PostgresLogicalSource
from worker.sources.redis_pubsub import RedisPubSubSource

ROOT = Path(__file__).resolve().parent.parent


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, from an exposition text."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def expected_buckets(values: list[float], bounds: tuple[float, ...]) -> dict[str, float]:
    counts = {repr(float(b)): float(sum(1 for v in values if v <= b)) for b in bounds}
    counts["+Inf"] = float(len(values))
    return counts


async def test_cache_collector_after_real_reads(manager: CacheManager, sync_redis: redis.Redis) -> None:
    registry = CollectorRegistry()
    assert isinstance(register_metrics(manager, registry), CacheCollector)
    db_ms: list[float] = []
    redis_ms: list[float] = []

    def fetch(rid: str, tenant: str, ctx: Any) -> dict[str, str]:
        return {"id": rid}

    value, metrics = await get_with_cache_aside("document", "d1", "acme", fetch)
    assert value == {"id": "d1"}
    assert metrics["source"] == "db"
    db_ms.append(metrics["latency_ms"])
    for _ in range(16):  # memory-tier hits: one in sixteen is timed
        assert (await get_with_cache_aside("document", "d1", "acme", fetch))[1]["tier"] == "memory"
    assert manager.memory is not None
    manager.memory.clear()
    _, metrics = await get_with_cache_aside("document", "d1", "acme", fetch)
    assert metrics["tier"] == "redis"
    redis_ms.append(metrics["latency_ms"])
    # An entry whose bytes do not decode: counted as an error, dropped, then fetched again (a miss).
    plan = manager.plan("document", "acme", "d2")
    sync_redis.set(plan.entry_keys[0], b"0,0,0|0|\xffnot a payload")
    _, metrics = await get_with_cache_aside("document", "d2", "acme", fetch)
    assert metrics["source"] == "db"
    db_ms.append(metrics["latency_ms"])

    text = generate_latest(registry).decode()
    got = samples(text)
    assert got['shared_cache_hits_total{data_type="document",tier="memory"}'] == 16
    assert got['shared_cache_hits_total{data_type="document",tier="redis"}'] == 1
    assert got['shared_cache_misses_total{data_type="document"}'] == 2
    assert got['shared_cache_errors_total{kind="corrupt_entry"}'] == 1
    assert got['shared_cache_written_bytes_total{data_type="document"}'] > 0
    assert "# TYPE shared_cache_latency_ms histogram" in text
    for tier, values in (("db", db_ms), ("redis", redis_ms)):
        for le, count in expected_buckets(values, LATENCY_BUCKETS_MS).items():
            assert got[f'shared_cache_latency_ms_bucket{{data_type="document",le="{le}",tier="{tier}"}}'] == count
        assert got[f'shared_cache_latency_ms_gcount{{data_type="document",tier="{tier}"}}'] == len(values)
        assert got[f'shared_cache_latency_ms_gsum{{data_type="document",tier="{tier}"}}'] == pytest.approx(sum(values))
    assert got['shared_cache_latency_ms_gcount{data_type="document",tier="memory"}'] == 1  # the 16th hit
    assert got["shared_cache_memory_entries"] == len(manager.memory) == 2
    assert got["shared_cache_memory_bytes"] == manager.memory.bytes > 0
    assert got["shared_cache_memory_max_entries"] == manager.settings.memory_max_entries
    assert got["shared_cache_subscriber_connected"] == 1 and got["shared_cache_subscriber_connects_total"] >= 1

    await manager.invalidate("acme", "document", "d1")
    # dropped lazily: still held until met, never served
    assert samples(generate_latest(registry).decode())["shared_cache_memory_entries"] == 2
    _, metrics = await get_with_cache_aside("document", "d1", "acme", lambda r, t, c: {"id": r})
    assert metrics["tier"] != "memory"
    assert samples(generate_latest(registry).decode())["shared_cache_memory_entries"] == 2  # stored anew


async def test_eviction_metrics_from_another_process_invalidation(manager: CacheManager) -> None:
    registry = CollectorRegistry()
    register_metrics(manager, registry)
    await get_with_cache_aside("document", "d1", "acme", lambda r, t, c: {"id": r})
    assert manager.memory is not None and len(manager.memory) == 1
    # Another process (another manager, the same Redis and channel) invalidates, with the commit
    # time of the change behind it: 200 ms ago.
    other = CacheManager(manager.settings.model_copy(update={"memory_enabled": False}))
    try:
        await other.invalidate_scopes("acme", [("acme", "res", "document", "d1")], "test", time.time() - 0.2)
    finally:
        await other.close()
    await wait_until(lambda: manager.subscriber.commit_to_evict_ms)
    got = samples(generate_latest(registry).decode())
    assert got["shared_cache_evictions_total"] == 1 and got["shared_cache_eviction_events_total"] >= 1
    _, metrics = await get_with_cache_aside("document", "d1", "acme", lambda r, t, c: {"id": r})
    assert metrics["tier"] != "memory"  # the entry was invalidated here too
    commit = list(manager.subscriber.commit_to_evict_ms)
    assert commit and min(commit) >= 200
    for le, count in expected_buckets(commit, EVICTION_BUCKETS_MS).items():
        assert got[f'shared_cache_commit_to_evict_ms_bucket{{le="{le}"}}'] == count
    assert got['shared_cache_commit_to_evict_ms_bucket{le="100.0"}'] == 0
    assert got["shared_cache_propagation_ms_gcount"] == len(manager.subscriber.propagation_ms) >= 1


async def test_register_metrics_follows_the_singleton(manager: CacheManager) -> None:
    registry = CollectorRegistry()
    register_metrics(registry=registry)  # no manager: whatever the singleton is at scrape time
    await get_with_cache_aside("agent_config", "a1", "acme", lambda r, t, c: {"id": r})
    assert samples(generate_latest(registry).decode())['shared_cache_misses_total{data_type="agent_config"}'] == 1
    CacheManager._instance = None  # no manager at all: a scrape reports nothing, and creates none
    text = generate_latest(registry).decode()
    assert "# TYPE shared_cache_hits_total counter" in text and "shared_cache_misses_total{" not in text
    assert CacheManager._instance is None
    CacheManager._instance = manager


def test_importing_shared_cache_does_not_import_prometheus_client() -> None:
    code = (
        "import sys, shared_cache, shared_cache._prometheus\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
        "shared_cache.CacheCollector(None)\n"
        "assert 'prometheus_client' not in sys.modules, 'imported by the constructor'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


# -- the listener -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE documents (id text PRIMARY KEY, tenant_id text, collection_id text, title text)")
    yield server
    server.cleanup()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


async def test_listener_metrics_served_over_http(manager: CacheManager, redis_url: str, pg: PostgresServer) -> None:
    ts = TaskSettings(broker_url=f"{redis_url.rsplit('/', 1)[0]}/6")
    planner = Planner()
    listener = Listener(ListenerSettings(), planner, make_app(ts), manager, redis_url, ts)
    listener.add_source(PostgresLogicalSource(pg.dsn, planner.tables, slot="prom_slot"))
    channel = f"{manager.prefix}changes"
    listener.add_source(RedisPubSubSource(redis_url, channel, planner.tables, listener.on_gap, listener.on_dead_letter))
    stop = asyncio.Event()
    run = await listener.start(stop, within=20)
    port = free_port()
    served = asyncio.create_task(serve_metrics(listener, port, addr="127.0.0.1"))
    publisher = redis.Redis.from_url(redis_url)
    try:
        await wait_until(lambda: listener.stats["conservative_invalidations"] >= 1)  # the channel's first subscribe
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO documents VALUES ('d1', 'acme', 'c1', 't'), ('d2', 'acme', 'c2', 't')")
        event = {"table": "documents", "type": "UPDATE", "record": {"id": "d3", "tenant_id": "beta"}}
        publisher.publish(channel, orjson.dumps(event))
        publisher.publish(channel, b"{not json")  # a dead letter
        await wait_until(lambda: listener.stats["processed"] >= 3 and listener.stats["dead_letters"] >= 1)

        text = await asyncio.to_thread(scrape, port)
        got = samples(text)
        stats = dict(listener.stats)
        assert got["shared_cache_worker_events_total"] == stats["events"] >= 3
        assert got["shared_cache_worker_processed_total"] == stats["processed"]
        assert got["shared_cache_worker_windows_total"] == stats["windows"] >= 1
        assert got['shared_cache_worker_tasks_total{queue="invalidation"}'] == stats["invalidation_tasks"] >= 2
        assert got['shared_cache_worker_tasks_total{queue="warming"}'] == 0
        assert got["shared_cache_worker_dead_letters_total"] == stats["dead_letters"] >= 1
        assert got["shared_cache_worker_conservative_invalidations_total"] == stats["conservative_invalidations"]
        # Two documents with a collection (their collection's scope) and one without, all as resources.
        assert got['shared_cache_worker_invalidated_scopes_total{kind="coll"}'] == stats["scopes:coll"] == 2
        assert got['shared_cache_worker_invalidated_scopes_total{kind="res"}'] == stats["scopes:res"] >= 3
        assert got['shared_cache_worker_source_received_total{source="postgres"}'] == 2
        assert got['shared_cache_worker_source_received_total{source="redis"}'] == 1
        assert got['shared_cache_worker_source_malformed_total{source="redis"}'] == 1
        assert got['shared_cache_worker_source_durable{source="postgres"}'] == 1
        # Slot lag, asked of Postgres on the listener's loop while the scrape waits on its thread.
        lag = await listener.sources[0].lag_bytes()  # type: ignore[attr-defined]
        assert got['shared_cache_worker_slot_lag_bytes{source="postgres"}'] >= 0
        assert abs(got['shared_cache_worker_slot_lag_bytes{source="postgres"}'] - lag) < 1 << 20
        assert 'slot_lag_bytes{source="redis"}' not in text  # an at-most-once source has no slot
        assert got["shared_cache_worker_queue_depth"] == 0
        assert "shared_cache_hits_total" in text and "process_cpu_seconds_total" in text

        # A scrape on the loop's own thread must not block the loop: it reports the last lag measured.
        collector = ListenerCollector(listener, asyncio.get_running_loop())
        collector.last_lag["postgres"] = 123
        registry = CollectorRegistry()
        registry.register(collector)
        assert (
            samples(generate_latest(registry).decode())['shared_cache_worker_slot_lag_bytes{source="postgres"}'] == 123
        )
    finally:
        served.cancel()
        await asyncio.gather(served, return_exceptions=True)
        stop.set()
        await asyncio.wait_for(run, 10)
        publisher.close()
    with pytest.raises(urllib.error.URLError):  # the server stopped with the task
        await asyncio.to_thread(scrape, port)


def test_histogram_buckets_are_cumulative() -> None:
    from shared_cache._prometheus import buckets_of

    buckets, total, count = buckets_of([0.2, 3.0, 3.0, 70.0], (1, 5, 50))
    assert buckets == [("1.0", 1.0), ("5.0", 3.0), ("50.0", 3.0), ("+Inf", 4.0)]
    assert (total, count) == (76.2, 4)
    assert re.fullmatch(r"[0-9.]+", buckets[0][0])

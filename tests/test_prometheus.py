"""Prometheus exposition of the cache's and the listener's metrics (real Redis, real HTTP)."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client import CollectorRegistry, generate_latest

from shared_cache import CacheManager, get_with_cache_aside, register_metrics
from tasks.settings import WorkerSettings
from tests.redis_server import free_port
from worker.app import make_app
from worker.listener import Listener
from worker.rules import Planner


async def test_cache_metrics(manager: CacheManager) -> None:
    registry = CollectorRegistry()
    register_metrics(manager, registry)
    for _ in range(3):
        await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 1})
    manager.memory.clear()  # type: ignore[union-attr]
    await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 1})
    text = generate_latest(registry).decode()
    assert 'shared_cache_hits_total{data_type="document",tier="memory"} 2.0' in text
    assert 'shared_cache_hits_total{data_type="document",tier="redis"} 1.0' in text
    assert 'shared_cache_misses_total{data_type="document"} 1.0' in text
    assert 'shared_cache_latency_ms_bucket{data_type="document",le="+Inf",source="db"} 1.0' in text
    assert "shared_cache_memory_entries 1.0" in text
    await manager.invalidate("t", "document", "d")
    assert "shared_cache_memory_entries 0.0" in generate_latest(registry).decode()


async def test_listener_metrics_over_http(manager: CacheManager, redis_url: str) -> None:
    from worker.metrics import serve_metrics

    settings = WorkerSettings(broker_url=redis_url.rsplit("/", 1)[0] + "/1")
    listener = Listener(settings, Planner(), make_app(settings), manager, redis_url)
    listener.stats["events"] += 7
    port = free_port()
    task = asyncio.create_task(serve_metrics(listener, port))
    try:
        await asyncio.sleep(0.3)
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read())
        text = body.decode()
        assert "shared_cache_worker_events_total 7.0" in text
        assert "shared_cache_hits_total" in text or "shared_cache_memory_entries" in text
    finally:
        task.cancel()
        await listener.redis.aclose()

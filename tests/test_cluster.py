"""Scaling past one Redis: the library and a worker task on a real 3-master Redis Cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from shared_cache import CacheManager, get_embeddings_batch_with_cache, get_with_cache_aside, invalidate_document_update
from tasks.invalidation import invalidate
from tests.node import Node
from tests.redis_cluster import RedisCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    started = RedisCluster().start()
    yield started
    started.cleanup()


@pytest.fixture
async def cmanager(cluster: RedisCluster) -> AsyncIterator[CacheManager]:
    mgr = CacheManager.configure(redis_url=cluster.url, redis_cluster=True, key_prefix="cl:", ttl_jitter=0.0)
    yield mgr
    await mgr.close()
    CacheManager._instance = None


def owner_ports(cluster: RedisCluster, pattern: str) -> set[int]:
    ports = set()
    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        if client.keys(pattern):
            ports.add(node.port)
        client.close()
    return ports


async def test_reads_hierarchy_and_invalidation_on_a_cluster(cmanager: CacheManager, cluster: RedisCluster) -> None:
    calls = 0

    def fetch(resource_id: str, tenant_id: str, ctx: Any) -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {"v": calls}

    for tenant in ("alpha", "beta", "gamma", "delta"):
        value, metrics = await get_with_cache_aside("document", "d1", tenant, fetch, agent_id="a", collection_id="c")
        assert metrics["source"] == "db"
        cmanager.memory.clear()  # type: ignore[union-attr]
        value, metrics = await get_with_cache_aside("document", "d1", tenant, fetch, agent_id="a", collection_id="c")
        assert metrics["tier"] == "redis" and value["v"] == calls
    # tenants live on different nodes; each tenant's keys on exactly one
    assert len(set().union(*[owner_ports(cluster, f"cl:{{{t}}}:*") for t in ("alpha", "beta", "gamma", "delta")])) > 1
    assert all(len(owner_ports(cluster, f"cl:{{{t}}}:*")) == 1 for t in ("alpha", "beta"))

    await invalidate_document_update("alpha", "d1", "c")
    cmanager.memory.clear()  # type: ignore[union-attr]
    _, metrics = await get_with_cache_aside("document", "d1", "alpha", fetch, agent_id="a", collection_id="c")
    assert metrics["source"] == "db"
    _, metrics = await get_with_cache_aside("document", "d1", "beta", fetch, agent_id="a", collection_id="c")
    assert metrics["source"] == "cache"


async def test_batch_embeddings_on_a_cluster(cmanager: CacheManager) -> None:
    texts = [f"text {i}" for i in range(200)]
    provider_calls: list[int] = []

    def provider(batch: list[str]) -> list[list[float]]:
        provider_calls.append(len(batch))
        return [[float(len(t)), 1.0] for t in batch]

    await get_embeddings_batch_with_cache(texts, "alpha", "m", provider)
    cmanager.memory.clear()  # type: ignore[union-attr]
    out, metrics = await get_embeddings_batch_with_cache(texts, "alpha", "m", provider)
    assert metrics["redis_hits"] == 200 and provider_calls == [200]
    assert out[5] == [6.0, 1.0]


async def test_worker_invalidation_task_and_eviction_fan_out_on_a_cluster(
    cmanager: CacheManager, cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node(cluster.url, "cl:", "shared_cache:evictions", cluster=True)
    try:
        await cmanager.set("agent_config", "a9", {"v": 1}, "gamma")
        await asyncio.sleep(0.1)  # the set's own eviction announcement reaches the node first
        node.read("agent_config", "a9", "gamma")
        assert node.read("agent_config", "a9", "gamma")[1]["tier"] == "memory"
        # the task body as a worker process runs it: its own loop and library configuration
        monkeypatch.setenv("SHARED_CACHE_REDIS_URL", cluster.url)
        monkeypatch.setenv("SHARED_CACHE_REDIS_CLUSTER", "true")
        monkeypatch.setenv("SHARED_CACHE_KEY_PREFIX", "cl:")
        scopes = [["gamma", "agent", "a9"], ["gamma", "res", "agent_config", "a9"]]
        assert await asyncio.to_thread(invalidate.run, "gamma", scopes, "test") == 2
        deadline = time.monotonic() + 5
        while node.stats()["evicted"] < 1 and time.monotonic() < deadline:  # noqa: ASYNC110 (another process)
            await asyncio.sleep(0.02)
        assert node.stats()["evicted"] >= 1
        assert await cmanager.get("agent_config", "a9", "gamma") is None
    finally:
        node.stop()

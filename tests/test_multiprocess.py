"""Several processes on one real Redis: leases, eviction fan-out, reconnection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis

from shared_cache import CacheManager
from tests.node import Node

PREFIX = "mp:"
CHANNEL = "mp:evictions"


@pytest.fixture
def nodes(redis_url: str, sync_redis: redis.Redis) -> Iterator[list[Node]]:
    sync_redis.flushdb()
    started: list[Node] = []
    yield started
    for node in started:
        node.stop()


def test_concurrent_misses_in_several_processes_fetch_about_once(
    redis_url: str, sync_redis: redis.Redis, nodes: list[Node]
) -> None:
    sync_redis.hset(f"{PREFIX}table", "t/doc", "v1")
    nodes += [Node(redis_url, PREFIX, CHANNEL, fetch_delay=0.3) for _ in range(4)]
    for node in nodes:
        node.send("read", "document", "doc", "t")
    results = [node.recv() for node in nodes]
    assert all(value == {"v": "v1"} for value, _ in results)
    assert int(sync_redis.get(f"{PREFIX}db_calls")) == 1  # type: ignore[arg-type]
    assert sorted(m["source"] for _, m in results) == ["cache", "cache", "cache", "db"]


async def test_invalidation_evicts_other_processes_memory(
    redis_url: str, sync_redis: redis.Redis, nodes: list[Node]
) -> None:
    sync_redis.hset(f"{PREFIX}table", "t/doc", "old")
    nodes += [Node(redis_url, PREFIX, CHANNEL) for _ in range(2)]
    for node in nodes:
        node.read("document", "doc", "t")
        assert node.read("document", "doc", "t")[1]["tier"] == "memory"

    mgr = CacheManager.configure(redis_url=redis_url, key_prefix=PREFIX, eviction_channel=CHANNEL)
    try:
        sync_redis.hset(f"{PREFIX}table", "t/doc", "new")  # the "commit"
        await mgr.invalidate("t", "document", "doc")
        await asyncio.sleep(0.05)
        for node in nodes:
            assert node.stats()["evicted"] == 1
            value, _metrics = node.read("document", "doc", "t")
            assert value == {"v": "new"}
    finally:
        await mgr.close()


async def test_node_whose_subscription_is_killed_serves_nothing_stale(
    redis_url: str, sync_redis: redis.Redis, nodes: list[Node]
) -> None:
    sync_redis.hset(f"{PREFIX}table", "t/doc", "old")
    nodes.append(Node(redis_url, PREFIX, CHANNEL))
    node = nodes[0]
    node.read("document", "doc", "t")
    assert node.read("document", "doc", "t")[1]["tier"] == "memory"
    connects = node.stats()["connects"]

    killed = sync_redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    assert int(killed) >= 1
    # published while the node is away: this message is lost for it
    mgr = CacheManager.configure(redis_url=redis_url, key_prefix=PREFIX, eviction_channel=CHANNEL)
    try:
        sync_redis.hset(f"{PREFIX}table", "t/doc", "new")
        await mgr.invalidate("t", "document", "doc")
    finally:
        await mgr.close()
    deadline = time.monotonic() + 5
    while node.stats()["connects"] == connects and time.monotonic() < deadline:  # noqa: ASYNC110 (another process)
        await asyncio.sleep(0.02)
    assert node.stats()["connects"] == connects + 1  # it came back
    value, metrics = node.read("document", "doc", "t")
    assert value == {"v": "new"} and metrics["source"] == "db"

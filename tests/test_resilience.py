"""The cache never breaks a read: dead Redis, corrupt entries, failing deserializers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis

from devtools.embedded import EmbeddedRedis as RedisServer
from devtools.embedded import free_port
from shared_cache import CacheManager, get_with_cache_aside


async def test_dead_redis_reads_still_work_and_breaker_keeps_them_fast() -> None:
    mgr = CacheManager.configure(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        breaker_threshold=2,
        breaker_reset_seconds=30,
        subscriber_enabled=False,
    )
    calls = 0

    def fetch(resource_id: str, tenant_id: str, ctx: Any) -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {"v": calls}

    for i in range(1, 6):
        value, metrics = await get_with_cache_aside("document", "d", "t", fetch)
        assert value == {"v": i} and metrics["source"] == "db" and metrics["stored"] is False
    assert mgr.stats.errors["redis"] >= 5
    assert mgr.redis.breaker.is_open and mgr.redis.breaker.opened == 1
    start = time.perf_counter()
    for _ in range(100):
        await get_with_cache_aside("document", "d", "t", fetch)
    assert (time.perf_counter() - start) / 100 < 0.002  # no connect attempt while open
    assert await mgr.get("document", "d", "t") is None
    await mgr.close()


async def test_breaker_recovers_when_redis_comes_back() -> None:
    server = RedisServer()
    mgr = CacheManager.configure(
        redis_url=server.url, breaker_threshold=1, breaker_reset_seconds=0.2, subscriber_enabled=False
    )
    try:
        value, metrics = await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 1})
        assert metrics["stored"] is False and mgr.redis.breaker.is_open
        server.start()
        await asyncio.sleep(0.25)
        value, metrics = await get_with_cache_aside("document", "d2", "t", lambda r, t, c: {"v": 2})
        assert metrics["stored"] is True and not mgr.redis.breaker.is_open
        mgr.memory.clear()  # type: ignore[union-attr]
        value, metrics = await get_with_cache_aside("document", "d2", "t", lambda r, t, c: {"v": 0})
        assert value == {"v": 2} and metrics["tier"] == "redis"
    finally:
        await mgr.close()
        server.cleanup()


async def test_redis_restart_under_a_running_manager(redis_url: str) -> None:
    server = RedisServer().start()
    mgr = CacheManager.configure(redis_url=server.url, breaker_threshold=1, breaker_reset_seconds=0.1)
    try:
        await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 1})
        server.stop()
        mgr.memory.clear()  # type: ignore[union-attr]
        value, metrics = await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 2})
        assert value == {"v": 2} and metrics["source"] == "db"
        server.start()
        await asyncio.sleep(0.15)
        value, metrics = await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 3})
        assert value == {"v": 3} and metrics["stored"] is True  # the restarted server was empty
    finally:
        await mgr.close()
        server.cleanup()


async def test_corrupt_entry_is_deleted_and_db_answers(manager: CacheManager, sync_redis: redis.Redis) -> None:
    _, metrics = await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 1})
    key = metrics["key"]
    tag, expiry, _payload = sync_redis.get(key).split(b"|", 2)  # type: ignore[union-attr]
    sync_redis.set(key, tag + b"|" + expiry + b"|j{broken json")
    manager.memory.clear()  # type: ignore[union-attr]
    value, metrics = await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 2})
    assert value == {"v": 2} and metrics["source"] == "db"
    assert manager.stats.errors["corrupt_entry"] == 1
    assert sync_redis.get(key).endswith(b'|j{"v":2}')  # type: ignore[union-attr]
    assert sync_redis.get(key).startswith(tag + b"|")  # type: ignore[union-attr]


async def test_garbage_without_a_tag_is_treated_as_stale(manager: CacheManager, sync_redis: redis.Redis) -> None:
    sync_redis.set(f"{manager.prefix}{{t}}:document:d", b"\x80\x81 not ours")
    value, metrics = await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 1})
    assert value == {"v": 1} and metrics["source"] == "db" and metrics["stored"] is True


async def test_deserializer_error_falls_back_to_db(manager: CacheManager) -> None:
    def bad_deserializer(data: Any) -> Any:
        raise RuntimeError("deserializer bug")

    await get_with_cache_aside("complex_data", "x", "t", lambda r, t, c: {"a": 1}, serializer=lambda v: v)
    manager.memory.clear()  # type: ignore[union-attr]
    _value, metrics = await get_with_cache_aside(
        "complex_data", "x", "t", lambda r, t, c: {"a": 2}, serializer=lambda v: v, deserializer=bad_deserializer
    )
    assert metrics["source"] == "db" and manager.stats.errors["corrupt_entry"] >= 1

"""The cache never breaks a read: dead Redis, corrupt entries, failing deserializers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis

from devtools.embedded import EmbeddedRedis as RedisServer
from devtools.embedded import free_port
from shared_cache import CacheManager, get_with_cache_aside
from tests.round_trips import RoundTripProxy


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


async def test_one_lost_connection_is_one_breaker_failure_however_many_reads_were_on_it(redis_url: str) -> None:
    """Twenty reads in flight on the connection when it drops (a Redis restart under load): each
    read still gets its value, the breaker counts one failure and stays closed (it used to count
    twenty and open, sending every read to the database for ``breaker_reset_seconds``), and the
    next reads reconnect and use Redis."""
    with RoundTripProxy(redis_url, delay=0.05) as proxy:
        mgr = CacheManager.configure(
            redis_url=proxy.url, key_prefix="lost1:", breaker_threshold=3, breaker_reset_seconds=30, ttl_jitter=0.0
        )
        try:
            keys = [f"d{i}" for i in range(20)]
            for key in keys:
                await get_with_cache_aside("document", key, "t", lambda r, t, c: {"id": r})
            mgr.memory.clear()  # type: ignore[union-attr]
            fetched: list[str] = []

            def fetch(resource_id: str, tenant_id: str, ctx: Any) -> dict[str, str]:
                fetched.append(resource_id)
                return {"id": resource_id}

            proxy.cut_on("EVALSHA")
            reads = await asyncio.gather(*(get_with_cache_aside("document", key, "t", fetch) for key in keys))
            assert proxy.cuts == 1
            assert [value for value, _ in reads] == [{"id": key} for key in keys]
            assert sorted(fetched) == sorted(keys)  # each from the database, once
            assert mgr.redis.breaker.failures == 1 and not mgr.redis.breaker.is_open
            mgr.memory.clear()  # type: ignore[union-attr]
            value, metrics = await get_with_cache_aside("document", "d0", "t", fetch)
            assert value == {"id": "d0"} and metrics["tier"] == "redis"
            assert mgr.redis.breaker.failures == 0
        finally:
            await mgr.close()
            CacheManager._instance = None


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


def _reads_on_new_loops(count: int) -> list[tuple[float, Any]]:
    """``asyncio.run(get_with_cache_aside(...))`` ``count`` times, as a Celery task does per task."""

    async def read() -> Any:
        value, _metrics = await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 1})
        return value

    timed = []
    for _ in range(count):
        start = time.perf_counter()
        value = asyncio.run(read())
        timed.append((time.perf_counter() - start, value))
    return timed


async def test_redis_down_costs_a_new_loop_no_wait_on_the_subscriber() -> None:
    """Memory tier on (the default), nothing listening: a refused connection ends the wait for the
    eviction subscriber at once, and the breaker, once open, holds for every loop of the process."""
    mgr = CacheManager.configure(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", breaker_threshold=3, connect_timeout_seconds=0.5
    )
    timed = await asyncio.to_thread(_reads_on_new_loops, 6)
    assert [value for _, value in timed] == [{"v": 1}] * 6
    assert max(seconds for seconds, _ in timed) < 0.25, timed  # it once waited 1 s on each new loop
    assert mgr.redis.breaker.is_open
    await mgr.close()


async def test_a_hung_redis_costs_a_new_loop_at_most_the_timeouts() -> None:
    """A server that accepts connections and never answers: the first read on a new loop waits for the
    subscriber at most the connect timeout, then its own call times out; once the breaker is open,
    no loop waits at all."""
    import socket

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    try:
        mgr = CacheManager.configure(
            redis_url=f"redis://127.0.0.1:{hung.getsockname()[1]}/0",
            breaker_threshold=2,
            connect_timeout_seconds=0.3,
            socket_timeout_seconds=0.3,
        )
        timed = await asyncio.to_thread(_reads_on_new_loops, 5)
        assert [value for _, value in timed] == [{"v": 1}] * 5
        first, *_rest = [seconds for seconds, _ in timed]
        assert first < 0.3 + 0.3 + 0.3, timed  # the subscriber's wait + the read's own timeout, and margin
        assert max(seconds for seconds, _ in timed[2:]) < 0.1, timed  # the breaker is open for every loop
        await mgr.close()
    finally:
        hung.close()

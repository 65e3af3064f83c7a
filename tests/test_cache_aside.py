"""get_with_cache_aside against a real Redis server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from shared_cache import CacheManager, Context, get_with_cache_aside
from tests.conftest import Monitor


class Db:
    """A stand-in for the caller's database function: counts calls, returns the current row."""

    def __init__(self, value: Any = None) -> None:
        self.value = value
        self.calls = 0

    async def fetch(self, resource_id: str, tenant_id: str, ctx: Any) -> Any:
        self.calls += 1
        await asyncio.sleep(0)
        return None if self.value is None else {"id": resource_id, "tenant": tenant_id, "v": self.value}


async def test_flow_db_then_memory_then_redis(manager: CacheManager) -> None:
    db = Db(1)
    value, metrics = await get_with_cache_aside("document", "doc_1", "tenant_a", db.fetch)
    assert value == {"id": "doc_1", "tenant": "tenant_a", "v": 1}
    assert metrics["source"] == "db" and metrics["tier"] is None
    assert metrics["key"] == f"{manager.prefix}{{tenant_a}}:document:doc_1"
    assert metrics["latency_ms"] >= 0

    value, metrics = await get_with_cache_aside("document", "doc_1", "tenant_a", db.fetch)
    assert (metrics["source"], metrics["tier"], metrics["level"]) == ("cache", "memory", "tenant")

    manager.memory.clear()  # type: ignore[union-attr]
    value, metrics = await get_with_cache_aside("document", "doc_1", "tenant_a", db.fetch)
    assert (metrics["source"], metrics["tier"]) == ("cache", "redis")
    assert value["v"] == 1 and db.calls == 1


async def test_hierarchy_costs_one_round_trip(manager: CacheManager, redis_url: str) -> None:
    await manager.set("document", "d", {"x": 1}, "t")  # stored at the basic level only
    manager.memory.clear()  # type: ignore[union-attr]
    await manager.start()
    db = Db(2)
    await manager.get("document", "warm-up", "t")  # loads lookup.lua on the server once
    with Monitor(redis_url) as seen:
        value, metrics = await get_with_cache_aside(
            "document", "d", "t", db.fetch, agent_id="a", conversation_id="c", collection_id="l"
        )
    assert value == {"x": 1} and metrics["tier"] == "redis" and metrics["level"] == "tenant"
    assert seen.commands == ["EVALSHA"]  # six levels, their generations and the lease: one round trip
    assert db.calls == 0


async def test_writes_go_to_the_most_specific_key(manager: CacheManager, sync_redis: redis.Redis) -> None:
    db = Db(3)
    _, metrics = await get_with_cache_aside("document", "d", "t", db.fetch, agent_id="a", collection_id="l")
    assert metrics["key"] == f"{manager.prefix}{{t}}:document:agent:a:coll:l:d"
    assert sync_redis.exists(metrics["key"]) == 1
    assert sync_redis.exists(f"{manager.prefix}{{t}}:document:d") == 0
    # a request without the agent does not see it
    _, metrics = await get_with_cache_aside("document", "d", "t", db.fetch)
    assert metrics["source"] == "db" and db.calls == 2


async def test_context_supplies_ids(manager: CacheManager) -> None:
    db = Db(1)
    ctx = Context(tenant_id="t", agent_id="a")
    _, metrics = await get_with_cache_aside("document", "d", None, db.fetch, ctx=ctx)
    assert metrics["key"] == f"{manager.prefix}{{t}}:document:agent:a:d"


async def test_single_flight_in_one_process(manager: CacheManager) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def slow_fetch(resource_id: str, tenant_id: str, ctx: Any) -> dict[str, int]:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return {"n": 1}

    tasks = [asyncio.create_task(get_with_cache_aside("document", "hot", "t", slow_fetch)) for _ in range(50)]
    await started.wait()
    await asyncio.sleep(0.05)
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert all(value == {"n": 1} for value, _ in results)
    # each caller has its own copy
    results[0][0]["n"] = 99
    assert results[1][0] == {"n": 1}


async def test_stale_value_is_never_stored_after_invalidation(manager: CacheManager, sync_redis: redis.Redis) -> None:
    """Force the classic race: read old row, writer commits and invalidates, reader stores."""
    row = {"v": "old"}

    async def fetch_then_writer_commits(resource_id: str, tenant_id: str, ctx: Any) -> dict[str, str]:
        seen = dict(row)  # the reader has read the old row...
        row["v"] = "new"  # ...then the writer commits...
        await CacheManager.invalidate("t", "document", resource_id)  # ...and invalidates
        return seen

    value, metrics = await get_with_cache_aside("document", "d", "t", fetch_then_writer_commits)
    assert value == {"v": "old"}  # this read began before the commit: returning old is fine
    assert metrics["stored"] is False  # but it was not stored as fresh
    assert sync_redis.exists(metrics["key"]) == 0
    assert manager.stats.errors["stale_write_refused"] == 1

    async def fetch(resource_id: str, tenant_id: str, ctx: Any) -> dict[str, str]:
        return dict(row)

    value, metrics = await get_with_cache_aside("document", "d", "t", fetch)
    assert value == {"v": "new"} and metrics["source"] == "db"


async def test_invalidation_between_read_and_memory_store(manager: CacheManager) -> None:
    """An eviction that lands while a miss is in flight keeps the value out of the memory tier."""

    async def fetch(resource_id: str, tenant_id: str, ctx: Any) -> dict[str, int]:
        manager.memory.evict_scope(("t", "res", "document", "d"))  # type: ignore[union-attr]
        return {"v": 1}

    await get_with_cache_aside("document", "d", "t", fetch)
    assert len(manager.memory) == 0  # type: ignore[arg-type]


async def test_generate_and_none(manager: CacheManager) -> None:
    db = Db(None)
    value, metrics = await get_with_cache_aside(
        "document", "x", "t", db.fetch, generate_func=lambda r, t, c: {"gen": r}
    )
    assert value == {"gen": "x"} and metrics["source"] == "generated"
    value, metrics = await get_with_cache_aside("document", "x", "t", db.fetch)
    assert metrics["source"] == "cache"

    value, metrics = await get_with_cache_aside(
        "document", "missing", "t", db.fetch, generate_func=lambda r, t, c: None
    )
    assert value is None and metrics["source"] == "none"
    await get_with_cache_aside("document", "missing", "t", db.fetch)
    assert db.calls == 3  # no negative caching by default: the database is asked again


async def test_negative_caching(redis_url: str) -> None:
    mgr = CacheManager.configure(redis_url=redis_url, key_prefix="neg:", negative_ttl_seconds=30)
    try:
        db = Db(None)
        for _ in range(3):
            value, _ = await get_with_cache_aside("document", "missing", "t", db.fetch)
            assert value is None
        assert db.calls == 1
        mgr.memory.clear()  # type: ignore[union-attr]
        value, metrics = await get_with_cache_aside("document", "missing", "t", db.fetch)
        assert value is None and metrics["tier"] == "redis" and db.calls == 1
        assert 0 < await mgr.ttl("document", "missing", "t") <= 30
    finally:
        await mgr.close()


async def test_caller_errors_propagate_and_nothing_is_cached(manager: CacheManager, sync_redis: redis.Redis) -> None:
    def broken(resource_id: str, tenant_id: str, ctx: Any) -> Any:
        raise KeyError("db exploded")

    with pytest.raises(KeyError, match="db exploded"):
        await get_with_cache_aside("document", "d", "t", broken)
    assert not sync_redis.keys(f"{manager.prefix}*:document:*")
    assert not sync_redis.keys(f"{manager.prefix}*#lease*")  # the lease was released
    value, _ = await get_with_cache_aside("document", "d", "t", Db(1).fetch)
    assert value["v"] == 1


async def test_unserializable_value_is_returned_not_cached(manager: CacheManager, sync_redis: redis.Redis) -> None:
    obj = object()
    value, metrics = await get_with_cache_aside("document", "d", "t", lambda r, t, c: obj)
    assert value is obj and metrics["stored"] is False
    assert manager.stats.errors["serialize"] == 1
    assert not sync_redis.keys(f"{manager.prefix}*:document:*")


async def test_custom_serializer_round_trip(manager: CacheManager) -> None:
    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    kwargs: dict[str, Any] = {"serializer": lambda p: {"x": p.x}, "deserializer": lambda d: Point(d["x"])}
    await get_with_cache_aside("complex_data", "p", "t", lambda r, t, c: Point(4), **kwargs)
    for _ in range(2):  # memory, then Redis
        value, metrics = await get_with_cache_aside("complex_data", "p", "t", lambda r, t, c: Point(0), **kwargs)
        assert isinstance(value, Point) and value.x == 4 and metrics["source"] == "cache"
        manager.memory.clear()  # type: ignore[union-attr]


async def test_memory_hit_value_can_be_mutated(manager: CacheManager) -> None:
    await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"tags": ["a"], "n": 1})
    first, _ = await get_with_cache_aside("document", "d", "t", Db(0).fetch)
    first["tags"].append("mutated")
    first["n"] = 2
    second, metrics = await get_with_cache_aside("document", "d", "t", Db(0).fetch)
    assert metrics["tier"] == "memory" and second == {"tags": ["a"], "n": 1}
    await get_with_cache_aside("document", "flat", "t", lambda r, t, c: {"n": 1})
    flat, _ = await get_with_cache_aside("document", "flat", "t", Db(0).fetch)
    flat["n"] = 5
    assert (await get_with_cache_aside("document", "flat", "t", Db(0).fetch))[0] == {"n": 1}


async def test_a_key_read_often_stays_in_a_full_memory_tier(redis_url: str) -> None:
    """Through the read path: a key hit between reads of 1,000 others stays a memory hit in a tier
    of 100 entries, and its database is read once."""
    manager = CacheManager.configure(redis_url=redis_url, key_prefix="lru:", memory_max_entries=100, ttl_jitter=0.0)
    try:
        hot, cold = Db(1), Db(2)
        await get_with_cache_aside("document", "hot", "t", hot.fetch)
        for i in range(1_000):
            await get_with_cache_aside("document", f"cold{i}", "t", cold.fetch)
            _, metrics = await get_with_cache_aside("document", "hot", "t", hot.fetch)
            assert metrics["tier"] == "memory", i
        assert hot.calls == 1 and cold.calls == 1_000
        assert len(manager.memory) == 100  # type: ignore[arg-type]
        _, metrics = await get_with_cache_aside("document", "cold0", "t", cold.fetch)
        assert metrics["tier"] == "redis"  # the cold ones went, oldest first
    finally:
        await manager.close()
        CacheManager._instance = None


async def test_key_plans_are_kept_for_the_latest_identities_and_dropped_one_at_a_time(redis_url: str) -> None:
    """A full plan cache drops its oldest plan, not all of them (that was a 160 ms stall at 50,000
    plans); reads are right whether their plan was kept or built again; 0 keeps none."""
    manager = CacheManager.configure(redis_url=redis_url, key_prefix="plans:", plan_cache_size=3, ttl_jitter=0.0)
    try:
        plans = [manager.plan("document", "t", f"d{i}") for i in range(5)]
        assert list(manager._plans) == [("document", "t", f"d{i}", None, None, None) for i in (2, 3, 4)]
        assert manager.plan("document", "t", "d4") is plans[4]  # kept
        rebuilt = manager.plan("document", "t", "d0")  # dropped first, built again the same
        assert rebuilt is not plans[0] and rebuilt == plans[0] and len(manager._plans) == 3
        db = Db(1)
        for i in range(6):
            await get_with_cache_aside("document", f"d{i}", "t", db.fetch)
        manager.memory.clear()  # type: ignore[union-attr]
        for i in range(6):
            value, metrics = await get_with_cache_aside("document", f"d{i}", "t", db.fetch)
            assert value == {"id": f"d{i}", "tenant": "t", "v": 1} and metrics["tier"] == "redis"
        assert db.calls == 6
    finally:
        await manager.close()
        CacheManager._instance = None
    manager = CacheManager.configure(redis_url=redis_url, key_prefix="plans:", plan_cache_size=0)
    try:
        assert manager.plan("document", "t", "d0") == plans[0] and not manager._plans
    finally:
        await manager.close()
        CacheManager._instance = None


async def test_memory_hit_metrics_are_the_callers_own(manager: CacheManager) -> None:
    """A hit's metrics are copied from a dict the entry keeps: what one caller does to them must not
    reach the next hit's."""
    await get_with_cache_aside("document", "m", "t", lambda r, t, c: {"n": 1})
    hits = []
    for _ in range(3):
        _, metrics = await get_with_cache_aside("document", "m", "t", Db(0).fetch)
        hits.append(metrics)
        metrics["key"], metrics["latency_ms"], metrics["extra"] = "changed", -1.0, True
    assert len({id(m) for m in hits}) == 3
    _, metrics = await get_with_cache_aside("document", "m", "t", Db(0).fetch)
    assert metrics["key"] == f"{manager.prefix}{{t}}:document:m" and "extra" not in metrics
    assert metrics["tier"] == "memory" and metrics["level"] == "tenant" and metrics["latency_ms"] >= 0
    assert set(metrics) == {"source", "tier", "key", "level", "latency_ms"}


async def test_ttl_per_type_and_explicit(manager: CacheManager) -> None:
    await get_with_cache_aside("query_result", "q", "t", lambda r, t, c: [1])
    assert 290 <= await manager.ttl("query_result", "q", "t") <= 300
    await get_with_cache_aside("embedding", "e", "t", lambda r, t, c: [0.5])
    assert 86000 <= await manager.ttl("embedding", "e", "t") <= 86400
    await get_with_cache_aside("document", "p", "t", lambda r, t, c: 1, ttl=0)
    assert await manager.ttl("document", "p", "t") == -1
    await get_with_cache_aside("unknown_type", "u", "t", lambda r, t, c: 1)
    assert 3500 <= await manager.ttl("unknown_type", "u", "t") <= 3600
    assert await manager.ttl("document", "never", "t") == -2


async def test_invalid_ids_fail_before_any_io(manager: CacheManager) -> None:
    db = Db(1)
    with pytest.raises(ValueError, match="invalid tenant_id 'bad:tenant'"):
        await get_with_cache_aside("document", "d", "bad:tenant", db.fetch)
    with pytest.raises(ValueError, match="invalid tenant_id None"):
        await get_with_cache_aside("document", "d", None, db.fetch)
    assert db.calls == 0


async def test_works_across_event_loops(redis_url: str) -> None:
    """A Celery task runs asyncio.run() per task: the singleton must survive loop changes."""
    mgr = CacheManager.configure(redis_url=redis_url, key_prefix="loops:")

    async def read() -> Any:
        return await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 1})

    def run_in_new_loop() -> Any:
        return asyncio.run(read())

    for _ in range(3):
        value, _metrics = await asyncio.to_thread(run_in_new_loop)
        assert value == {"v": 1}
    await mgr.close()


async def test_invalidated_entries_are_reclaimed_when_met(manager: CacheManager, sync_redis: redis.Redis) -> None:
    await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 1}, agent_id="a")
    await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 1})
    top = f"{manager.prefix}{{t}}:document:agent:a:d"
    assert sync_redis.exists(top)
    await manager.invalidate_agent_complete("t", "a")  # the agent-level entry is now stale
    value, metrics = await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 2}, agent_id="a")
    assert value == {"v": 1} and metrics["level"] == "tenant"  # the basic level is still valid
    assert not sync_redis.exists(top)  # and the stale one was deleted on the way

"""Bad input never breaks a read, and a hit never lies: corrupt entries, values JSON would change,
broken counters, ids of the wrong type (real Redis)."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import uuid
from typing import Any

import numpy as np
import pytest
import redis

from shared_cache import (
    CacheManager,
    InvalidKeyError,
    SerializationError,
    get_embeddings_batch_with_cache,
    get_with_cache_aside,
    serialize_for_cache,
)


class Provider:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return [[float(len(t)), 0.5, 0.25] for t in texts]


def entry_key(manager: CacheManager, text: str) -> str:
    return f"{manager.prefix}{{t}}:embedding:{manager.embedding_resource_id(text, 'm')}"


CORRUPT = {
    "garbage": b"\x80 not an embedding",
    "bad json": b'j{"not": json',
    "empty": b"",
    "bad length": b"e\x03\x00\x00\x00\x00\x00\x80?",
}


@pytest.mark.parametrize("memory", [True, False], ids=["memory-tier", "no-memory-tier"])
@pytest.mark.parametrize("payload", list(CORRUPT.values()), ids=list(CORRUPT))
async def test_a_corrupt_embedding_entry_is_counted_regenerated_and_written_over(
    redis_url: str, sync_redis: redis.Redis, payload: bytes, memory: bool
) -> None:
    manager = CacheManager.configure(redis_url=redis_url, key_prefix=f"corrupt{memory}{len(payload)}:",
                                     memory_enabled=memory, ttl_jitter=0.0)  # fmt: skip
    try:
        provider = Provider()
        await get_embeddings_batch_with_cache(["a", "b"], "t", "m", provider)
        key = entry_key(manager, "a")
        tag, expiry, _ = sync_redis.get(key).split(b"|", 2)  # type: ignore[union-attr]
        sync_redis.set(key, tag + b"|" + expiry + b"|" + payload)  # a current tag, a payload that is not one
        if manager.memory is not None:
            manager.memory.clear()
        out, metrics = await get_embeddings_batch_with_cache(["a", "b"], "t", "m", provider)
        assert out == [[1.0, 0.5, 0.25], [1.0, 0.5, 0.25]]
        assert provider.calls[-1] == ["a"]  # regenerated once, the good one served
        assert (metrics["cache_hits"], metrics["cache_misses"], metrics["corrupt"]) == (1, 1, 1)
        assert manager.stats.errors["corrupt_entry"] == 1
        assert sync_redis.get(key).split(b"|", 2)[2][:1] == b"e"  # type: ignore[union-attr]
        again, metrics = await get_embeddings_batch_with_cache(["a"], "t", "m", provider)
        assert again == [[1.0, 0.5, 0.25]] and metrics["cache_hits"] == 1 and len(provider.calls) == 2
    finally:
        await manager.close()


async def test_a_corrupt_entry_in_the_memory_tier_is_not_served(manager: CacheManager) -> None:
    provider = Provider()
    await get_embeddings_batch_with_cache(["a"], "t", "m", provider)
    assert manager.memory is not None
    ident = ("embedding", "t", manager.embedding_resource_id("a", "m"), None, None, None)
    manager.memory.set(ident, b"j[1, 2]", 60, "k", "tenant", (("t",),))  # not an embedding
    out, metrics = await get_embeddings_batch_with_cache(["a"], "t", "m", provider)
    assert out == [[1.0, 0.5, 0.25]] and metrics["corrupt"] == 1 and metrics["redis_hits"] == 1


async def test_an_embedding_that_is_no_vector_is_returned_not_cached(manager: CacheManager) -> None:
    with pytest.raises(SerializationError, match="numpy array of dtype"):
        serialize_for_cache(np.array(["a", "b"]), "embedding")
    value, metrics = await get_with_cache_aside("embedding", "e1", "t", lambda r, t, c: np.array(["a", "b"]))
    assert list(value) == ["a", "b"] and metrics["source"] == "db" and metrics["stored"] is False
    assert manager.stats.errors["serialize"] == 1


@dataclasses.dataclass
class Point:
    x: int


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


REFUSED = {
    "nan": float("nan"),
    "inf": {"score": math.inf},
    "nested nan": [1.0, float("nan")],
    "datetime": datetime.datetime(2026, 1, 2, 3, 4, 5),
    "date": {"day": datetime.date(2026, 1, 2)},
    "uuid": uuid.UUID(int=7),
    "enum": Color.RED,
    "dataclass": Point(1),
    "set": {1, 2},
    "bytes": b"raw",
    "numpy nan": np.array([1.0, np.nan]),
}


@pytest.mark.parametrize("value", list(REFUSED.values()), ids=list(REFUSED))
async def test_a_value_json_would_change_is_returned_never_cached(manager: CacheManager, value: Any) -> None:
    with pytest.raises(SerializationError):
        serialize_for_cache(value, "document")
    calls = 0

    def fetch(resource_id: str, tenant_id: str, ctx: Any) -> Any:
        nonlocal calls
        calls += 1
        return value

    first, metrics = await get_with_cache_aside("document", "v", "t", fetch)
    assert first is value and metrics["stored"] is False
    second, metrics = await get_with_cache_aside("document", "v", "t", fetch)
    assert second is value and metrics["source"] == "db" and calls == 2  # never served from a cache
    assert manager.stats.errors["serialize"] == 2


async def test_values_json_reads_as_equal_are_returned_as_json_reads_them_miss_and_hit(
    manager: CacheManager,
) -> None:
    """Tuples come back as lists, an int enum as its int: the miss returns that too, so a hit never
    returns something else than the miss did."""
    value = {"rows": [(1, "a"), (2, "b")], "pair": (1.5, None), "level": Level.HIGH}
    miss, metrics = await get_with_cache_aside("document", "tuples", "t", lambda r, t, c: value)
    assert metrics["stored"] is True
    assert miss == {"rows": [[1, "a"], [2, "b"]], "pair": [1.5, None], "level": 3}
    assert type(miss["level"]) is int
    assert manager.memory is not None
    manager.memory.clear()
    hit, metrics = await get_with_cache_aside("document", "tuples", "t", lambda r, t, c: None)
    assert metrics["tier"] == "redis" and hit == miss
    memory_hit, metrics = await get_with_cache_aside("document", "tuples", "t", lambda r, t, c: None)
    assert metrics["tier"] == "memory" and memory_hit == miss


async def test_an_embedding_miss_returns_what_a_hit_will(manager: CacheManager) -> None:
    vector = np.array([0.1, 0.2, 1 / 3], dtype=np.float64)
    miss, _ = await get_with_cache_aside("embedding", "e2", "t", lambda r, t, c: vector)
    assert manager.memory is not None
    manager.memory.clear()
    hit, metrics = await get_with_cache_aside("embedding", "e2", "t", lambda r, t, c: None)
    assert metrics["tier"] == "redis" and hit == miss and isinstance(miss, list)  # float32, both times


async def test_an_unreadable_generation_counts_as_invalidated(manager: CacheManager, sync_redis: redis.Redis) -> None:
    await get_with_cache_aside("document", "d", "t1", lambda r, t, c: {"v": 1})
    await get_with_cache_aside("document", "d", "t2", lambda r, t, c: {"v": 1})
    gen = manager.keys.generation(("t1",))
    sync_redis.set(gen, "garbage")
    for _ in range(5):  # more than the breaker threshold: a bad counter is no outage
        await manager.invalidate_tenant("t1")
    assert not manager.redis.breaker.is_open
    assert int(sync_redis.get(gen)) > 10**15  # type: ignore[arg-type]
    assert manager.memory is not None
    manager.memory.clear()
    value, metrics = await get_with_cache_aside("document", "d", "t1", lambda r, t, c: {"v": 2})
    assert value == {"v": 2} and metrics["source"] == "db" and metrics["stored"] is True
    value, metrics = await get_with_cache_aside("document", "d", "t2", lambda r, t, c: {"v": 2})
    assert value == {"v": 1} and metrics["tier"] == "redis"  # the other tenant still reads its cache
    sync_redis.delete(gen)
    sync_redis.rpush(gen, "x")  # a counter key of the wrong type: repaired the same way
    await manager.invalidate_tenant("t1")
    assert sync_redis.type(gen) == b"string"


async def test_command_errors_never_open_the_breaker(manager: CacheManager, sync_redis: redis.Redis) -> None:
    key = manager.keys.counter("t", "api_calls", "-")
    sync_redis.rpush(key, "not a hash")
    for _ in range(manager.settings.breaker_threshold + 2):
        with pytest.raises(Exception, match="WRONGTYPE"):
            await manager.increment_counter("api_calls", 1, tenant_id="t")
    assert not manager.redis.breaker.is_open
    _, metrics = await get_with_cache_aside("document", "x", "other", lambda r, t, c: {"v": 1})
    assert metrics["stored"] is True  # reads of everyone else still use Redis


@pytest.mark.parametrize("bad", [True, 1.0, ["1"], {"id": 1}, b"1", 1.5], ids=repr)
async def test_ids_of_other_types_are_refused_before_any_cache(manager: CacheManager, bad: Any) -> None:
    calls = 0

    def fetch(resource_id: str, tenant_id: str, ctx: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"id": resource_id}

    value, _ = await get_with_cache_aside("document", 1, "t", fetch)
    assert value == {"id": 1} and calls == 1
    with pytest.raises(InvalidKeyError, match="expected a non-empty str, int or UUID"):
        await get_with_cache_aside("document", bad, "t", fetch)
    for part in ("agent_id", "conversation_id", "collection_id"):
        with pytest.raises(InvalidKeyError, match=part):
            await get_with_cache_aside("document", "d", "t", fetch, **{part: bad})
    assert calls == 1


async def test_reclaim_permanent_is_served_by_the_singleton(manager: CacheManager) -> None:
    await get_with_cache_aside("semantic_index", "s", "t", lambda r, t, c: {"v": 1}, ttl=0)
    await manager.invalidate("t", "semantic_index", "*")
    assert await CacheManager.reclaim_permanent("t") == 1

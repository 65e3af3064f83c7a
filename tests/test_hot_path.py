"""The memory-tier hit of ``get_with_cache_aside``, in both of its implementations: the compiled one
(``_hot_path``, what the package exports where it was built) and the Python one (``_cache_aside``,
the fallback). Every behaviour of a hit is asserted against both, on a real Redis."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import shared_cache
from shared_cache import CacheManager, Context, InvalidKeyError, _cache_aside, _implementation, get_cache_stats
from shared_cache._memory import CHECKED, DATA, EXPIRES, KIND, MemoryTier

Read = Callable[..., Awaitable[tuple[Any, dict[str, Any]]]]
NOT_BUILT = (
    "the compiled hot path (shared_cache/_hot_path.pyx) is not built: `pip install -e .` builds it and needs a C "
    "compiler; set SHARED_CACHE_NO_EXTENSIONS=1 to run the Python one alone"
)


def _compiled() -> Read:
    if os.environ.get("SHARED_CACHE_NO_EXTENSIONS", "") not in ("", "0"):
        pytest.skip("SHARED_CACHE_NO_EXTENSIONS is set: the Python implementation alone")
    try:
        from shared_cache import _hot_path
    except ImportError:
        pytest.fail(NOT_BUILT)
    return _hot_path.get_with_cache_aside  # type: ignore[no-any-return]


@pytest.fixture(params=["compiled", "python"])
def read(request: pytest.FixtureRequest) -> Read:
    return _compiled() if request.param == "compiled" else _cache_aside.get_with_cache_aside


class Db:
    def __init__(self, value: Any) -> None:
        self.value, self.calls = value, 0

    async def fetch(self, resource_id: str, tenant_id: str, ctx: Any) -> Any:
        self.calls += 1
        return self.value


def test_the_package_exports_the_compiled_function() -> None:
    """Fails where the extension was not built, rather than testing the fallback twice unnoticed."""
    compiled = _compiled()
    assert shared_cache.get_with_cache_aside is compiled and _implementation.compiled()
    assert compiled.__module__ == "shared_cache._hot_path"


def test_both_implementations_have_one_signature_and_are_coroutine_functions(read: Read) -> None:
    python = _cache_aside.get_with_cache_aside
    ours = inspect.signature(read).parameters
    assert [(p.name, p.default, p.kind) for p in ours.values()] == [
        (p.name, p.default, p.kind) for p in inspect.signature(python).parameters.values()
    ]
    assert inspect.iscoroutinefunction(read) and asyncio.iscoroutinefunction(read)
    assert read.__doc__ == python.__doc__


def test_no_extensions_selects_the_python_function() -> None:
    code = "import shared_cache; print(shared_cache.get_with_cache_aside.__module__)"
    env = {**os.environ, "SHARED_CACHE_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "shared_cache._cache_aside"


def test_the_compiled_clock_is_perf_counter() -> None:
    from shared_cache import _hot_path

    for _ in range(100):
        before = time.perf_counter()
        ours = _hot_path.perf_counter()
        after = time.perf_counter()
        assert before - 1e-6 <= ours <= after + 1e-6


@pytest.mark.parametrize(
    ("data_type", "value"),
    [
        ("document", {"id": "d", "pages": 3, "public": True}),  # flat dict, held as a dict
        ("document", [1, "two", 3.0, None]),  # flat list
        ("document", {"nested": {"a": [1, 2]}, "b": "c"}),  # held as JSON
        ("document", "a string"),
        ("document", 42),
        ("embedding", [0.5, -1.25, 2.0]),
    ],
)
async def test_a_hit_returns_a_fresh_copy_and_its_metrics(
    manager: CacheManager, read: Read, data_type: str, value: Any
) -> None:
    db = Db(value)
    first, metrics = await read(data_type, "d", "t", db.fetch)
    assert metrics["source"] == "db" and first == value
    for _ in range(3):
        hit, metrics = await read(data_type, "d", "t", db.fetch)
        assert hit == value and db.calls == 1
        assert set(metrics) == {"source", "tier", "key", "level", "latency_ms"}
        assert (metrics["source"], metrics["tier"], metrics["level"]) == ("cache", "memory", "tenant")
        assert metrics["key"] == f"{manager.prefix}{{t}}:{data_type}:d"
        assert 0 <= metrics["latency_ms"] < 50
        if isinstance(hit, dict | list):
            hit.clear()  # the caller owns what it got
        metrics["source"] = "scribbled"
    again, metrics = await read(data_type, "d", "t", db.fetch)
    assert again == value and metrics["source"] == "cache"


async def test_hits_are_counted_and_sampled(manager: CacheManager, read: Read) -> None:
    await read("document", "d", "t", lambda r, t, c: {"v": 1})
    manager.stats.reset()
    for _ in range(40):
        await read("document", "d", "t", lambda r, t, c: {"v": 2})
    snap = get_cache_stats()
    assert snap["hits"] == 40 and snap["by_type"]["document"]["hits"] == {"memory": 40}  # type: ignore[index]
    latency = snap["by_type"]["document"]["latency_ms"]["memory"]  # type: ignore[index]
    assert 0 < latency["p50"] <= latency["p99"] < 50  # two of the forty were timed


async def test_an_expired_entry_is_not_served(manager: CacheManager, read: Read) -> None:
    db = Db({"v": 1})
    await read("document", "d", "t", db.fetch)
    assert manager.memory is not None
    (ident,) = list(manager.memory._data)
    manager.memory._data[ident][EXPIRES] = time.perf_counter() + 0.3  # on the clock the hit reads
    _, metrics = await read("document", "d", "t", db.fetch)
    assert metrics["tier"] == "memory"
    await asyncio.sleep(0.35)
    _, metrics = await read("document", "d", "t", db.fetch)
    assert metrics["tier"] == "redis" and db.calls == 1  # expired in memory, still in Redis


async def test_an_evicted_scope_is_never_served_from_memory(manager: CacheManager, read: Read) -> None:
    db = Db({"v": 1})
    await read("document", "d", "t", db.fetch)
    await read("document", "other", "t", db.fetch)
    _, metrics = await read("document", "d", "t", db.fetch)
    assert metrics["tier"] == "memory"
    db.value = {"v": 2}
    await manager.invalidate("t", "document", "d")
    value, metrics = await read("document", "d", "t", db.fetch)
    assert value == {"v": 2} and metrics["source"] == "db" and db.calls == 3
    _, metrics = await read("document", "other", "t", db.fetch)  # revalidated, not dropped
    assert metrics["tier"] == "memory" and db.calls == 3
    assert manager.memory is not None
    assert all(entry[CHECKED] == manager.memory.seq for entry in manager.memory._data.values())


async def test_a_hit_is_for_its_own_tenant_and_context_only(manager: CacheManager, read: Read) -> None:
    a, b = Db({"tenant": "a"}), Db({"tenant": "b"})
    await read("document", "d", "tenant_a", a.fetch)
    value, metrics = await read("document", "d", "tenant_b", b.fetch)
    assert value == {"tenant": "b"} and metrics["source"] == "db"
    ctx = Context(tenant_id="tenant_a", agent_id="ag", collection_id="co")
    value, metrics = await read("document", "d", None, a.fetch, ctx=ctx)
    assert metrics["source"] == "cache" and metrics["tier"] == "redis" and metrics["level"] == "tenant"
    value, metrics = await read("document", "d", None, a.fetch, ctx=ctx)
    assert metrics["tier"] == "memory" and value == {"tenant": "a"}
    value, metrics = await read("document", "d", "tenant_a", a.fetch, agent_id="ag", collection_id="co")
    assert metrics["tier"] == "memory"  # the same identity as the context gave
    assert a.calls == 1 and b.calls == 1


async def test_ids_of_another_type_never_find_an_entry(manager: CacheManager, read: Read) -> None:
    db = Db({"v": 1})
    await read("document", 1, "t", db.fetch)
    _, metrics = await read("document", 1, "t", db.fetch)
    assert metrics["tier"] == "memory"
    for bad in (True, 1.0, None, b"1"):
        with pytest.raises(InvalidKeyError, match="resource_id"):
            await read("document", bad, "t", db.fetch)
    with pytest.raises(InvalidKeyError, match="agent_id"):
        await read("document", 1, "t", db.fetch, agent_id=False)
    assert db.calls == 1


async def test_an_entry_that_cannot_be_decoded_is_dropped_and_read_again(manager: CacheManager, read: Read) -> None:
    db = Db({"nested": {"a": 1}})
    await read("document", "d", "t", db.fetch)
    assert manager.memory is not None
    (entry,) = manager.memory._data.values()
    assert entry[KIND] == 1  # held as JSON
    entry[DATA] = b"{not json"
    value, metrics = await read("document", "d", "t", db.fetch)
    assert value == {"nested": {"a": 1}} and metrics["tier"] == "redis" and db.calls == 1
    assert manager.stats.errors["deserialize"] == 1


async def test_a_custom_deserializer_runs_on_every_hit(manager: CacheManager, read: Read) -> None:
    calls = []

    def deserializer(plain: Any) -> Any:
        calls.append(plain)
        return ("decoded", plain)

    await read("complex_data", "x", "t", lambda r, t, c: {"a": 1}, serializer=lambda v: v, deserializer=deserializer)
    value, metrics = await read("complex_data", "x", "t", lambda r, t, c: None, deserializer=deserializer)
    assert value == ("decoded", {"a": 1}) and metrics["tier"] == "memory" and calls == [{"a": 1}]


async def test_a_hit_on_an_old_entry_moves_it_to_the_recent_end(manager: CacheManager, read: Read) -> None:
    memory = manager.memory = MemoryTier(max_entries=8)
    for i in range(4):  # the first entry leaves the newest quarter (two entries)
        await read("document", f"d{i}", "t", lambda r, t, c: {"v": 1})
    first = next(iter(memory._data))
    _, metrics = await read("document", "d0", "t", lambda r, t, c: None)
    assert metrics["tier"] == "memory" and next(reversed(memory._data)) == first


async def test_concurrent_misses_through_either_function_fetch_once(manager: CacheManager, read: Read) -> None:
    calls = 0

    async def fetch(resource_id: str, tenant_id: str, ctx: Any) -> Any:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return {"v": resource_id}

    results = await asyncio.gather(*(read("document", "slow", "t", fetch) for _ in range(10)))
    assert calls == 1 and all(value == {"v": "slow"} for value, _ in results)

"""get_embeddings_batch_with_cache: duplicates, order, round trips, provider calls."""

from __future__ import annotations

import asyncio
import gc
import warnings
from array import array
from typing import Any

import numpy as np
import pytest

from shared_cache import CacheManager, get_embeddings_batch_with_cache
from tests.conftest import Monitor
from tests.round_trips import RoundTripProxy


class Provider:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return [[float(len(t)), float(sum(map(ord, t)) % 97), 0.25] for t in texts]


def f32(values: list[float]) -> list[float]:
    return array("f", values).tolist()


async def test_duplicates_order_and_single_provider_call(manager: CacheManager) -> None:
    provider = Provider()
    texts = ["alpha", "beta", "alpha", "gamma", "beta"]
    out, metrics = await get_embeddings_batch_with_cache(texts, "t", "model-x", provider)
    assert provider.calls == [["alpha", "beta", "gamma"]]
    assert out == [f32(provider([t])[0]) for t in texts]
    assert metrics["cache_hits"] == 0 and metrics["cache_misses"] == 3 and metrics["duplicates"] == 2
    out[0].append(1.0)
    assert out[2] == f32(provider(["alpha"])[0])  # repeated texts do not share one list


async def test_second_batch_only_generates_misses(manager: CacheManager) -> None:
    provider = Provider()
    await get_embeddings_batch_with_cache(["a", "b"], "t", "m", provider)
    manager.memory.clear()  # type: ignore[union-attr]
    out, metrics = await get_embeddings_batch_with_cache(["a", "c", "b"], "t", "m", provider)
    assert provider.calls[-1] == ["c"]
    assert metrics["cache_hits"] == 2 and metrics["redis_hits"] == 2 and metrics["cache_misses"] == 1
    # the single-text API sees the same entries
    assert await manager.get_embedding("c", "m", "t") == out[1]
    # another model or tenant does not
    assert await manager.get_embedding("c", "other-model", "t") is None
    assert await manager.get_embedding("c", "m", "t2") is None


@pytest.mark.parametrize("as_numpy", [False, True])
async def test_thousand_texts_at_ninety_percent_hits_cost_two_round_trips(redis_url: str, as_numpy: bool) -> None:
    """One round trip for the lookup (its MGETs of a few hundred texts each go out together) and
    one for the write, counted by a proxy between the library and Redis; the commands as Redis
    saw them."""
    texts = [f"text {i}" for i in range(1000)]
    provider = Provider()
    with RoundTripProxy(redis_url) as proxy:
        manager = CacheManager.configure(
            redis_url=proxy.url, key_prefix=f"trips{as_numpy}:", ttl_jitter=0.0, stats_publish_seconds=0
        )
        try:
            _, first = await get_embeddings_batch_with_cache(texts[:900], "t", "m", provider)
            assert first["round_trips"] == 2 and first["cache_misses"] == 900
            manager.memory.clear()  # type: ignore[union-attr]
            proxy.reset()
            with Monitor(redis_url) as seen:
                out, metrics = await get_embeddings_batch_with_cache(texts, "t", "m", provider, as_numpy=as_numpy)
            assert proxy.counts() == [2]
            assert seen.commands == ["MGET"] * 5 + ["EVALSHA"]  # 1,000 texts: MGETs of 128, 3 x 256, 104; a write
            assert metrics["round_trips"] == 2
            assert metrics["cache_hits"] == 900 and metrics["redis_hits"] == 900 and metrics["cache_misses"] == 100
            assert provider.calls[-1] == texts[900:]
            assert [list(row) for row in out] == [f32(v) for v in provider(texts)]
        finally:
            await manager.close()
            CacheManager._instance = None


@pytest.mark.parametrize("command", ["MGET", "EVALSHA"])
async def test_a_connection_lost_with_the_lookup_or_the_write_in_flight_loses_no_text(
    redis_url: str, command: str
) -> None:
    """The connection drops with the lookup's MGETs (all five) or the early-sent write in flight:
    every text still gets its embedding, the error is counted, nothing is left unawaited, and the
    next batch reconnects and finds what was written."""
    texts = [f"text {i}" for i in range(1000)]
    provider = Provider()
    expected = [f32(v) for v in provider(texts)]
    with RoundTripProxy(redis_url, delay=0.0) as proxy:
        manager = CacheManager.configure(
            redis_url=proxy.url, key_prefix=f"cut{command}:", ttl_jitter=0.0, stats_publish_seconds=0
        )
        try:
            await get_embeddings_batch_with_cache(texts[:900], "t", "m", provider)
            manager.memory.clear()  # type: ignore[union-attr]
            errors = manager.stats.errors["redis"]
            proxy.cut_on(command)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a coroutine never awaited would warn
                out, metrics = await get_embeddings_batch_with_cache(texts, "t", "m", provider)
            assert proxy.cuts == 1
            assert out == expected
            assert manager.stats.errors["redis"] == errors + 1  # once for the lookup, or once for the write
            assert manager.redis.breaker.failures == 1  # one connection lost: one failure, not one per MGET
            assert "stored" not in metrics
            if command == "MGET":  # nothing found, nothing tagged: all generated, none written
                assert metrics["redis_hits"] == 0 and metrics["cache_misses"] == 1000
                assert provider.calls[-1] == texts
            else:
                assert metrics["redis_hits"] == 900 and provider.calls[-1] == texts[900:]

            manager.memory.clear()  # type: ignore[union-attr]
            out, metrics = await get_embeddings_batch_with_cache(texts, "t", "m", provider)
            assert out == expected
            assert metrics["redis_hits"] == 900 and metrics["cache_misses"] == 100  # the lost write is redone
            assert metrics["stored"] == 100
        finally:
            await manager.close()
            CacheManager._instance = None


async def test_a_batch_cancelled_with_its_lookup_in_flight_leaves_nothing_behind(redis_url: str) -> None:
    """Cancelled while its MGETs are in flight (held by the proxy): no coroutine left unawaited,
    and the connection's next replies still go to the right callers."""
    texts = [f"text {i}" for i in range(1000)]
    provider = Provider()
    with RoundTripProxy(redis_url, delay=0.3) as proxy:
        manager = CacheManager.configure(
            redis_url=proxy.url, key_prefix="cancel:", ttl_jitter=0.0, stats_publish_seconds=0
        )
        try:
            await get_embeddings_batch_with_cache(texts[:900], "t", "m", provider)
            manager.memory.clear()  # type: ignore[union-attr]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                task = asyncio.create_task(get_embeddings_batch_with_cache(texts, "t", "m", provider))
                await asyncio.sleep(0.1)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert proxy.counts() and len(provider.calls) == 1  # cancelled before the provider

                out, metrics = await get_embeddings_batch_with_cache(texts, "t", "m", provider)
                assert out == [f32(v) for v in provider(texts)]
                assert metrics["redis_hits"] == 900 and provider.calls[-2] == texts[900:]
                del task
                gc.collect()
            assert not [w for w in caught if "never awaited" in str(w.message)], [str(w.message) for w in caught]
        finally:
            await manager.close()
            CacheManager._instance = None


async def test_numpy_provider_and_async_provider(manager: CacheManager) -> None:
    async def provider(texts: list[str]) -> Any:
        return np.ones((len(texts), 4), dtype=np.float32)

    out, _ = await get_embeddings_batch_with_cache(["x", "y"], "t", "m", provider)
    assert out == [[1.0] * 4, [1.0] * 4] and isinstance(out[0], list)


async def test_provider_errors_and_bad_answers(manager: CacheManager) -> None:
    with pytest.raises(ValueError, match="returned 1 embeddings for 2 texts"):
        await get_embeddings_batch_with_cache(["x", "y"], "t", "m", lambda ts: [[1.0]])
    with pytest.raises(ValueError, match=r"texts must be a sequence of str .*got str"):
        await get_embeddings_batch_with_cache("not a list", "t", "m", Provider())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got generator"):  # it would be used up before the lookup
        await get_embeddings_batch_with_cache((t for t in ["x"]), "t", "m", Provider())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got bytes at position 1"):
        await get_embeddings_batch_with_cache(["x", b"y"], "t", "m", Provider())  # type: ignore[list-item]
    with pytest.raises(ValueError, match="got NoneType"):
        await get_embeddings_batch_with_cache(None, "t", "m", Provider())  # type: ignore[arg-type]

    def boom(texts: list[str]) -> Any:
        raise RuntimeError("provider down")

    with pytest.raises(RuntimeError, match="provider down"):
        await get_embeddings_batch_with_cache(["x"], "t", "m", boom)


async def test_the_redis_hits_of_a_batch_whose_provider_fails_are_kept_in_memory(manager: CacheManager) -> None:
    provider = Provider()
    await get_embeddings_batch_with_cache(["a", "b"], "t", "m", provider)
    manager.memory.clear()  # type: ignore[union-attr]

    def boom(texts: list[str]) -> Any:
        raise RuntimeError("provider down")

    with pytest.raises(RuntimeError, match="provider down"):  # "c" is new: the provider is called, and fails
        await get_embeddings_batch_with_cache(["a", "b", "c"], "t", "m", boom)
    out, metrics = await get_embeddings_batch_with_cache(["b", "a"], "t", "m", provider)
    assert metrics["memory_hits"] == 2 and metrics["redis_hits"] == 0 and len(provider.calls) == 1
    assert out == [f32(provider([t])[0]) for t in ["b", "a"]]


async def test_invalidation_of_the_type_drops_batch_entries(manager: CacheManager) -> None:
    provider = Provider()
    await get_embeddings_batch_with_cache(["a"], "t", "m", provider)
    await manager.invalidate("t", "embedding", "*")
    _, metrics = await get_embeddings_batch_with_cache(["a"], "t", "m", provider)
    assert metrics["cache_misses"] == 1 and len(provider.calls) == 2


async def test_as_numpy_is_one_float32_matrix_equal_to_the_lists(manager: CacheManager) -> None:
    provider = Provider()
    texts = ["alpha", "beta", "alpha", "gamma"]
    lists, _ = await get_embeddings_batch_with_cache(texts, "t", "m", provider)  # generated
    assert manager.memory is not None
    manager.memory.clear()
    matrix, metrics = await get_embeddings_batch_with_cache(texts, "t", "m", provider, as_numpy=True)  # Redis
    assert metrics["redis_hits"] == 3 and metrics["duplicates"] == 1
    assert isinstance(matrix, np.ndarray) and matrix.dtype == np.float32 and matrix.shape == (4, 3)
    assert matrix.flags["C_CONTIGUOUS"] and matrix.flags["WRITEABLE"]
    assert matrix.tolist() == lists
    from_memory, metrics = await get_embeddings_batch_with_cache(texts, "t", "m", provider, as_numpy=True)
    assert metrics["memory_hits"] == 3 and np.array_equal(from_memory, matrix)
    matrix[0, 0] = 99.0  # the caller's own copy
    again, _ = await get_embeddings_batch_with_cache(texts, "t", "m", provider, as_numpy=True)
    assert again[0, 0] == lists[0][0]
    one, _ = await get_embeddings_batch_with_cache(["beta"], "t", "m", provider, as_numpy=True)  # first row only
    assert one.tolist() == [lists[1]] and one.flags["C_CONTIGUOUS"]
    empty, _ = await get_embeddings_batch_with_cache([], "t", "m", provider, as_numpy=True)
    assert empty.shape == (0, 0)


async def test_embeddings_of_two_dimensions_are_served_as_lists_and_refused_as_one_matrix(
    manager: CacheManager,
) -> None:
    def provider(texts: list[str]) -> list[list[float]]:  # dimension 3 or 4, by the text's length
        return [[float(len(t))] * (3 + len(t) % 2) for t in texts]

    texts = [f"text {'x' * n}" for n in range(300)]  # more than one MGET, the dimensions interleaved
    generated, _ = await get_embeddings_batch_with_cache(texts, "t", "m", provider)
    assert manager.memory is not None
    for source in ("redis", "memory"):
        if source == "redis":
            manager.memory.clear()
        lists, metrics = await get_embeddings_batch_with_cache(texts, "t", "m", provider)
        assert lists == generated and metrics[f"{source}_hits"] == 300 and metrics["cache_misses"] == 0
        with pytest.raises(ValueError, match=r"one dimension, got dimensions \[3, 4\]"):
            await get_embeddings_batch_with_cache(texts, "t", "m", provider, as_numpy=True)
    matrix, _ = await get_embeddings_batch_with_cache(texts[::2], "t", "m", provider, as_numpy=True)
    assert matrix.shape == (150, 3 + len(texts[0]) % 2) and matrix[:, 0].tolist() == [len(t) for t in texts[::2]]


async def test_an_expired_entry_is_not_served_from_either_tier(manager: CacheManager) -> None:
    provider = Provider()
    await get_embeddings_batch_with_cache(["a", "b"], "t", "m", provider, ttl=1)
    _, metrics = await get_embeddings_batch_with_cache(["a", "b"], "t", "m", provider, ttl=1)
    assert metrics["memory_hits"] == 2 and len(provider.calls) == 1
    await asyncio.sleep(1.2)
    _, metrics = await get_embeddings_batch_with_cache(["a", "b"], "t", "m", provider, ttl=1)
    assert metrics["memory_hits"] == 0 and metrics["redis_hits"] == 0 and metrics["cache_misses"] == 2
    assert provider.calls[-1] == ["a", "b"]


@pytest.mark.parametrize("model_name", ["", None, ["m"]])
async def test_a_bad_model_name_is_named_in_the_error(manager: CacheManager, model_name: Any) -> None:
    with pytest.raises(ValueError, match="non-empty str model_name"):
        await get_embeddings_batch_with_cache(["x"], "t", model_name, Provider())


async def test_the_packed_lookup_is_the_mget_of_the_lookup_keys(redis_url: str) -> None:
    """The lookup's MGETs are packed by the batch itself: byte for byte what hiredis packs for the
    same keys, with a key prefix and texts beyond ASCII, and Redis finds with them what the batch
    wrote."""
    import hiredis

    from shared_cache._batch import _Batch

    manager = CacheManager.configure(
        redis_url=redis_url, key_prefix="clé-ключ:", ttl_jitter=0.0, stats_publish_seconds=0
    )
    try:
        texts = [f"texte {i} é ✓ \U0001f600" for i in range(300)]
        provider = Provider()
        await get_embeddings_batch_with_cache(texts, "tenant_u", "modèle", provider)
        batch = _Batch(manager, "tenant_u", "modèle", texts)
        await batch.lookup()
        for chunk in ([0], list(range(128)), list(range(128, 300))):
            keys = batch.lookup_keys(chunk)
            assert batch.lookup_command(chunk) == hiredis.pack_command(("MGET", *keys))
            plans = [manager.plan("embedding", "tenant_u", batch.rids[i]) for i in chunk]
            assert keys[2:] == [p.entry_keys[0] for p in plans] + [p.gen_keys[2] for p in plans]
        # ids of another length, or beyond ASCII (none are made so far), are packed one by one
        for odd in (["emb_short", "x" * 37], ["é" * 36, "x" * 36], ["é" + "x" * 35, "y" * 35]):
            batch.rids[:2] = odd
            assert batch.lookup_command([0, 1]) == hiredis.pack_command(("MGET", *batch.lookup_keys([0, 1])))
        manager.memory.clear()  # type: ignore[union-attr]
        out, metrics = await get_embeddings_batch_with_cache(texts, "tenant_u", "modèle", provider)
        assert metrics["redis_hits"] == 300 and metrics["cache_misses"] == 0 and len(provider.calls) == 1
        assert out == [f32(v) for v in provider(texts)]
    finally:
        await manager.close()
        CacheManager._instance = None


@pytest.mark.parametrize("ttl", [2, 0, None])
async def test_a_redis_hit_is_kept_in_memory_no_longer_than_it_has_left_in_redis(
    manager: CacheManager, ttl: int | None
) -> None:
    """Entries the batch reads from Redis stay in the memory tier for what they have left there (2 s),
    or for the tier's cap when that is less (no expiry, or the type's default of days)."""
    provider = Provider()
    texts = [f"t{i}" for i in range(20)]
    await get_embeddings_batch_with_cache(texts, "t", "m", provider, ttl=ttl)
    memory = manager.memory
    assert memory is not None
    memory.clear()
    _, metrics = await get_embeddings_batch_with_cache(texts, "t", "m", provider, ttl=ttl)
    assert metrics["redis_hits"] == 20
    lefts = [entry[0] - memory.timer() for entry in memory._data.values()]
    assert len(lefts) == 20
    if ttl == 2:
        assert all(1.0 < left <= 2.0 for left in lefts)
    else:
        assert all(memory.ttl_cap - 1.0 < left <= memory.ttl_cap for left in lefts)

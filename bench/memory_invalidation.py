"""Dropping a scope from the memory tiers: the same cost for 10, 10,000 or 100,000 entries.

A subscriber process holds ``k`` entries of one type in its memory tier; the invalidating process
(which holds them too) invalidates the type. Measured: the duration of the invalidating call, and how
long the subscriber's event loop is held by each eviction event (the time spent handling it, during
which nothing else on that loop runs). Baseline, in the same run: dropping the same ``k`` entries one
by one from a dict, the way a scope index would.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

Row = tuple[str, str, str, str]
SIZES = (10, 10_000, 100_000)


def _fill(k: int, tenant: str) -> None:
    """``k`` entries of one type in this process's memory tier, as reads would have left them."""
    from shared_cache import CacheManager, serialize_for_cache

    manager = CacheManager.get_instance()
    assert manager.memory is not None
    payload = serialize_for_cache({"title": "a document", "pages": 3}, "document")
    for i in range(k):
        plan = manager.plan("document", tenant, f"d{i}")
        ident = ("document", tenant, f"d{i}", None, None, None)
        manager.memory.set(ident, payload, 60, plan.entry_keys[0], "tenant", plan.scopes)


async def _subscriber(url: str, prefix: str, k: int, tenant: str, rounds: int) -> dict[str, Any]:
    """Runs in the subscriber process: fill, then watch the loop while invalidations arrive."""
    from shared_cache import CacheManager

    manager = CacheManager.configure(
        redis_url=url, key_prefix=prefix, eviction_channel=f"{prefix}evictions", memory_max_entries=200_000,
        stats_publish_seconds=0,
    )  # fmt: skip
    await manager.start()
    _fill(k, tenant)
    assert manager.subscriber is not None and manager.memory is not None and len(manager.memory) >= k
    subscriber = manager.subscriber
    seen = subscriber.events
    handle = subscriber.handle
    held: list[float] = []
    all_seen = asyncio.Event()

    def timed(raw: Any) -> None:
        start = time.perf_counter()
        handle(raw)
        held.append(time.perf_counter() - start)
        if subscriber.events >= seen + rounds:
            all_seen.set()

    subscriber.handle = timed  # type: ignore[method-assign]
    print("ready", flush=True)
    await asyncio.wait_for(all_seen.wait(), 60)
    baseline = dict.fromkeys(range(k), 0)  # the naive drop: one entry at a time
    start = time.perf_counter()
    for key in list(baseline):
        del baseline[key]
    naive = time.perf_counter() - start
    await manager.close()
    return {"held_ms": statistics.median(held) * 1000, "naive_ms": naive * 1000}


def child(url: str, prefix: str, k: int, tenant: str, rounds: int) -> None:
    print(json.dumps(asyncio.run(_subscriber(url, prefix, k, tenant, rounds))), flush=True)


async def memory_invalidation(rows: list[Row], url: str, rounds: int = 20) -> None:
    from shared_cache import CacheManager, get_with_cache_aside

    results = {}
    for k in SIZES:
        prefix, tenant = f"bmi{k}:", f"tenant{k}"
        code = f"from bench.memory_invalidation import child; child({url!r}, {prefix!r}, {k}, {tenant!r}, {rounds})"
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).strip() == b"ready"
        manager = CacheManager(
            CacheManager.get_instance().settings.model_copy(
                update={"key_prefix": prefix, "eviction_channel": f"{prefix}evictions", "memory_max_entries": 200_000}
            )
        )
        previous = CacheManager._instance
        CacheManager._instance = manager
        try:
            await manager.start()
            _fill(k, tenant)
            calls = []
            for _ in range(rounds):
                start = time.perf_counter()
                await manager.invalidate(tenant, "document", "*")
                calls.append((time.perf_counter() - start) * 1000)
                await asyncio.sleep(0.02)
            served, metrics = await get_with_cache_aside("document", "d0", tenant, lambda r, t, c: {"new": 1})
            assert metrics["tier"] != "memory" and served == {"new": 1}  # dropped, never served
        finally:
            CacheManager._instance = previous
            await manager.close()
        out = json.loads(await proc.stdout.readline())
        await proc.wait()
        results[k] = (statistics.median(calls), out["held_ms"], out["naive_ms"])
    call = " / ".join(f"{results[k][0]:.2f}" for k in SIZES)
    stall = " / ".join(f"{results[k][1]:.2f}" for k in SIZES)
    naive = " / ".join(f"{results[k][2]:.2f}" for k in SIZES)
    rows.append(
        (
            "invalidate a type held in every memory tier, 10 / 10,000 / 100,000 entries (goal: the same cost)",
            f"invalidating call {call} ms; subscriber loop held {stall} ms per event",
            f"dropping the entries one by one: {naive} ms",
            f"{results[SIZES[-1]][2] / max(results[SIZES[-1]][1], 1e-4):,.0f}x less at 100,000",
        )
    )

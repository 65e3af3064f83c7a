"""Invalidation benchmarks: O(1) scopes versus SCAN+DEL, and eviction fan-out to 8 processes."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from multiprocessing.connection import Connection

import redis

from bench._util import percentile
from shared_cache import CacheManager

Row = tuple[str, str, str, str]


async def scope_vs_scan(rows: list[Row], url: str, keys: int) -> None:
    manager = CacheManager.get_instance()
    client = redis.Redis.from_url(url)
    big = f"{manager.prefix}{{tenant_big}}:document:"
    client.execute_command("DEBUG", "POPULATE", keys, big)  # 1,000,000 real keys in the scope
    small = f"{manager.prefix}{{tenant_small}}:document:"
    client.execute_command("DEBUG", "POPULATE", 10, small)

    await asyncio.sleep(1.0)  # let Redis finish rehashing its key table after the bulk insert
    runs: dict[str, list[float]] = {"tenant_big": [], "tenant_small": []}
    for _ in range(300):  # interleaved, so noise hits both alike
        for tenant, samples in runs.items():
            start = time.perf_counter()
            await manager.invalidate(tenant, "document", "*")
            samples.append((time.perf_counter() - start) * 1e6)
    t_big, t_small = percentile(runs["tenant_big"], 0.5), percentile(runs["tenant_small"], 0.5)
    start = time.perf_counter()
    deleted = 0
    for batch in _chunks(client.scan_iter(match=big + "*", count=5000), 5000):
        deleted += client.unlink(*batch)
    t_scan = (time.perf_counter() - start) * 1e6
    client.close()
    rows.append(
        (
            f"invalidate a type covering {keys:,} keys (goal: same as 10 keys, >= 1000x SCAN+DEL)",
            f"{t_big:.0f} us ({keys:,} keys) / {t_small:.0f} us (10 keys), 1 round trip",
            f"SCAN+UNLINK of {deleted:,} keys {t_scan / 1e6:.2f} s",
            f"{t_scan / t_big:,.0f}x faster",
        )
    )


def _chunks(iterable: object, size: int) -> object:
    batch: list[bytes] = []
    for item in iterable:  # type: ignore[attr-defined]
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _subscriber(conn: Connection, url: str, prefix: str, channel: str, expected: int) -> None:
    async def main() -> None:
        manager = CacheManager.configure(redis_url=url, key_prefix=prefix, eviction_channel=channel)
        await manager.start()
        conn.send("ready")
        sub = manager.subscriber
        deadline = time.monotonic() + 60
        while sub.events < expected and time.monotonic() < deadline:  # noqa: ASYNC110 (counted by a task)
            await asyncio.sleep(0.01)
        conn.send(list(sub.propagation_ms))
        await manager.close()

    asyncio.run(main())


async def propagation(rows: list[Row], url: str, processes: int = 8, events: int = 300) -> None:
    prefix, channel = "prop:", "prop:evictions"
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for _ in range(processes):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_subscriber, args=(child, url, prefix, channel, events), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    for pipe in pipes:
        assert pipe.poll(60) and pipe.recv() == "ready"
    publisher = CacheManager(
        CacheManager.get_instance().settings.model_copy(
            update={"key_prefix": prefix, "eviction_channel": channel, "memory_enabled": False}
        )
    )
    for i in range(events):
        await publisher.invalidate("t", "document", f"doc{i}")
        await asyncio.sleep(0.005)
    samples: list[float] = []
    for pipe in pipes:
        assert pipe.poll(60)
        samples += pipe.recv()
    for proc in procs:
        proc.join(10)
    await publisher.close()
    rows.append(
        (
            f"eviction propagation, publish to evicted, {processes} processes (goal p99 < 10 ms, target 5 ms)",
            f"p50 {percentile(samples, 0.5):.2f} ms, p99 {percentile(samples, 0.99):.2f} ms",
            f"{len(samples):,} deliveries of {events} events",
            "p99 under 10 ms" if percentile(samples, 0.99) < 10 else "p99 over 10 ms",
        )
    )

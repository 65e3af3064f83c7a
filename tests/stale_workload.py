"""A randomized read/write workload over real Postgres and Redis, counting stale reads.

Writers UPDATE a row (``version = version + 1``), commit, then invalidate. Readers in other
processes read rows through the cache. A read is *stale* when it began more than ``bound_ms``
after an invalidation call for its row had returned, yet returned a version older than the one that
invalidation followed. Two modes:

- ``generational``: shared_cache (generation-checked entries, eviction push to memory tiers);
- ``plain``: the standard's plain cache-aside (memory dict + Redis GET/SET, DEL on invalidation,
  no generation check, no eviction push), as a baseline.

Readers sleep a little between reading the row and caching it, as a service that does work with
the row would, which opens the classic race window.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

ROWS = 12


@dataclass
class Result:
    reads: int
    writes: int
    stale: int  # stale reads that began more than the bound after the invalidation returned
    worst_ms: float  # the latest such read, in ms after the invalidation returned
    stale_within_bound: int  # reads that began after the invalidation returned, within the bound


def setup_table(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS items")
        conn.execute("CREATE TABLE items (id text PRIMARY KEY, version int NOT NULL)")
        for i in range(ROWS):
            conn.execute("INSERT INTO items VALUES (%s, 0)", (f"r{i}",))


def _reader(conn: Connection, mode: str, dsn: str, redis_url: str, prefix: str, seconds: float, seed: int) -> None:
    conn.send(asyncio.run(_read_loop(mode, dsn, redis_url, prefix, seconds, seed)))


async def _read_loop(mode: str, dsn: str, redis_url: str, prefix: str, seconds: float, seed: int) -> list[Any]:
    import psycopg
    import redis.asyncio as aredis

    from shared_cache import CacheManager, get_with_cache_aside

    rng = random.Random(seed)
    db = await psycopg.AsyncConnection.connect(dsn, autocommit=True)

    async def fetch(resource_id: str, tenant_id: str, ctx: Any) -> int:
        cur = await db.execute("SELECT version FROM items WHERE id = %s", (resource_id,))
        row = await cur.fetchone()
        await asyncio.sleep(rng.uniform(0, 0.004))  # work between reading the row and caching it
        return int(row[0]) if row else -1

    manager = CacheManager.configure(
        redis_url=redis_url, key_prefix=prefix, eviction_channel=f"{prefix}ev", lease_wait_ms=0, ttl_jitter=0.0
    )
    client = aredis.Redis.from_url(redis_url)
    memory: dict[str, tuple[float, int]] = {}

    async def plain_read(rid: str) -> int:
        hit = memory.get(rid)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        raw = await client.get(f"{prefix}plain:{rid}")
        if raw is not None:
            value = int(raw)
        else:
            value = await fetch(rid, "t", None)
            await client.set(f"{prefix}plain:{rid}", value, ex=3600)
        memory[rid] = (time.monotonic() + 60, value)
        return value

    if mode == "generational":
        await manager.start()
    reads: list[Any] = []
    deadline = time.time() + seconds
    while time.time() < deadline:
        rid = f"r{rng.randrange(ROWS)}"
        started = time.time()
        if mode == "generational":
            value, _ = await get_with_cache_aside("item", rid, "t", fetch)
        else:
            value = await plain_read(rid)
        reads.append((started, rid, value))
        await asyncio.sleep(rng.uniform(0, 0.002))
    await manager.close()
    await client.aclose()
    await db.close()
    return reads


def _writer(conn: Connection, mode: str, dsn: str, redis_url: str, prefix: str, seconds: float, seed: int) -> None:
    conn.send(asyncio.run(_write_loop(mode, dsn, redis_url, prefix, seconds, seed)))


async def _write_loop(mode: str, dsn: str, redis_url: str, prefix: str, seconds: float, seed: int) -> list[Any]:
    import psycopg
    import redis.asyncio as aredis

    from shared_cache import CacheManager

    rng = random.Random(seed)
    db = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    manager = CacheManager.configure(
        redis_url=redis_url, key_prefix=prefix, eviction_channel=f"{prefix}ev", memory_enabled=False
    )
    client = aredis.Redis.from_url(redis_url)
    writes: list[Any] = []
    deadline = time.time() + seconds
    while time.time() < deadline:
        rid = f"r{rng.randrange(ROWS)}"
        cur = await db.execute("UPDATE items SET version = version + 1 WHERE id = %s RETURNING version", (rid,))
        row = await cur.fetchone()
        assert row is not None
        if mode == "generational":
            await manager.invalidate("t", "item", rid)
        else:
            await client.delete(f"{prefix}plain:{rid}")
        writes.append((time.time(), rid, int(row[0])))
        await asyncio.sleep(rng.uniform(0.005, 0.03))
    await manager.close()
    await client.aclose()
    await db.close()
    return writes


def count_stale(reads: list[Any], writes: list[Any], bound_ms: float) -> tuple[int, float]:
    """Reads that began ``bound_ms`` after an invalidation returned but saw an older version."""
    by_row: dict[str, list[tuple[float, int]]] = {}
    for done, rid, version in writes:
        by_row.setdefault(rid, []).append((done, version))
    stale, worst = 0, 0.0
    for started, rid, value in reads:
        known = [(done, v) for done, v in by_row.get(rid, []) if done + bound_ms / 1000 <= started]
        if known:
            done, version = max(known, key=lambda dv: dv[1])
            if value < version:
                stale += 1
                worst = max(worst, (started - done) * 1000)
    return stale, worst


def run(
    mode: str, dsn: str, redis_url: str, readers: int = 3, writers: int = 2, seconds: float = 4.0, bound_ms: float = 50
) -> Result:
    setup_table(dsn)
    prefix = f"stale-{mode}-{random.randrange(1 << 30)}:"
    ctx = mp.get_context("spawn")
    jobs = []
    for i in range(readers + writers):
        parent, child = ctx.Pipe()
        target = _reader if i < readers else _writer
        proc = ctx.Process(target=target, args=(child, mode, dsn, redis_url, prefix, seconds, i), daemon=True)
        proc.start()
        jobs.append((parent, proc, i < readers))
    reads: list[Any] = []
    writes: list[Any] = []
    for parent, proc, is_reader in jobs:
        if not parent.poll(seconds + 60):
            raise TimeoutError("a workload process did not report")
        (reads if is_reader else writes).extend(parent.recv())
        proc.join(10)
    stale, worst = count_stale(reads, writes, bound_ms)
    at_zero, _ = count_stale(reads, writes, 0.0)
    return Result(len(reads), len(writes), stale, worst, at_zero - stale)

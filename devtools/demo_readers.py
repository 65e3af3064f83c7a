"""The demo's reader processes: document readers that check their reads for staleness, and a query
service that embeds recent chunks through ``get_embeddings_batch_with_cache``.

**The stale-read check.** A reader checks one read in ``check_every``: just before the read begins
it asks Postgres, on its own connection, for the newest version of the row committed more than
``bound_ms`` ago (``document_versions`` records when each version was committed). The read is
*stale* if it returns an older version than that: a change committed more than the bound before
the read began was not visible to it. A read that returns an older version committed within the
bound is counted apart: that is propagation in flight, which the bound allows. The bound is the
time a change needs to go through the slot, the listener, an invalidation task and the eviction
push; the status line shows the measured commit-to-eviction latency beside it.

Counts go to the parent through shared arrays (one per process), so the status line sees them live.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import defaultdict
from typing import Any

from devtools.demo_data import TENANTS, hot_document

# Indexes of the shared counters.
CHECKED, STALE, OLDER_WITHIN_BOUND = 0, 1, 2
BATCHES, TEXTS, BATCH_HITS, ON_DEMAND = 0, 1, 2, 3
REQUIRED_VERSION = """
SELECT coalesce(max(version) FILTER (WHERE committed_at <= clock_timestamp() - make_interval(secs => %s)), 0),
       coalesce(max(version), 0)
FROM document_versions WHERE document_id = %s
"""
RECENT_CHUNKS = "SELECT tenant_id, content FROM document_chunks ORDER BY touched_at DESC LIMIT %s"


def document_reader(
    redis_url: str,
    dsn: str,
    prefix: str,
    docs: int,
    clock: tuple[Any, Any, Any],
    seed: int,
    counters: Any,
    subscriber: bool = True,
    check_every: int = 10,
    bound_ms: float = 1000.0,
) -> None:
    """Cache-aside reads of hot documents, one in ``check_every`` checked for staleness.

    ``clock`` is (``ready``, ``go``, ``until``): set ``ready`` once connected, start when ``go`` is
    set, stop at ``until.value`` (seconds since the epoch).
    """
    asyncio.run(_read_documents(redis_url, dsn, prefix, docs, clock, seed, counters, subscriber, check_every, bound_ms))


async def _read_documents(
    redis_url: str,
    dsn: str,
    prefix: str,
    docs: int,
    clock: tuple[Any, Any, Any],
    seed: int,
    counters: Any,
    subscriber: bool,
    check_every: int,
    bound_ms: float,
) -> None:
    import psycopg

    from shared_cache import CacheManager, get_with_cache_aside

    ready, go, until = clock
    manager = CacheManager.configure(
        redis_url=redis_url, key_prefix=prefix, subscriber_enabled=subscriber, stats_publish_seconds=0
    )
    await manager.start()
    db = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    rng = random.Random(seed)

    async def fetch(resource_id: str, tenant_id: str, ctx: Any) -> dict[str, Any] | None:
        cursor = await db.execute(
            "SELECT title, version FROM documents WHERE tenant_id = %s AND id = %s", (tenant_id, resource_id)
        )
        row = await cursor.fetchone()
        return None if row is None else {"title": row[0], "version": row[1]}

    ready.set()
    await asyncio.to_thread(go.wait)
    reads = 0
    published = time.monotonic()
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        while time.time() < until.value:
            tenant = rng.choice(TENANTS)
            doc = hot_document(rng, tenant, docs)
            reads += 1
            if reads % check_every:
                await get_with_cache_aside("document", doc, tenant, fetch)
            else:
                cursor = await db.execute(REQUIRED_VERSION, (bound_ms / 1000.0, doc))
                required, newest = await cursor.fetchone() or (0, 0)
                value, _ = await get_with_cache_aside("document", doc, tenant, fetch)
                version = value["version"] if value else -1
                counters[CHECKED] += 1
                if version < required:
                    counters[STALE] += 1
                elif version < newest:
                    counters[OLDER_WITHIN_BOUND] += 1
            if time.monotonic() - published > 0.5:
                await _publish(manager)
                published = time.monotonic()
            await asyncio.sleep(0.001)
    await _publish(manager)
    await manager.close()
    await db.close()


async def _publish(manager: Any) -> None:
    with contextlib.suppress(Exception):
        await manager.publish_stats()


def query_service(
    redis_url: str,
    dsn: str,
    prefix: str,
    model_name: str,
    clock: tuple[Any, Any, Any],
    counters: Any,
    env: dict[str, str],
) -> None:
    """An ingestion/query service: embeds the most recently written chunks, through the cache.

    ``clock`` as for ``document_reader``: ``ready`` is set once the model is loaded.
    """
    os.environ.update(env)  # thread counts and quiet loading, read when torch is first imported
    from tasks.providers import LocalSentenceTransformerProvider

    provider = LocalSentenceTransformerProvider(model_name)
    provider.load()  # at normal priority: seconds, before the workload's clock starts
    # The model's CPU time must not delay the invalidation path on a small machine: nice 10 for this
    # thread and every thread it starts from now on (the event loop's executor included).
    os.nice(10)
    asyncio.run(_embed_recent(redis_url, dsn, prefix, provider, clock, counters))


async def _embed_recent(
    redis_url: str, dsn: str, prefix: str, provider: Any, clock: tuple[Any, Any, Any], counters: Any
) -> None:
    import psycopg

    from shared_cache import CacheManager, get_embeddings_batch_with_cache

    ready, go, until = clock
    model_name = provider.model_name
    manager = CacheManager.configure(redis_url=redis_url, key_prefix=prefix, stats_publish_seconds=0)
    await manager.start()
    db = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    ready.set()
    await asyncio.to_thread(go.wait)
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        while time.time() < until.value:
            cursor = await db.execute(RECENT_CHUNKS, (24,))
            by_tenant: defaultdict[str, list[str]] = defaultdict(list)
            for tenant, content in await cursor.fetchall():
                by_tenant[tenant].append(content)
            for tenant, texts in by_tenant.items():
                _, metrics = await get_embeddings_batch_with_cache(texts, tenant, model_name, provider)
                counters[BATCHES] += 1
                counters[TEXTS] += metrics["cache_hits"] + metrics["cache_misses"]
                counters[BATCH_HITS] += metrics["cache_hits"]
                counters[ON_DEMAND] += metrics["cache_misses"]
            await _publish(manager)
            await asyncio.sleep(0.25)
    await manager.close()
    await db.close()

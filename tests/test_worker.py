"""The worker end to end: real Postgres (logical slot), real Redis, a real Celery worker process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import psycopg
import pytest
import redis

from devtools.embedded import EmbeddedPostgres as PostgresServer
from devtools.embedded import EmbeddedRedis as RedisServer
from shared_cache import CacheManager
from tasks.settings import TaskSettings
from tests.celery_worker import CeleryWorker, worker_env
from tests.node import Node
from tests.waiting import wait_until
from worker.app import make_app
from worker.listener import Listener
from worker.rules import DEFAULT_RULES, Planner
from worker.settings import ListenerSettings
from worker.sources.postgres import PostgresLogicalSource
from worker.sources.redis_pubsub import RedisPubSubSource

PREFIX = "wk:"
CHANNEL = "wk:evictions"
SCHEMA = """
CREATE TABLE documents (id text PRIMARY KEY, tenant_id text, collection_id text, title text);
CREATE TABLE document_chunks (id serial PRIMARY KEY, tenant_id text, document_id text, collection_id text,
                              content text);
CREATE TABLE agents (id text PRIMARY KEY, tenant_id text, name text);
CREATE TABLE collections (id text PRIMARY KEY, tenant_id text);
ALTER TABLE documents REPLICA IDENTITY FULL;
ALTER TABLE document_chunks REPLICA IDENTITY FULL;
ALTER TABLE agents REPLICA IDENTITY FULL;
ALTER TABLE collections REPLICA IDENTITY FULL;
"""


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def env(redis_url: str) -> dict[str, str]:
    return worker_env(redis_url, PREFIX, CHANNEL) | {"SHARED_CACHE_WORKER_VISIBILITY_TIMEOUT_S": "5"}


@pytest.fixture(scope="module")
def celery_worker(env: dict[str, str]) -> Iterator[CeleryWorker]:
    worker = CeleryWorker(env, concurrency=2).start()
    yield worker
    worker.stop()


@pytest.fixture
async def cache(env: dict[str, str]) -> AsyncIterator[CacheManager]:
    mgr = CacheManager.configure(
        redis_url=env["SHARED_CACHE_REDIS_URL"], key_prefix=PREFIX, eviction_channel=CHANNEL, ttl_jitter=0.0
    )
    yield mgr
    await mgr.close()


def settings(env: dict[str, str], **overrides: Any) -> TaskSettings:
    return TaskSettings(broker_url=env["SHARED_CACHE_WORKER_BROKER_URL"], **overrides)


@contextlib.asynccontextmanager
async def running(listener: Listener) -> AsyncIterator[Listener]:
    stop = asyncio.Event()
    task = await listener.start(stop, within=20)
    try:
        yield listener
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def new_listener(env: dict[str, str], cache: CacheManager, **overrides: Any) -> Listener:
    """A listener with the test's broker; ``overrides`` go to the setting model that has them."""
    task_fields = {k: v for k, v in overrides.items() if k in TaskSettings.model_fields}
    ts = settings(env, **task_fields)
    ls = ListenerSettings(**{k: v for k, v in overrides.items() if k not in task_fields})
    return Listener(ls, Planner(DEFAULT_RULES), make_app(ts), cache, env["SHARED_CACHE_REDIS_URL"], ts)


def pg_source(pg: PostgresServer, listener: Listener, slot: str) -> PostgresLogicalSource:
    return PostgresLogicalSource(
        pg.dsn, Planner(DEFAULT_RULES).tables, slot=slot, on_dead_letter=listener.on_dead_letter
    )


def execute(pg: PostgresServer, sql: str, *params: Any) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(sql, params)


async def test_update_in_postgres_evicts_another_process_and_its_next_read_is_new(
    pg: PostgresServer, env: dict[str, str], celery_worker: CeleryWorker, cache: CacheManager
) -> None:
    execute(pg, "INSERT INTO documents VALUES ('doc1', 't1', 'c1', 'v1')")
    node = Node(env["SHARED_CACHE_REDIS_URL"], PREFIX, CHANNEL, dsn=pg.dsn)
    try:
        assert node.read("document", "doc1", "t1")[0] == {"v": "v1"}
        assert node.read("document", "doc1", "t1")[1]["tier"] == "memory"
        listener = new_listener(env, cache)
        listener.add_source(pg_source(pg, listener, "e2e"))
        async with running(listener):
            execute(pg, "UPDATE documents SET title = 'v2' WHERE id = 'doc1'")  # source -> task -> generations
            await wait_until(lambda: node.stats()["evicted"] >= 1)  # -> the other process's memory tier
            value, metrics = node.read("document", "doc1", "t1")
            assert value == {"v": "v2"} and metrics["source"] == "db"
            assert listener.stats["invalidation_tasks"] >= 1
    finally:
        node.stop()


async def test_a_lone_change_does_not_wait_for_the_window_and_a_burst_is_coalesced(
    pg: PostgresServer, env: dict[str, str], celery_worker: CeleryWorker, cache: CacheManager
) -> None:
    """With a 3 s window: a change after a quiet spell is invalidated long before the window would
    have closed; two changes that follow it 0.2 s apart wait for one window and share it."""
    execute(pg, "INSERT INTO agents VALUES ('lead1', 't9', 'v1'), ('lead2', 't9', 'v1')")
    listener = new_listener(env, cache, coalesce_window_ms=3000)
    listener.add_source(pg_source(pg, listener, "leading"))
    async with running(listener):
        for agent in ("lead1", "lead2"):
            await cache.set("agent_config", agent, {"name": "v1"}, "t9")
        committed = time.monotonic()
        execute(pg, "UPDATE agents SET name = 'v2' WHERE id = 'lead1'")
        await wait_until(lambda: _is_none(cache.get("agent_config", "lead1", "t9")))
        assert time.monotonic() - committed < 2.0  # not held for the 3 s window
        assert await cache.get("agent_config", "lead2", "t9") == {"name": "v1"}
        windows = listener.stats["windows"]

        await cache.set("agent_config", "lead1", {"name": "v2"}, "t9")
        execute(pg, "UPDATE agents SET name = 'v3' WHERE id = 'lead1'")  # the window is open again...
        await asyncio.sleep(0.2)
        execute(pg, "UPDATE agents SET name = 'v2' WHERE id = 'lead2'")  # ...and this joins it
        await wait_until(lambda: _is_none(cache.get("agent_config", "lead2", "t9")))
        assert await cache.get("agent_config", "lead1", "t9") is None
        assert listener.stats["windows"] == windows + 1


async def test_changes_committed_while_the_listener_was_down_are_processed(
    pg: PostgresServer, env: dict[str, str], celery_worker: CeleryWorker, cache: CacheManager
) -> None:
    listener = new_listener(env, cache)
    listener.add_source(pg_source(pg, listener, "durable"))
    async with running(listener):
        execute(pg, "INSERT INTO agents VALUES ('a1', 't2', 'first')")
        await wait_until(lambda: listener.stats["invalidation_tasks"] >= 1)
    await wait_until(lambda: broker_drained(env))  # that invalidation has run: it cannot hit what we set now
    await cache.set("agent_config", "a1", {"name": "first"}, "t2")

    execute(pg, "UPDATE agents SET name = 'second' WHERE id = 'a1'")  # nobody is listening now
    assert await cache.get("agent_config", "a1", "t2") == {"name": "first"}

    listener = new_listener(env, cache)
    listener.add_source(pg_source(pg, listener, "durable"))
    async with running(listener):
        await wait_until(lambda: _is_none(cache.get("agent_config", "a1", "t2")))
        assert listener.stats["events"] == 1  # only the missed change: the first one was confirmed


def broker_drained(env: dict[str, str]) -> bool:
    broker = redis.Redis.from_url(env["SHARED_CACHE_WORKER_BROKER_URL"])
    try:
        return not broker.llen("invalidation") and not broker.hlen("unacked")
    finally:
        broker.close()


async def _is_none(awaitable: Any) -> bool:
    return await awaitable is None


async def test_postgres_restart_loses_nothing(
    pg: PostgresServer, env: dict[str, str], celery_worker: CeleryWorker, cache: CacheManager
) -> None:
    listener = new_listener(env, cache)
    source = pg_source(pg, listener, "restart")
    listener.add_source(source)
    async with running(listener):
        execute(pg, "INSERT INTO collections VALUES ('c9', 't3')")
        await wait_until(lambda: listener.stats["invalidation_tasks"] >= 1)
        await cache.set("vector_store", "c9", {"n": 1}, "t3")
        pg.stop()
        await asyncio.sleep(0.5)  # the source fails its polls and backs off
        pg.start()
        execute(pg, "UPDATE collections SET tenant_id = 't3' WHERE id = 'c9'")
        await wait_until(lambda: _is_none(cache.get("vector_store", "c9", "t3")), within=20)
        assert source.reconnects >= 1


async def test_worker_killed_mid_task_loses_no_invalidation(
    env: dict[str, str], celery_worker: CeleryWorker, cache: CacheManager, sync_redis: redis.Redis
) -> None:
    await cache.set("document", "dk", {"v": 1}, "t4")
    app = make_app(settings(env))
    marker = f"{PREFIX}attempts"
    sync_redis.delete(marker)
    app.send_task("tests.slow_invalidate", args=["t4", [["t4", "res", "document", "dk"]], "test", marker, 3.0])
    await wait_until(lambda: sync_redis.llen(marker) == 1)
    first_pid = int(sync_redis.lindex(marker, 0))  # type: ignore[arg-type]
    os.kill(first_pid, signal.SIGKILL)  # the pool process dies mid-task
    await wait_until(lambda: sync_redis.llen(marker) == 2, within=30)  # the message came back
    assert int(sync_redis.lindex(marker, 1)) != first_pid  # type: ignore[arg-type]
    await wait_until(lambda: _is_none(cache.get("document", "dk", "t4")), within=10)


async def test_a_task_held_by_a_killed_worker_comes_back_soon_after_the_visibility_timeout(
    env: dict[str, str], cache: CacheManager, sync_redis: redis.Redis
) -> None:
    """The whole worker (main process and pool) killed while its task runs: the message stays in
    kombu's unacknowledged set, and the next worker restores it once the visibility timeout (5 s
    here) has passed, within seconds, not after kombu's default sweep period (about 100 s)."""
    own = {**env, "SHARED_CACHE_WORKER_BROKER_URL": env["SHARED_CACHE_WORKER_BROKER_URL"][:-1] + "2"}
    await cache.set("document", "dw", {"v": 1}, "t4")
    marker = f"{PREFIX}held"
    sync_redis.delete(marker)
    first = CeleryWorker(own, concurrency=1, queues="invalidation").start()
    second: CeleryWorker | None = None
    try:
        app = make_app(settings(own))
        app.send_task("tests.slow_invalidate", args=["t4", [["t4", "res", "document", "dw"]], "test", marker, 30.0])
        await wait_until(lambda: sync_redis.llen(marker) == 1)
        assert first.proc is not None
        for pid in [first.proc.pid, *first.child_pids()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        first.proc.wait(10)
        first.proc = None
        second = CeleryWorker(own, concurrency=1, queues="invalidation").start()
        started = time.monotonic()
        await wait_until(lambda: sync_redis.llen(marker) == 2, within=30)
        assert time.monotonic() - started < 20  # 5 s of visibility timeout and a sweep every 2 s
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_malformed_events_are_parked_and_the_listener_keeps_running(
    env: dict[str, str], celery_worker: CeleryWorker, cache: CacheManager, sync_redis: redis.Redis
) -> None:
    listener = new_listener(env, cache, dead_letter_key=f"{PREFIX}dead")
    source = RedisPubSubSource(
        env["SHARED_CACHE_REDIS_URL"], f"{PREFIX}changes", Planner().tables, listener.on_gap, listener.on_dead_letter
    )
    listener.add_source(source)
    await cache.set("agent_config", "a5", {"v": 1}, "t5")
    async with running(listener):
        await wait_until(lambda: source.subscriptions == 1)
        for raw in (
            b"{not json",
            b'{"table": "agents", "type": "UPDATE", "record": {"id": "a5"}}',
            b'{"table": "nope", "type": "UPDATE", "record": {"id": "a5", "tenant_id": "t5"}}',
            b'{"table": "agents", "type": 7, "record": {}}',
            b'{"table": "agents", "type": "UPDATE", "record": {"id": {"x": 1}, "tenant_id": "t5"}}',
        ):
            sync_redis.publish(f"{PREFIX}changes", raw)
        sync_redis.publish(
            f"{PREFIX}changes", b'{"table": "agents", "type": "UPDATE", "record": {"id": "a5", "tenant_id": "t5"}}'
        )
        await wait_until(lambda: _is_none(cache.get("agent_config", "a5", "t5")))
    parked = [orjson.loads(raw) for raw in sync_redis.lrange(f"{PREFIX}dead", 0, -1)]
    reasons = " | ".join(p["reason"] for p in parked)
    assert len(parked) == 5, reasons
    assert "invalid ChangeEvent" in reasons and "no rule for table public.nope" in reasons
    assert "has no 'tenant_id' column value" in reasons and "must be a string or an integer" in reasons
    assert all(p["source"] == "redis" and p["raw"] for p in parked)


async def test_redis_restart_under_the_listener_reconnects_and_invalidates_conservatively(
    env: dict[str, str],
) -> None:
    server = RedisServer(extra=["--appendonly", "yes", "--appendfsync", "always"]).start()
    mgr = CacheManager.configure(
        redis_url=server.url, key_prefix=PREFIX, eviction_channel=CHANNEL, breaker_reset_seconds=0.1
    )
    try:
        listener = new_listener({**env, "SHARED_CACHE_REDIS_URL": server.url}, mgr)
        source = RedisPubSubSource(
            server.url, f"{PREFIX}changes", Planner().tables, listener.on_gap, listener.on_dead_letter
        )
        listener.add_source(source)
        async with running(listener):
            await wait_until(lambda: source.subscriptions == 1)
            # the listener learns the tenant from a change of it, as it does in production
            change = b'{"table": "agents", "type": "UPDATE", "record": {"id": "a6", "tenant_id": "t6"}}'
            await listener.redis.publish(f"{PREFIX}changes", change)
            await wait_until(lambda: "t6" in listener.tenants.all())
            await mgr.set("document", "d6", {"v": 1}, "t6")
            gaps = listener.stats["conservative_invalidations"]
            server.stop()
            await asyncio.sleep(0.3)
            server.start()  # same port, data back from the append-only file
            await wait_until(lambda: source.subscriptions == 2, within=20)
            await wait_until(lambda: listener.stats["redis_restarts"] == 1)  # noticed by the run id
            # one for the resubscription, one for the restart itself
            await wait_until(lambda: listener.stats["conservative_invalidations"] >= gaps + 2)
            await wait_until(lambda: _is_none(mgr.get("document", "d6", "t6")))  # covered by "documents"
    finally:
        await mgr.close()
        server.cleanup()


async def test_a_burst_of_chunk_updates_becomes_a_handful_of_tasks(
    pg: PostgresServer, env: dict[str, str], celery_worker: CeleryWorker, cache: CacheManager
) -> None:
    listener = new_listener(env, cache, coalesce_window_ms=50)
    listener.add_source(pg_source(pg, listener, "burst"))
    # (the slot is created when the listener starts: the burst below comes after)
    async with running(listener):
        execute(
            pg,
            "INSERT INTO document_chunks (tenant_id, document_id, collection_id, content) "
            "SELECT 't7', 'd7', 'c7', 'chunk ' || g FROM generate_series(1, 10000) g",
        )
        await wait_until(lambda: listener.stats["events"] >= 10_000, within=30)
    assert listener.stats["invalidation_tasks"] <= 5, listener.stats


async def test_new_chunks_are_warmed_by_a_warming_worker_with_the_local_model(
    pg: PostgresServer, env: dict[str, str], celery_worker: CeleryWorker, cache: CacheManager
) -> None:
    """INSERT a chunk -> listener -> warm_texts task -> a warming worker embeds it (all-MiniLM-L6-v2,
    offline) -> the embedding is in the cache for every service."""
    warming_env = {**env, "SHARED_CACHE_WORKER_EMBEDDING_PROVIDER": "local", "HF_HUB_OFFLINE": "1"}
    warmer = CeleryWorker(warming_env, concurrency=1, queues="warming").start()
    try:
        listener = new_listener(env, cache, embedding_provider="local")
        listener.add_source(pg_source(pg, listener, "warming"))
        async with running(listener):
            execute(
                pg,
                "INSERT INTO document_chunks (tenant_id, document_id, collection_id, content) VALUES (%s, %s, %s, %s)",
                "t8", "d8", "c8", "Redis keeps the embeddings of every chunk",
            )  # fmt: skip
            await wait_until(lambda: listener.stats["warm_tasks"] >= 1)
            found: list[Any] = []

            async def warmed() -> bool:
                found[:] = [
                    await cache.get_embedding("Redis keeps the embeddings of every chunk", "all-MiniLM-L6-v2", "t8")
                ]
                return found[0] is not None

            await wait_until(warmed, within=90)  # the worker loads the model on its first task
            assert len(found[0]) == 384
    finally:
        warmer.stop()


async def test_warm_collection_task_embeds_every_chunk_once(
    pg: PostgresServer, env: dict[str, str], cache: CacheManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.warming import warm_collection

    for i in range(5):
        execute(
            pg,
            "INSERT INTO document_chunks (tenant_id, document_id, collection_id, content) VALUES (%s, %s, %s, %s)",
            "t9", "d9", "c9", f"collection chunk number {i}",
        )  # fmt: skip
    for name, value in {**env, "SHARED_CACHE_WORKER_DATABASE_URL": pg.dsn, "HF_HUB_OFFLINE": "1",
                        "SHARED_CACHE_WORKER_EMBEDDING_PROVIDER": "local"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    first = await asyncio.to_thread(warm_collection.run, "t9", "c9")
    assert first == {"texts": 5, "cache_hits": 0, "generated": 5}
    second = await asyncio.to_thread(warm_collection.run, "t9", "c9")
    assert second == {"texts": 5, "cache_hits": 5, "generated": 0}
    assert len(await cache.get_embedding("collection chunk number 3", "all-MiniLM-L6-v2", "t9") or []) == 384

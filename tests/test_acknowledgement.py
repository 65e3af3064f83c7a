"""No invalidation is lost when a Celery worker is killed at any moment (real Postgres slot, real
Redis, real Celery worker processes, the real listener).

kombu's Redis transport pops a message before it records it as unacknowledged, so a worker killed
in between loses the message; the listener confirms the slot only once each invalidation's receipt
is in Redis and sends again what was not applied. The workers keep kombu's default visibility
timeout (300 s): what comes back within these tests comes back through the listener's re-sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
import redis

from devtools.embedded import EmbeddedPostgres as PostgresServer
from devtools.embedded import EmbeddedRedis as RedisServer
from shared_cache import CacheManager
from tasks.settings import TaskSettings
from tests.celery_worker import CeleryWorker, worker_env
from tests.waiting import wait_until
from worker.app import make_app
from worker.events import ChangeEvent
from worker.listener import Listener
from worker.rules import DEFAULT_RULES, Planner
from worker.settings import ListenerSettings
from worker.sources.postgres import PostgresLogicalSource

PREFIX, CHANNEL = "ack:", "ack:evictions"
DOCS = 200


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE documents (id text PRIMARY KEY, tenant_id text, collection_id text, title text);"
            "ALTER TABLE documents REPLICA IDENTITY FULL;"
        )
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    own = RedisServer().start()  # workers of other modules never consume this broker
    yield own
    own.cleanup()


@pytest.fixture(scope="module")
def env(server: RedisServer) -> dict[str, str]:
    return worker_env(server.url, PREFIX, CHANNEL)


@pytest.fixture
async def cache(env: dict[str, str]) -> AsyncIterator[CacheManager]:
    mgr = CacheManager.configure(redis_url=env["SHARED_CACHE_REDIS_URL"], key_prefix=PREFIX, eviction_channel=CHANNEL)
    yield mgr
    await mgr.close()


def unstarted_listener(env: dict[str, str], cache: CacheManager, **settings: Any) -> Listener:
    tasks = TaskSettings(broker_url=env["SHARED_CACHE_WORKER_BROKER_URL"])
    return Listener(
        ListenerSettings(**settings),
        Planner(DEFAULT_RULES),
        make_app(tasks),
        cache,
        env["SHARED_CACHE_REDIS_URL"],
        tasks,
    )


@contextlib.asynccontextmanager
async def listening(env: dict[str, str], cache: CacheManager, pg: PostgresServer, slot: str) -> AsyncIterator[Listener]:
    listener = unstarted_listener(env, cache, ack_timeout_s=1.0)
    listener.add_source(PostgresLogicalSource(pg.dsn, Planner(DEFAULT_RULES).tables, slot=slot))
    stop = asyncio.Event()
    task = await listener.start(stop, within=30)
    try:
        yield listener
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def kill(worker: CeleryWorker, sig: int) -> None:
    """Signal the worker's main process and its pool processes (its process group is the test's)."""
    assert worker.proc is not None
    for pid in [worker.proc.pid, *worker.child_pids()]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def execute(pg: PostgresServer, sql: str, *params: Any) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(sql, params)


async def cached_docs(cache: CacheManager, tenant: str, n: int) -> None:
    for i in range(n):
        await cache.set("document", f"{tenant}{i}", {"v": 0}, tenant)


async def stale_docs(cache: CacheManager, tenant: str, n: int) -> list[str]:
    """Documents still served from the cache (each was updated in Postgres: none should be)."""
    return [f"{tenant}{i}" for i in range(n) if await cache.get("document", f"{tenant}{i}", tenant) is not None]


async def test_a_task_popped_by_a_hung_worker_that_is_then_killed_is_applied_by_the_next(
    pg: PostgresServer, env: dict[str, str], cache: CacheManager
) -> None:
    execute(pg, "INSERT INTO documents VALUES ('hung0', 'hung', 'c1', 'v0')")
    hung = CeleryWorker(env, concurrency=1, queues="invalidation").start()
    broker = redis.Redis.from_url(env["SHARED_CACHE_WORKER_BROKER_URL"])
    replacement: CeleryWorker | None = None
    try:
        async with listening(env, cache, pg, "ack_hung") as listener:
            await cached_docs(cache, "hung", 1)
            kill(hung, signal.SIGSTOP)  # its BRPOP is pending: Redis hands it the next message
            execute(pg, "UPDATE documents SET title = 'v1' WHERE id = 'hung0'")
            await wait_until(lambda: listener.counters.invalidation_tasks >= 1)
            await wait_until(lambda: broker.llen("invalidation") == 0)  # popped by the hung worker...
            assert not broker.hlen("unacked")  # ...which never recorded it
            kill(hung, signal.SIGKILL)
            hung.proc.wait(10)  # type: ignore[union-attr]
            hung.proc = None
            replacement = CeleryWorker(env, concurrency=1, queues="invalidation").start()
            await wait_until(lambda: stale_docs_none(cache, "hung", 1), within=30)
            assert listener.counters.resent >= 1
            await wait_until(lambda: listener.acks.pending_windows == 0, within=10)  # applied, so confirmed
        async with listening(env, cache, pg, "ack_hung") as listener:
            await asyncio.sleep(1.0)
            assert listener.counters.events == 0  # the slot was confirmed past the update
    finally:
        if hung.proc is not None:
            kill(hung, signal.SIGCONT)
        hung.stop()
        if replacement is not None:
            replacement.stop()
        broker.close()


async def stale_docs_none(cache: CacheManager, tenant: str, n: int) -> bool:
    return not await stale_docs(cache, tenant, n)


async def test_a_worker_killed_in_the_middle_of_a_burst_of_200_updates_loses_no_invalidation(
    pg: PostgresServer, env: dict[str, str], cache: CacheManager
) -> None:
    rows = "SELECT 'burst' || g, 'burst', 'c1', 'v0' FROM generate_series(0, %s) g"
    execute(pg, f"INSERT INTO documents {rows}", DOCS - 1)
    first = CeleryWorker(env, concurrency=2, queues="invalidation").start()
    second: CeleryWorker | None = None
    try:
        async with listening(env, cache, pg, "ack_burst") as listener:
            await cached_docs(cache, "burst", DOCS)
            committed = threading.Event()
            halfway = threading.Event()

            def burst() -> None:  # 200 transactions, one row each, as fast as Postgres takes them
                with psycopg.connect(pg.dsn, autocommit=True) as conn:
                    for i in range(DOCS):
                        conn.execute("UPDATE documents SET title = 'v1' WHERE id = %s", (f"burst{i}",))
                        if i == DOCS // 2:
                            halfway.set()
                committed.set()

            writer = threading.Thread(target=burst)
            writer.start()
            await asyncio.to_thread(halfway.wait, 30)
            kill(first, signal.SIGKILL)  # main process and pool processes, mid-burst
            first.proc.wait(10)  # type: ignore[union-attr]
            first.proc = None
            await asyncio.to_thread(writer.join, 60)
            assert committed.is_set()
            await asyncio.sleep(2.0)  # restarted 2 s later
            second = CeleryWorker(env, concurrency=2, queues="invalidation").start()
            await wait_until(lambda: stale_docs_none(cache, "burst", DOCS), within=60)
            await wait_until(lambda: listener.acks.pending_windows == 0, within=10)
        async with listening(env, cache, pg, "ack_burst") as listener:
            await asyncio.sleep(1.0)
            assert listener.counters.events == 0  # confirmed past the last of the 200
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_while_no_worker_runs_nothing_is_sent_twice_and_reading_pauses_at_the_bound(
    pg: PostgresServer, env: dict[str, str], cache: CacheManager
) -> None:
    quiet = {**env, "SHARED_CACHE_WORKER_BROKER_URL": env["SHARED_CACHE_REDIS_URL"].rsplit("/", 1)[0] + "/5"}
    broker = redis.Redis.from_url(quiet["SHARED_CACHE_WORKER_BROKER_URL"])
    tasks = TaskSettings(broker_url=quiet["SHARED_CACHE_WORKER_BROKER_URL"])
    settings = ListenerSettings(ack_timeout_s=0.2, max_pending=3)
    listener = Listener(settings, Planner(DEFAULT_RULES), make_app(tasks), cache, env["SHARED_CACHE_REDIS_URL"], tasks)
    listener.add_source(PostgresLogicalSource(pg.dsn, Planner(DEFAULT_RULES).tables, slot="ack_quiet"))
    stop = asyncio.Event()
    run = await listener.start(stop, within=30)
    try:
        for i in range(6):  # six tenants, six transactions apart (six windows), never applied
            execute(pg, "INSERT INTO documents VALUES (%s, %s, 'c1', 'v0')", f"quiet{i}", f"q{i}")
            await asyncio.sleep(0.3)
        await wait_until(lambda: listener.counters.invalidation_tasks >= 3, within=20)
        await asyncio.sleep(3.0)  # fifteen ack timeouts
        sent = listener.counters.invalidation_tasks
        assert sent == 3  # it stopped reading once 3 were unapplied...
        assert listener.counters.backpressure_waits >= 1
        assert listener.counters.resent == 0  # ...and sent none of them again: they are still queued
        assert broker.llen("invalidation") == sent
    finally:
        stop.set()
        await asyncio.wait_for(run, 30)
        broker.flushdb()
        broker.close()


async def test_the_acknowledger_stops_when_cancelled_just_as_it_is_woken(
    env: dict[str, str], cache: CacheManager
) -> None:
    # On Python 3.11 asyncio.wait_for returns normally when it is cancelled in the loop iteration in
    # which what it waits for arrives: a loop around it then outlived every stop.
    listener = unstarted_listener(env, cache)
    for _ in range(3):
        task = asyncio.create_task(listener.acks.run())
        await asyncio.sleep(0.05)  # waiting for its next round
        listener.acks.expire_all()  # wakes it...
        task.cancel()  # ...in the same iteration as its cancellation
        done, _ = await asyncio.wait({task}, timeout=3)
        assert done and task.cancelled()
    await listener.close()


async def test_a_listener_cancelled_just_as_a_change_arrives_stops(
    env: dict[str, str], cache: CacheManager, pg: PostgresServer
) -> None:
    listener = unstarted_listener(env, cache)
    source = PostgresLogicalSource(pg.dsn, Planner(DEFAULT_RULES).tables, slot="ack_cancelled")
    listener.add_source(source)
    task = await listener.start(asyncio.Event(), within=30)
    event = ChangeEvent(table="documents", type="UPDATE", record={"id": "x", "tenant_id": "t"}, source="postgres")
    listener.queue.put_nowait((source, event))
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=15)
    assert done and task.cancelled()
    assert listener.counters.processed == 0  # it stopped; it did not go on with the change
    execute(pg, "SELECT pg_drop_replication_slot('ack_cancelled')")


class HungSource(PostgresLogicalSource):
    """The real source, except that closing it never ends (its server stopped answering)."""

    async def close(self) -> None:
        await asyncio.Event().wait()


async def test_a_stop_never_waits_on_a_part_that_does_not_close(
    env: dict[str, str], cache: CacheManager, pg: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    listener = unstarted_listener(env, cache, stop_wait_s=1.0, drain_s=0.5)
    listener.add_source(HungSource(pg.dsn, Planner(DEFAULT_RULES).tables, slot="ack_hung"))
    stop = asyncio.Event()
    task = await listener.start(stop, within=30)
    stop.set()
    started = asyncio.get_running_loop().time()
    done, _ = await asyncio.wait({task}, timeout=10)
    assert done and task.exception() is None
    assert asyncio.get_running_loop().time() - started < 4  # the one second it waited for the source
    assert "source postgres did not close within 1 s" in caplog.text
    await PostgresLogicalSource(pg.dsn, (), slot="ack_hung").close()
    execute(pg, "SELECT pg_drop_replication_slot('ack_hung')")

"""Redis restarted (it is the cache and the broker), everything else running: real Redis, real
Postgres slot, real Celery worker processes, reader processes with memory tiers, the real listener.

The Redis here keeps nothing across a restart (no RDB, no AOF): the worst case. What is lost there
(queued tasks, receipts, generations, cached entries, the known-tenant set) and what the system does
about it: the Celery worker reconnects and goes on, the listener sends again what was not applied,
bumps what every source covers for the tenants it keeps in memory, and every reader's memory tier
drops what it held when its eviction subscription comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

from devtools.embedded import EmbeddedPostgres as PostgresServer
from devtools.embedded import EmbeddedRedis as RedisServer
from shared_cache import CacheManager
from tasks.contracts import InvalidateCall
from tasks.settings import TaskSettings
from tests.celery_worker import CeleryWorker, worker_env
from tests.node import Node
from tests.waiting import wait_until
from worker.app import make_app
from worker.dispatch import send_calls
from worker.listener import Listener
from worker.rules import DEFAULT_RULES, Planner
from worker.settings import ListenerSettings
from worker.sources.postgres import PostgresLogicalSource

PREFIX, CHANNEL = "rr:", "rr:evictions"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    own = RedisServer().start()  # restarted by the test: other tests never see it
    yield own
    own.cleanup()


def environment(server: RedisServer) -> dict[str, str]:
    return worker_env(server.url, PREFIX, CHANNEL)


def restart(server: RedisServer, down_s: float = 1.0) -> None:
    server.stop()
    time.sleep(down_s)
    server.start()  # same port, empty


async def test_the_celery_worker_survives_a_redis_restart_with_a_task_in_flight(server: RedisServer) -> None:
    env = environment(server)
    worker = CeleryWorker(env, concurrency=2).start()
    cache = CacheManager.configure(redis_url=server.url, key_prefix=PREFIX, eviction_channel=CHANNEL)
    sync = redis.Redis.from_url(server.url)
    try:
        app = make_app(TaskSettings(broker_url=env["SHARED_CACHE_WORKER_BROKER_URL"]))
        marker = f"{PREFIX}attempts"
        app.send_task("tests.slow_invalidate", args=["t1", [["t1"]], "slow", marker, 3.0])
        await wait_until(lambda: sync.llen(marker) == 1)  # it runs: unacknowledged while Redis goes away
        await asyncio.to_thread(restart, server)
        await asyncio.sleep(3.0)  # celery 5.7.0 exited here ("'NoneType' object has no attribute 'hostname'")
        assert worker.proc is not None and worker.proc.poll() is None, "".join(worker.lines[-40:])
        await cache.set("document", "d1", {"v": 1}, "t2")
        send_calls(app, [InvalidateCall("t2", (("t2", "res", "document", "d1"),))])
        await wait_until(lambda: _is_none(cache.get("document", "d1", "t2")), within=30)
        assert worker.proc.poll() is None
    finally:
        worker.stop()
        sync.close()
        await cache.close()


async def _is_none(awaitable: Any) -> bool:
    return await awaitable is None


async def test_after_a_redis_restart_every_memory_tier_drops_what_it_held_and_nothing_stale_is_served(
    server: RedisServer,
) -> None:
    env = environment(server)
    pg = PostgresServer().start()
    worker = CeleryWorker(env, concurrency=2, queues="invalidation").start()
    cache = CacheManager.configure(redis_url=server.url, key_prefix=PREFIX, eviction_channel=CHANNEL)
    nodes: list[Node] = []
    stop = asyncio.Event()
    run: asyncio.Task[None] | None = None
    try:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE documents (id text PRIMARY KEY, tenant_id text, collection_id text, title text);"
                "ALTER TABLE documents REPLICA IDENTITY FULL;"
            )
        tasks = TaskSettings(broker_url=env["SHARED_CACHE_WORKER_BROKER_URL"])
        settings = ListenerSettings(ack_timeout_s=1.0)
        listener = Listener(settings, Planner(DEFAULT_RULES), make_app(tasks), cache, server.url, tasks)
        listener.add_source(PostgresLogicalSource(pg.dsn, Planner(DEFAULT_RULES).tables, slot="restart"))
        run = await listener.start(stop, within=30)
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO documents VALUES ('da', 'ta', 'c1', 'a1'), ('db', 'tb', 'c1', 'b1')")
        await wait_until(lambda: listener.counters.applied >= 2 and listener.acks.pending_windows == 0, within=30)
        assert sorted(await cache.redis.client().smembers(cache.keys.worker_tenants)) == [b"ta", b"tb"]

        nodes = [Node(server.url, PREFIX, CHANNEL, dsn=pg.dsn) for _ in range(2)]
        for node in nodes:
            for doc, tenant, title in (("da", "ta", "a1"), ("db", "tb", "b1")):
                assert node.read("document", doc, tenant)[0] == {"v": title}
                assert node.read("document", doc, tenant)[1]["tier"] == "memory"
            assert node.stats()["memory"] == 2
        connects = [node.stats()["connects"] for node in nodes]

        server.stop()  # everything Redis held is gone: entries, generations, queues, the tenant set
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("UPDATE documents SET title = 'a2' WHERE id = 'da'")  # while Redis is down
        await asyncio.sleep(1.0)
        server.start()

        await wait_until(lambda: listener.counters.redis_restarts == 1, within=20)
        # the tenants were kept in the listener's memory: the conservative invalidation reaches both
        await wait_until(lambda: listener.counters.conservative_tenants >= 2, within=20)
        for node, before in zip(nodes, connects, strict=True):
            await wait_until(lambda node=node, before=before: node.stats()["connects"] > before, within=20)
            assert node.stats()["memory"] == 0  # dropped everything when its subscription came back
        await wait_until(lambda: listener.acks.pending_windows == 0, within=30)  # the update, applied
        nodes.append(Node(server.url, PREFIX, CHANNEL, dsn=pg.dsn))  # and a fresh process
        for node in nodes:
            assert node.read("document", "da", "ta")[0] == {"v": "a2"}
            assert node.read("document", "db", "tb")[0] == {"v": "b1"}
        assert sorted(await cache.redis.client().smembers(cache.keys.worker_tenants)) == [b"ta", b"tb"]
        assert worker.proc is not None and worker.proc.poll() is None
    finally:  # every step runs, whatever the one before it raised: no process outlives the test
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(pg.cleanup)
            cleanup.callback(worker.stop)
            for node in nodes:
                cleanup.callback(node.stop)
            stop.set()
            if run is not None:
                await asyncio.wait_for(run, 30)
            await cache.close()

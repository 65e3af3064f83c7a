"""The Supabase gap path end to end: a REAL listener process (``python -m worker`` configured for
Supabase), a library node in another process reading through the cache from a REAL Postgres,
REAL Redis, and the local Supabase stand-ins (Realtime and PostgREST behind one project URL).

A change the feed loses must not leave a stale value behind: the next read comes from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import psycopg
import pytest
import redis

from devtools.embedded import EmbeddedPostgres as PostgresServer
from shared_cache import Keyspace
from tests.node import Node
from tests.supabase_project import KEY, SCHEMA_SQL, SupabaseProject, altered
from tests.waiting import wait_until

PREFIX = "sb:"
CHANNEL = "sb:evictions"
pytestmark = pytest.mark.filterwarnings("ignore:ConnectionClosed.*is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
    yield server
    server.cleanup()


@pytest.fixture
async def project(pg: PostgresServer) -> AsyncIterator[SupabaseProject]:
    async with SupabaseProject(pg.dsn) as running:
        yield running


@pytest.fixture
def node(pg: PostgresServer, redis_url: str) -> Iterator[Node]:
    reader = Node(redis_url, PREFIX, CHANNEL, dsn=pg.dsn)
    yield reader
    reader.stop()


def execute(pg: PostgresServer, sql: str, *params: Any) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(sql, params)


class ListenerProcess:
    """``python -m worker`` with the Supabase source, as an operator would run it."""

    def __init__(self, project: SupabaseProject, redis_url: str) -> None:
        base = redis_url.rsplit("/", 1)[0]
        self.broker = f"{base}/5"  # tasks of ordinary changes wait there: the gap path needs no worker
        self.env = {
            **os.environ,
            "SHARED_CACHE_REDIS_URL": redis_url,
            "SHARED_CACHE_KEY_PREFIX": PREFIX,
            "SHARED_CACHE_EVICTION_CHANNEL": CHANNEL,
            "SHARED_CACHE_WORKER_BROKER_URL": self.broker,
            "SHARED_CACHE_WORKER_SOURCES": '["supabase"]',
            "SHARED_CACHE_WORKER_SUPABASE_URL": project.url,
            "SHARED_CACHE_WORKER_SUPABASE_KEY": KEY,
            "SHARED_CACHE_WORKER_REALTIME_PROBE_INTERVAL_S": "0.2",
            "SHARED_CACHE_WORKER_REALTIME_PROBE_TIMEOUT_S": "2.0",
            "SHARED_CACHE_WORKER_DEAD_LETTER_KEY": f"{PREFIX}dead",
        }
        self.redis = redis.Redis.from_url(redis_url)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> ListenerProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "--status-every", "0.3", env=self.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return self

    def stats(self) -> dict[str, Any]:
        raw = self.redis.get(Keyspace(PREFIX).worker_stats)
        return orjson.loads(raw)["stats"] if raw else {}  # type: ignore[no-any-return]

    async def stop(self) -> str:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = await asyncio.wait_for(self.proc.communicate(), 20)
        except TimeoutError:
            self.proc.kill()
            _, err = await self.proc.communicate()
        self.redis.delete(Keyspace(PREFIX).worker_stats, Keyspace(PREFIX).worker_tenants, f"{PREFIX}dead")
        broker = redis.Redis.from_url(self.broker)
        broker.flushdb()
        broker.close()
        self.redis.close()
        return err.decode(errors="replace")


@contextlib.asynccontextmanager
async def listening(project: SupabaseProject, redis_url: str, tenant: str) -> AsyncIterator[ListenerProcess]:
    listener = await ListenerProcess(project, redis_url).start()
    listener.redis.sadd(Keyspace(PREFIX).worker_tenants, tenant)  # a tenant whose changes it has seen
    try:
        await wait_until(lambda: listener.stats().get("conservative_invalidations", 0) >= 1, within=30)
        yield listener
    finally:
        log = await listener.stop()
        assert "Traceback" not in log, log


async def read(node: Node, doc: str, tenant: str) -> tuple[Any, dict[str, Any]]:
    return await asyncio.to_thread(node.read, "document", doc, tenant)


async def test_a_change_lost_by_a_silent_feed_is_not_served_stale(
    pg: PostgresServer, project: SupabaseProject, node: Node, redis_url: str
) -> None:
    execute(pg, "INSERT INTO documents VALUES ('doc1', 'ta', 'c1', 'v1')")
    async with listening(project, redis_url, "ta") as listener:
        assert (await read(node, "doc1", "ta"))[0] == {"v": "v1"}
        assert (await read(node, "doc1", "ta"))[1]["tier"] == "memory"  # cached by the reader

        project.realtime.silent = True  # the feed goes quiet: sockets and heartbeats still answered
        execute(pg, "UPDATE documents SET title = 'v2' WHERE id = 'doc1'")  # lost
        gaps = listener.stats()["conservative_invalidations"]
        await wait_until(lambda: listener.stats()["conservative_invalidations"] > gaps, within=20)

        value, metrics = await read(node, "doc1", "ta")
        assert value == {"v": "v2"} and metrics["source"] == "db"  # not the stale v1
        project.realtime.silent = False


async def test_a_delete_under_row_level_security_is_not_served_stale(
    pg: PostgresServer, project: SupabaseProject, node: Node, redis_url: str
) -> None:
    execute(pg, "INSERT INTO documents VALUES ('doc2', 'tb', 'c1', 'kept')")
    async with altered(pg.dsn, "ALTER TABLE documents ENABLE ROW LEVEL SECURITY",
                       "ALTER TABLE documents DISABLE ROW LEVEL SECURITY"):  # fmt: skip
        async with listening(project, redis_url, "tb") as listener:
            assert (await read(node, "doc2", "tb"))[0] == {"v": "kept"}
            assert (await read(node, "doc2", "tb"))[1]["tier"] == "memory"
            gaps = listener.stats()["conservative_invalidations"]
            execute(pg, "DELETE FROM documents WHERE id = 'doc2'")  # old_record: the primary key only
            await wait_until(lambda: listener.stats()["conservative_invalidations"] > gaps, within=20)

            value, metrics = await read(node, "doc2", "tb")
            assert value is None and metrics["source"] == "none"  # the database has no such row now
            assert listener.stats()["dead_letters"] == 1  # parked too, with its reason
            parked = orjson.loads(listener.redis.lindex(f"{PREFIX}dead", 0) or b"{}")
            assert "cannot be planned" in parked["reason"] and parked["source"] == "supabase"

"""No input and no failure to park it ends the listener: the real ``python -m worker`` process, a
real Redis, a real Postgres slot and a real Celery worker.

Each case sends what once stopped the listener, then checks that the process is still running, that
what could be planned was applied, and what the listener's own report (the status it publishes in
Redis) counted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis

from devtools.embedded import EmbeddedPostgres as PostgresServer
from devtools.embedded import EmbeddedRedis as RedisServer
from devtools.embedded import end_process
from shared_cache import CacheManager, Keyspace
from tests.celery_worker import CeleryWorker, worker_env
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
PREFIX, CHANNEL, CHANGES, DEAD = "rb:", "rb:evictions", "rb:changes", "rb:dead"


class ListenerProcess:
    """``python -m worker`` as a child process; its output is kept in ``lines``."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "--status-every", "0.5"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return "".join(self.lines[-60:])

    def stop(self) -> None:
        end_process(self.proc, 20)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    own = RedisServer().start()
    yield own
    own.cleanup()


@pytest.fixture(scope="module")
def env(server: RedisServer) -> dict[str, str]:
    return worker_env(server.url, PREFIX, CHANNEL) | {
        "SHARED_CACHE_WORKER_CHANGES_CHANNEL": CHANGES,
        "SHARED_CACHE_WORKER_DEAD_LETTER_KEY": DEAD,
        "SHARED_CACHE_WORKER_SOURCES": '["redis"]',
        "SHARED_CACHE_WORKER_ACK_TIMEOUT_S": "1",
    }


@pytest.fixture(scope="module")
def celery_worker(env: dict[str, str]) -> Iterator[CeleryWorker]:
    worker = CeleryWorker(env, concurrency=1, queues="invalidation").start()
    yield worker
    worker.stop()


@pytest.fixture
def sync_redis(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    client.delete(DEAD, Keyspace.dead_letter_counts(DEAD))
    yield client
    client.config_set("maxmemory", 0)
    client.delete(DEAD)
    client.close()


@pytest.fixture
async def cache(server: RedisServer) -> AsyncIterator[CacheManager]:
    mgr = CacheManager.configure(redis_url=server.url, key_prefix=PREFIX, eviction_channel=CHANNEL)
    yield mgr
    await mgr.close()


def report(client: redis.Redis) -> dict[str, Any]:
    raw = client.get(Keyspace(PREFIX).worker_stats)
    return orjson.loads(raw) if raw else {}  # type: ignore[no-any-return]


def counter(client: redis.Redis, name: str) -> int:
    return int(report(client).get("stats", {}).get(name, 0))


async def listening(env: dict[str, str], client: redis.Redis, **extra: str) -> ListenerProcess:
    listener = ListenerProcess({**env, **extra})

    def subscribed() -> bool:
        assert listener.alive(), listener.output()
        return bool(client.pubsub_numsub(CHANGES)[0][1])

    await wait_until(subscribed, within=60)
    return listener


def publish(client: redis.Redis, **event: Any) -> None:
    client.publish(CHANGES, orjson.dumps(event))


async def evicted(cache: CacheManager, data_type: str, rid: str, tenant: str) -> bool:
    return await cache.get(data_type, rid, tenant) is None


@pytest.mark.parametrize("timezone", ["UTC", "Asia/Tokyo", "America/Los_Angeles"])
async def test_commit_timestamps_out_of_range_never_stop_the_listener(
    env: dict[str, str], celery_worker: CeleryWorker, sync_redis: redis.Redis, cache: CacheManager, timezone: str
) -> None:
    listener = await listening(env, sync_redis, TZ=timezone)
    try:
        stamps = ["0001-01-01T00:00:00", "9999-12-31T23:59:59", "9999-12-31T23:59:59-12:00"]
        stamps.append("0001-01-01T00:00:00+14:00")
        for i, stamp in enumerate(stamps):
            await cache.set("agent_config", f"a{i}", {"v": 1}, "tz")
            record = {"id": f"a{i}", "tenant_id": "tz"}
            publish(sync_redis, table="agents", type="UPDATE", record=record, commit_timestamp=stamp)
        for i in range(len(stamps)):  # each event was planned and applied: its timestamp is only for latency
            await wait_until(lambda i=i: evicted(cache, "agent_config", f"a{i}", "tz"), within=20)
        assert listener.alive(), listener.output()
    finally:
        listener.stop()


async def test_a_dead_letter_that_cannot_be_parked_is_counted_and_the_listener_goes_on(
    env: dict[str, str], celery_worker: CeleryWorker, sync_redis: redis.Redis, cache: CacheManager
) -> None:
    listener = await listening(env, sync_redis)
    try:
        sync_redis.set(DEAD, "a plain string")  # every park now fails with WRONGTYPE
        publish(sync_redis, table="agents", type="UPDATE", record={"id": "x"})  # no tenant: a dead letter
        await wait_until(lambda: counter(sync_redis, "dead_letters_lost") == 1, within=20)

        sync_redis.delete(DEAD)
        used = int(sync_redis.info("memory")["used_memory"])
        sync_redis.config_set("maxmemory-policy", "noeviction")
        sync_redis.config_set("maxmemory", used)  # full: every write is refused with OOM
        publish(sync_redis, table="agents", type="UPDATE", record={"id": "y"})
        await wait_until(lambda: "cannot park a dead letter" in "".join(listener.lines[-200:]), within=20)
        await asyncio.sleep(1.0)
        assert listener.alive(), listener.output()
        sync_redis.config_set("maxmemory", 0)

        await cache.set("agent_config", "after", {"v": 1}, "dl")  # the listener still plans and applies
        publish(sync_redis, table="agents", type="UPDATE", record={"id": "after", "tenant_id": "dl"})
        await wait_until(lambda: evicted(cache, "agent_config", "after", "dl"), within=20)
        await wait_until(lambda: counter(sync_redis, "dead_letters_lost") == 2, within=20)
        assert not sync_redis.llen(DEAD)  # neither could be parked: counted as lost, not half-written
        assert listener.alive(), listener.output()
    finally:
        listener.stop()


async def test_an_update_whose_old_row_lacks_its_tenant_still_invalidates_the_new_row(
    env: dict[str, str], celery_worker: CeleryWorker, sync_redis: redis.Redis, cache: CacheManager
) -> None:
    listener = await listening(env, sync_redis)
    try:
        await cache.set("agent_config", "a7", {"v": 1}, "t7")
        old, new = {"id": "a7"}, {"id": "a7", "tenant_id": "t7"}
        publish(sync_redis, table="agents", type="UPDATE", record=new, old_record=old)
        await wait_until(lambda: evicted(cache, "agent_config", "a7", "t7"), within=20)
        await wait_until(lambda: sync_redis.llen(DEAD) == 1, within=20)
        parked = orjson.loads(sync_redis.lindex(DEAD, 0))  # type: ignore[arg-type]
        assert parked["reason"] == "partly planned: old_record: agents row has no 'tenant_id' column value"
        await wait_until(lambda: counter(sync_redis, "partly_planned") == 1, within=20)
    finally:
        listener.stop()


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE agents (id text PRIMARY KEY, tenant_id text, name text)")
        conn.execute("ALTER TABLE agents REPLICA IDENTITY FULL")
    yield server
    server.cleanup()


def confirmed_lsn(pg: PostgresServer, slot: str) -> int:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
    return int(row[0]) if row else 0


def current_lsn(pg: PostgresServer) -> int:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


async def test_the_postgres_source_never_confirms_past_an_event_it_could_neither_plan_nor_park(
    env: dict[str, str], celery_worker: CeleryWorker, sync_redis: redis.Redis, cache: CacheManager, pg: PostgresServer
) -> None:
    slot = "robust"
    listener = ListenerProcess(
        {**env, "SHARED_CACHE_WORKER_SOURCES": '["postgres"]', "SHARED_CACHE_WORKER_DATABASE_URL": pg.dsn,
         "SHARED_CACHE_WORKER_SLOT_NAME": slot}
    )  # fmt: skip
    try:
        await wait_until(lambda: listener.alive() and "listening to postgres" in "".join(listener.lines), within=60)
        sync_redis.set(DEAD, "a plain string")
        before_bad = current_lsn(pg)
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO agents VALUES ('bad', NULL, 'no tenant')")  # cannot be planned
        await cache.set("agent_config", "good", {"v": 1}, "t8")
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO agents VALUES ('good', 't8', 'fine')")
        # later changes still go out: their invalidation is applied...
        await wait_until(lambda: evicted(cache, "agent_config", "good", "t8"), within=20)
        await wait_until(lambda: counter(sync_redis, "park_retries") >= 2, within=30)
        # ...but the slot waits before the event nobody could park, and the listener keeps running
        assert report(sync_redis)["pending"]["held_dead_letters"] == 1
        assert confirmed_lsn(pg, slot) <= before_bad
        assert listener.alive(), listener.output()

        sync_redis.delete(DEAD)  # Redis takes dead letters again
        await wait_until(lambda: sync_redis.llen(DEAD) == 1, within=60)
        await wait_until(lambda: confirmed_lsn(pg, slot) > before_bad, within=20)
        parked = orjson.loads(sync_redis.lindex(DEAD, 0))  # type: ignore[arg-type]
        assert parked["source"] == "postgres" and "has no 'tenant_id' column value" in parked["reason"]
        assert listener.alive(), listener.output()
    finally:
        listener.stop()


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        (
            "SHARED_CACHE_REDIS_URL",
            "redis://localhost:notaport/0",
            "SHARED_CACHE_REDIS_URL=redis://localhost:notaport/0",
        ),
        ("SHARED_CACHE_WORKER_BROKER_URL", "http://localhost:6379/0", "SHARED_CACHE_WORKER_BROKER_URL=http://"),
        ("SHARED_CACHE_WORKER_BROKER_URL", "amqp://guest@localhost//", "SHARED_CACHE_WORKER_BROKER_URL=amqp://"),
        ("SHARED_CACHE_WORKER_DATABASE_URL", "postgresql://u:hunter2@db:99999/x", "SHARED_CACHE_WORKER_DATABASE_URL="),
    ],
)
def test_a_malformed_url_ends_the_listener_with_one_line(name: str, value: str, named: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SHARED_CACHE_REDIS_URL": "redis://127.0.0.1:1/0",
        "SHARED_CACHE_WORKER_BROKER_URL": "redis://127.0.0.1:1/1",
        "SHARED_CACHE_WORKER_DATABASE_URL": "postgresql://127.0.0.1:1/x",
        "SHARED_CACHE_WORKER_SOURCES": "postgres",
        name: value,
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("invalid settings: " + named), done.stderr
    assert "hunter2" not in done.stderr  # a password in the URL is masked


async def test_sigterm_while_changes_pour_in_stops_the_listener_at_once(
    env: dict[str, str], sync_redis: redis.Redis, celery_worker: CeleryWorker
) -> None:
    # A stop must end the process however the listener's tasks are caught by it: three stops, each
    # at another moment of a flood of changes. A hung stop would only be killed by end_process.
    for attempt in range(3):
        listener = await listening(env, sync_redis)
        flooding = threading.Event()

        def flood(flooding: threading.Event) -> None:
            sent = 0
            while not flooding.is_set():
                publish(sync_redis, table="documents", type="UPDATE", record={"id": f"d{sent}", "tenant_id": "t1"})
                sent += 1

        thread = threading.Thread(target=flood, args=(flooding,))
        thread.start()
        try:
            await asyncio.sleep(0.5 + 0.3 * attempt)
            listener.proc.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.to_thread(listener.proc.wait, 15)
            except subprocess.TimeoutExpired:
                code = None
        finally:
            flooding.set()
            thread.join()
            listener.stop()
        assert code == 0, f"stop {attempt}: still running 15 s after SIGTERM\n{listener.output()}"

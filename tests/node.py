"""A library node in a process of its own, driven over a pipe (for multi-process tests).

Commands: ("read", data_type, resource_id, tenant) -> (value, metrics); ("stats",) -> subscriber
counters and the time of each eviction; ("stop",). The node's fetch function reads the row from a
real Postgres ``documents`` table when given a DSN, else from a Redis hash that stands for the table;
it counts its calls in Redis, so the test sees every process's database calls.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from multiprocessing.connection import Connection
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError

from shared_cache import CacheManager, get_with_cache_aside


def serve(
    conn: Connection, redis_url: str, prefix: str, channel: str, fetch_delay: float, dsn: str, cluster: bool
) -> None:
    asyncio.run(_serve(conn, redis_url, prefix, channel, fetch_delay, dsn, cluster))


async def _serve(
    conn: Connection, redis_url: str, prefix: str, channel: str, fetch_delay: float, dsn: str, cluster: bool
) -> None:
    mgr = CacheManager.configure(
        redis_url=redis_url, key_prefix=prefix, eviction_channel=channel, ttl_jitter=0.0, redis_cluster=cluster
    )
    # The node's own bookkeeping client rides out a Redis restart (it is not the client under test).
    retry = {"retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 8), "retry_on_error": [ConnectionError, OSError]}
    table: Any = (aredis.RedisCluster if cluster else aredis.Redis).from_url(redis_url, **retry)
    db: Any = None
    if dsn:  # the documents table of a real Postgres
        import psycopg

        db = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    evictions: list[float] = []
    mgr_start = mgr.start

    async def start_and_watch() -> None:
        await mgr_start()
        if mgr.subscriber is not None:
            mgr.subscriber.listeners.append(lambda event: evictions.append(time.time()))

    async def fetch(resource_id: str, tenant_id: str, ctx: Any) -> Any:
        await table.incr(f"{prefix}db_calls")
        if db is not None:
            cursor = await db.execute(
                "SELECT title FROM documents WHERE tenant_id = %s AND id = %s", (tenant_id, resource_id)
            )
            row = await cursor.fetchone()
            return None if row is None else {"v": row[0]}
        raw = await table.hget(f"{prefix}table", f"{tenant_id}/{resource_id}")
        await asyncio.sleep(fetch_delay)
        return None if raw is None else {"v": raw.decode()}

    await start_and_watch()
    conn.send("ready")
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command[0] == "stop":
            break
        if command[0] == "read":
            _, data_type, resource_id, tenant = command
            value, metrics = await get_with_cache_aside(data_type, resource_id, tenant, fetch)
            conn.send((value, metrics))
        elif command[0] == "stats":
            sub = mgr.subscriber
            conn.send(
                {
                    "connects": sub.connects,
                    "events": sub.events,
                    "evicted": sub.evicted,
                    "memory": len(mgr.memory),
                    "eviction_times": list(evictions),  # wall clock of each event's eviction
                }
            )
    await mgr.close()
    await table.aclose()
    if db is not None:
        await db.close()
    conn.send("stopped")


class Node:
    """Handle on a node process."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        channel: str,
        fetch_delay: float = 0.0,
        dsn: str = "",
        cluster: bool = False,
    ) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=serve, args=(child, redis_url, prefix, channel, fetch_delay, dsn, cluster), daemon=True
        )
        self.proc.start()
        if not self.conn.poll(30):
            raise RuntimeError("node did not start")
        assert self.conn.recv() == "ready"

    def send(self, *command: Any) -> None:
        self.conn.send(command)

    def recv(self, timeout: float = 15) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError("node did not answer")
        return self.conn.recv()

    def read(self, data_type: str, resource_id: str, tenant: str) -> tuple[Any, dict[str, Any]]:
        self.send("read", data_type, resource_id, tenant)
        return self.recv()  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        self.send("stats")
        return self.recv()  # type: ignore[no-any-return]

    def stop(self) -> None:
        try:
            self.send("stop")
            self.recv(10)
        finally:
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()

"""``./run`` (``python -m devtools.demo``): the whole system on this machine, doing its job.

Starts, as child processes it owns, a Redis server and a Postgres (unless
``SHARED_CACHE_REDIS_URL`` / ``SHARED_CACHE_WORKER_DATABASE_URL`` point at real ones), creates a
small schema with sample tenants, collections, agents, documents and chunks, then the change
listener and a Celery worker; then runs a workload you can watch: reader processes doing cache-aside
reads, a writer updating rows in Postgres, and a status line refreshed in place. It ends after
``--duration`` seconds or on Ctrl-C, stops every child and removes its temp directories.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from devtools.embedded import EmbeddedCeleryWorker, EmbeddedPostgres, EmbeddedRedis, end_process
from shared_cache import Keyspace

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "demo:"
TENANTS = ("acme", "globex", "initech")
SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (id text PRIMARY KEY, tenant_id text NOT NULL, name text);
CREATE TABLE IF NOT EXISTS agents (id text PRIMARY KEY, tenant_id text NOT NULL, name text, model text);
CREATE TABLE IF NOT EXISTS documents (
    id text PRIMARY KEY, tenant_id text NOT NULL, collection_id text, title text, version int NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS document_chunks (
    id serial PRIMARY KEY, tenant_id text NOT NULL, document_id text, collection_id text, content text);
ALTER TABLE collections REPLICA IDENTITY FULL;
ALTER TABLE agents REPLICA IDENTITY FULL;
ALTER TABLE documents REPLICA IDENTITY FULL;
ALTER TABLE document_chunks REPLICA IDENTITY FULL;
"""


def say(message: str) -> None:
    print(message, flush=True)


def seed(dsn: str, docs_per_tenant: int) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        for tenant in TENANTS:
            for c in range(2):
                conn.execute(
                    "INSERT INTO collections VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    (f"{tenant}-c{c}", tenant, f"{tenant} collection {c}"),
                )
            for a in range(2):
                conn.execute(
                    "INSERT INTO agents VALUES (%s, %s, %s, 'gpt') ON CONFLICT DO NOTHING",
                    (f"{tenant}-a{a}", tenant, f"agent {a}"),
                )
            for d in range(docs_per_tenant):
                doc = f"{tenant}-d{d}"
                inserted = conn.execute(
                    "INSERT INTO documents VALUES (%s, %s, %s, %s, 0) ON CONFLICT DO NOTHING RETURNING id",
                    (doc, tenant, f"{tenant}-c{d % 2}", f"{tenant} document {d}"),
                ).fetchone()
                if inserted:
                    for k in range(3):
                        conn.execute(
                            "INSERT INTO document_chunks (tenant_id, document_id, collection_id, content)"
                            " VALUES (%s, %s, %s, %s)",
                            (tenant, doc, f"{tenant}-c{d % 2}", f"chunk {k} of {tenant} document {d}"),
                        )


# -- reader processes --------------------------------------------------------------------------
def reader(redis_url: str, dsn: str, docs: int, until: float, seed_: int) -> None:
    asyncio.run(_read_loop(redis_url, dsn, docs, until, seed_))


async def _read_loop(redis_url: str, dsn: str, docs: int, until: float, seed_: int) -> None:
    import psycopg

    from shared_cache import CacheManager, get_with_cache_aside

    manager = CacheManager.configure(redis_url=redis_url, key_prefix=PREFIX, stats_publish_seconds=0.5)
    db = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    rng = random.Random(seed_)

    async def fetch(resource_id: str, tenant_id: str, ctx: Any) -> dict[str, Any] | None:
        cursor = await db.execute(
            "SELECT title, version FROM documents WHERE tenant_id = %s AND id = %s", (tenant_id, resource_id)
        )
        row = await cursor.fetchone()
        return None if row is None else {"title": row[0], "version": row[1]}

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        while time.time() < until:
            tenant = rng.choice(TENANTS)
            # a few hot documents per tenant, like real traffic
            doc = f"{tenant}-d{min(int(rng.expovariate(0.3)), docs - 1)}"
            await get_with_cache_aside("document", doc, tenant, fetch)
            await asyncio.sleep(0.001)
    with contextlib.suppress(Exception):
        await manager.publish_stats()
    await manager.close()
    await db.close()


# -- status ------------------------------------------------------------------------------------
class Status:
    """Reads every process's stats from Redis and renders one line (or the final summary)."""

    def __init__(self, redis_url: str) -> None:
        import redis

        self.redis = redis.Redis.from_url(redis_url)
        self.started = time.monotonic()
        self.last: tuple[float, int] | None = None
        self.rate = 0.0

    def collect(self) -> dict[str, Any]:
        reports = []
        for key in self.redis.scan_iter(match=Keyspace(PREFIX).stats_pattern(), count=100):
            raw = self.redis.get(key)
            if raw:
                reports.append(orjson.loads(raw))
        tiers = {"memory": 0, "redis": 0}
        misses = 0
        evicted = 0
        p50s: list[float] = []
        p99s: list[float] = []
        for report in reports:
            for row in report.get("by_type", {}).values():
                for tier, count in row["hits"].items():
                    tiers[tier] = tiers.get(tier, 0) + count
                misses += row["misses"]
            sub = report.get("subscriber") or {}
            evicted += sub.get("evicted", 0)
            latency = sub.get("commit_to_evict_ms") or {}
            if latency.get("count"):
                p50s.append(latency["p50"])
                p99s.append(latency["p99"])
        raw = self.redis.get(Keyspace(PREFIX).worker_stats)
        listener = orjson.loads(raw)["stats"] if raw else {}
        reads = sum(tiers.values()) + misses
        now = time.monotonic()
        if self.last is not None and now > self.last[0]:
            self.rate = (reads - self.last[1]) / (now - self.last[0])
        self.last = (now, reads)
        return {
            "elapsed": now - self.started,
            "readers": len(reports),
            "reads": reads,
            "reads_per_s": self.rate,
            "memory": tiers.get("memory", 0),
            "redis": tiers.get("redis", 0),
            "db": misses,
            "changes": listener.get("events", 0),
            "invalidations": listener.get("invalidation_tasks", 0),
            "warm_tasks": listener.get("warm_tasks", 0),
            "evictions": evicted,
            "commit_to_evict_p50": sorted(p50s)[len(p50s) // 2] if p50s else None,
            "commit_to_evict_p99": max(p99s) if p99s else None,
        }

    @staticmethod
    def line(s: dict[str, Any]) -> str:
        total = max(1, s["reads"])
        latency = (
            f"{s['commit_to_evict_p50']:.0f}/{s['commit_to_evict_p99']:.0f} ms"
            if s["commit_to_evict_p50"] is not None
            else "-"
        )
        return (
            f"{s['elapsed']:5.0f}s | reads/s {s['reads_per_s']:6.0f} | hits memory {s['memory'] / total:4.0%}"
            f" redis {s['redis'] / total:4.0%} db {s['db'] / total:4.0%} | changes {s['changes']:5d}"
            f" | invalidations {s['invalidations']:4d} | evictions {s['evictions']:5d}"
            f" | warm tasks {s['warm_tasks']:3d} | commit->evict p50/p99 {latency}"
        )


# -- orchestration -------------------------------------------------------------------------------
class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.servers: list[Any] = []
        self.children: list[subprocess.Popen[Any]] = []
        self.celery: EmbeddedCeleryWorker | None = None
        self.readers: list[Any] = []

    def start_services(self) -> tuple[str, str]:
        redis_url = os.environ.get("SHARED_CACHE_REDIS_URL", "")
        if redis_url:
            say(f"redis      : using {_mask(redis_url)}")
        else:
            server = EmbeddedRedis().start()
            self.servers.append(server)
            redis_url = server.url
            pid = server.proc.pid if server.proc else "?"
            say(f"redis      : started on port {server.port} (pid {pid}, {server.dir})")
        dsn = os.environ.get("SHARED_CACHE_WORKER_DATABASE_URL", "")
        if dsn:
            say(f"postgres   : using {_mask(dsn)}")
        else:
            pg = EmbeddedPostgres().start()
            self.servers.append(pg)
            dsn = pg.dsn
            say(f"postgres   : started on port {pg.port} (wal_level=logical, {pg.dir})")
        return redis_url, dsn

    def env(self, redis_url: str, dsn: str) -> dict[str, str]:
        return {
            "SHARED_CACHE_REDIS_URL": redis_url,
            "SHARED_CACHE_KEY_PREFIX": PREFIX,
            "SHARED_CACHE_WORKER_BROKER_URL": os.environ.get(
                "SHARED_CACHE_WORKER_BROKER_URL", redis_url.rsplit("/", 1)[0] + "/1"
            ),
            "SHARED_CACHE_WORKER_DATABASE_URL": dsn,
            "SHARED_CACHE_WORKER_SLOT_NAME": os.environ.get("SHARED_CACHE_WORKER_SLOT_NAME", "shared_cache_demo"),
            "SHARED_CACHE_WORKER_EMBEDDING_PROVIDER": os.environ.get("SHARED_CACHE_WORKER_EMBEDDING_PROVIDER", "none"),
        }

    def start_worker(self, env: dict[str, str]) -> None:
        self.celery = EmbeddedCeleryWorker(env, concurrency=2, cwd=ROOT).start()
        say(f"celery     : worker ready, queues invalidation + warming (pid {self.celery.proc.pid})")  # type: ignore[union-attr]
        listener = subprocess.Popen(
            [sys.executable, "-m", "worker", "--status-every", "1", "--log-level", "WARNING"],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        )
        self.children.append(listener)
        say(f"listener   : python -m worker (pid {listener.pid}), Postgres slot {env['SHARED_CACHE_WORKER_SLOT_NAME']}")

    def start_readers(self, redis_url: str, dsn: str, until: float) -> None:
        ctx = mp.get_context("spawn")
        for i in range(self.args.readers):
            proc = ctx.Process(target=reader, args=(redis_url, dsn, self.args.docs, until, i), daemon=True)
            proc.start()
            self.readers.append(proc)
        say(f"readers    : {self.args.readers} processes doing get_with_cache_aside (memory -> Redis -> Postgres)")

    async def write(self, dsn: str, until: float, stop: asyncio.Event) -> int:
        import psycopg

        rng = random.Random(42)
        writes = 0
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while time.time() < until and not stop.is_set():
                tenant = rng.choice(TENANTS)
                doc = f"{tenant}-d{min(int(rng.expovariate(0.3)), self.args.docs - 1)}"
                await conn.execute(
                    "UPDATE documents SET version = version + 1, title = %s WHERE id = %s",
                    (f"{doc} edited at {time.strftime('%H:%M:%S')}", doc),
                )
                if rng.random() < 0.2:
                    await conn.execute(
                        "INSERT INTO document_chunks (tenant_id, document_id, collection_id, content)"
                        " VALUES (%s, %s, %s, %s)",
                        (tenant, doc, f"{tenant}-c0", f"new chunk for {doc} {writes}"),
                    )
                writes += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.args.write_interval)
        return writes

    async def run(self) -> int:
        started = time.monotonic()
        redis_url, dsn = self.start_services()
        seed(dsn, self.args.docs)
        say(f"schema     : {len(TENANTS)} tenants, 6 collections, 6 agents, {self.args.docs * 3} documents with chunks")
        env = self.env(redis_url, dsn)
        self.start_worker(env)
        await self.wait_for_listener(redis_url)
        until = time.time() + self.args.duration
        self.start_readers(redis_url, dsn, until)
        say(f"ready in {time.monotonic() - started:.1f}s; running for {self.args.duration:.0f}s (Ctrl-C stops)\n")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        status = Status(redis_url)
        writer = asyncio.create_task(self.write(dsn, until, stop))
        tty = sys.stdout.isatty()
        last_print = 0.0
        while time.time() < until and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            snapshot = status.collect()
            if tty:
                print("\r\x1b[2K" + Status.line(snapshot), end="", flush=True)
            elif time.monotonic() - last_print >= 5:
                say(Status.line(snapshot))
                last_print = time.monotonic()
        stop.set()
        writes = await writer
        for proc in self.readers:
            proc.join(5)
        await asyncio.sleep(1.2)  # the last stats reports and the listener's status land
        final = status.collect()
        if tty:
            print()
        self.summary(final, writes)
        return 0 if final["reads"] > 0 else 1

    async def wait_for_listener(self, redis_url: str) -> None:
        import redis

        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 60
        while not client.exists(Keyspace(PREFIX).worker_stats):
            if time.monotonic() > deadline or any(c.poll() is not None for c in self.children):
                raise RuntimeError("the listener did not start")
            await asyncio.sleep(0.1)
        client.close()

    def summary(self, s: dict[str, Any], writes: int) -> None:
        total = max(1, s["reads"])
        say("summary")
        say(f"  reads            {s['reads']:,} by {s['readers']} processes")
        say(
            f"  served from      memory {s['memory'] / total:.1%}, redis {s['redis'] / total:.1%},"
            f" database {s['db'] / total:.1%}"
        )
        say(f"  writes           {writes:,} row updates committed in Postgres")
        say(f"  changes seen     {s['changes']:,} (Postgres logical slot)")
        say(f"  invalidations    {s['invalidations']:,} tasks run by Celery")
        say(f"  evictions        {s['evictions']:,} memory-tier evictions across the reader processes")
        if s["commit_to_evict_p50"] is not None:
            say(f"  commit->evict    p50 {s['commit_to_evict_p50']:.0f} ms, p99 {s['commit_to_evict_p99']:.0f} ms")

    def stop(self) -> None:
        for proc in self.readers:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        for child in self.children:
            end_process(child, 15)
        if self.celery is not None:
            self.celery.stop()
        for server in reversed(self.servers):
            server.cleanup()
        say("stopped: every child process ended, temp directories removed")


def _mask(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run the workload (default 60)")
    parser.add_argument("--readers", type=int, default=3, help="reader processes (default 3)")
    parser.add_argument("--docs", type=int, default=20, help="documents per tenant (default 20)")
    parser.add_argument("--write-interval", type=float, default=0.2, help="seconds between writes (default 0.2)")
    args = parser.parse_args(argv)
    demo = Demo(args)
    try:
        return asyncio.run(demo.run())
    except KeyboardInterrupt:
        return 130
    finally:
        demo.stop()


if __name__ == "__main__":
    sys.exit(main())

"""A reader: a service process reading rows through ``get_with_cache_aside``, recording every read.

It reads random rows without end, each read stamped with the wall clock at its start and end,
the version it returned and where it came from, and watches its eviction subscriber (every drop
and every resubscription, with the memory tier's size at that moment). The harness drives it over
a pipe; when the pipe closes (the harness is gone) it stops. Its output goes to its own log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

SOURCES = ("memory", "redis", "db", "none", "db_error", "cache_error")
SOURCE_CODE = {name: code for code, name in enumerate(SOURCES)}
Record = tuple[float, float, int, int, int]  # started, ended, row, version (-1: none), source code
Transition = tuple[float, bool, int, int]  # at, subscribed, connects so far, memory entries


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    name: str
    redis_url: str
    dsn: str
    prefix: str
    channel: str
    rows: int
    hot_rows: int  # two reads in three are of rows 0..hot_rows-1 (the rows the background updates)
    tenants: int
    read_gap_s: tuple[float, float]
    seed: int
    log: str
    once: bool = False  # read every row once, report, exit (a fresh process)


def serve(conn: Connection, config: ReaderConfig) -> None:
    """Process entry point."""
    out = os.open(config.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    asyncio.run(Reader(conn, config).run())


class Reader:
    def __init__(self, conn: Connection, config: ReaderConfig) -> None:
        from tests.chaos.table import row_ids

        self.conn, self.config = conn, config
        self.ids = [row_ids(i, config.tenants) for i in range(config.rows)]
        self.rng = random.Random(config.seed)
        self.db: Any = None
        self.records: list[Record] = []
        self.transitions: list[Transition] = []
        self.cache_errors: list[str] = []
        self.stopping = False
        self._seen: tuple[bool, int] = (False, 0)

    async def fetch(self, resource_id: str, tenant_id: str, ctx: Any) -> int | None:
        import psycopg

        if self.db is None:
            self.db = await psycopg.AsyncConnection.connect(self.config.dsn, autocommit=True, connect_timeout=2)
        try:
            cursor = await self.db.execute(
                "SELECT version FROM documents WHERE tenant_id = %s AND id = %s", (tenant_id, resource_id)
            )
            row = await cursor.fetchone()
        except psycopg.OperationalError:
            with contextlib.suppress(Exception):
                await self.db.close()
            self.db = None  # Postgres restarting: connect again on the next miss
            raise
        return None if row is None else int(row[0])

    async def read(self, row: int) -> tuple[int, str]:
        import psycopg

        from shared_cache import get_with_cache_aside

        tenant, doc = self.ids[row]
        try:
            value, metrics = await get_with_cache_aside("document", doc, tenant, self.fetch)
        except psycopg.Error:
            return -1, "db_error"  # our own fetch failed (Postgres away): the caller sees it, as it should
        except Exception as exc:  # the cache broke a read: it never may
            self.cache_errors.append(f"{time.time():.3f} {exc!r}")
            return -1, "cache_error"
        source = metrics["tier"] if metrics["source"] == "cache" else metrics["source"]
        return (-1 if value is None else int(value)), source

    def watch_subscriber(self, now: float) -> None:
        from shared_cache import CacheManager

        manager = CacheManager.get_instance()
        sub = manager.subscriber
        state = (sub is not None and sub.subscribed.is_set(), 0 if sub is None else int(sub.connects))
        if state != self._seen:
            self._seen = state
            entries = 0 if manager.memory is None else len(manager.memory)
            self.transitions.append((now, state[0], state[1], entries))

    async def read_forever(self) -> None:
        low, high = self.config.read_gap_s
        while not self.stopping:
            hot = self.rng.random() < 2 / 3
            row = self.rng.randrange(self.config.hot_rows if hot else self.config.rows)
            started = time.time()
            version, source = await self.read(row)
            ended = time.time()
            self.records.append((started, ended, row, version, SOURCE_CODE[source]))
            self.watch_subscriber(ended)
            # the database is away: do not spin on connection attempts
            await asyncio.sleep(0.05 if source == "db_error" else self.rng.uniform(low, high))

    async def read_all(self) -> list[tuple[int, str]]:
        """Every row once, in order: what this process serves now."""
        return [await self.read(row) for row in range(self.config.rows)]

    def drain(self) -> dict[str, Any]:
        taken = {"records": self.records, "transitions": self.transitions, "cache_errors": self.cache_errors}
        self.records, self.transitions, self.cache_errors = [], [], []
        return taken

    def _receive(self, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[tuple[Any, ...]]) -> None:
        while True:
            try:
                command = self.conn.recv()
            except (EOFError, OSError):
                command = ("stop",)  # the harness is gone
            loop.call_soon_threadsafe(inbox.put_nowait, command)
            if command[0] == "stop":
                return

    def reply(self, message: Any) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(message)

    async def run(self) -> None:
        from shared_cache import CacheManager

        c = self.config
        manager = CacheManager.configure(
            redis_url=c.redis_url, key_prefix=c.prefix, eviction_channel=c.channel, ttl_jitter=0.0
        )
        await manager.start()
        try:
            if c.once:
                self.reply(("ready", os.getpid()))
                self.reply(await self.read_all())
                return
            await self.serve_commands()
        finally:
            await manager.close()
            if self.db is not None:
                with contextlib.suppress(Exception):
                    await self.db.close()

    async def serve_commands(self) -> None:
        from shared_cache import CacheManager

        inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        threading.Thread(target=self._receive, args=(asyncio.get_running_loop(), inbox), daemon=True).start()
        reading = asyncio.create_task(self.read_forever())
        self.reply(("ready", os.getpid()))
        while True:
            command = await inbox.get()
            if command[0] == "stop":
                self.stopping = True
                await reading
                self.reply(self.drain())
                return
            if command[0] == "records":
                self.reply(self.drain())
            elif command[0] == "check":
                self.reply(await self.read_all())
            elif command[0] == "stats":
                manager = CacheManager.get_instance()
                sub = manager.subscriber
                self.reply(
                    {
                        "connects": 0 if sub is None else sub.connects,
                        "subscribed": sub is not None and sub.subscribed.is_set(),
                        "memory_entries": 0 if manager.memory is None else len(manager.memory),
                    }
                )


class ReaderProcess:
    """The harness's handle on a reader; reads, subscriber transitions and errors pile up here."""

    def __init__(self, config: ReaderConfig) -> None:
        self.config = config
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child, config), daemon=True, name=config.name)
        self.proc.start()
        child.close()
        self.pid = 0
        self.records: list[Record] = []
        self.transitions: list[Transition] = []
        self.cache_errors: list[str] = []

    def wait_ready(self, within: float = 60.0) -> ReaderProcess:
        kind, self.pid = self.receive(within)
        assert kind == "ready", kind
        return self

    def receive(self, within: float) -> Any:
        if not self.conn.poll(within):
            raise TimeoutError(f"{self.config.name} did not answer within {within:.0f} s")
        return self.conn.recv()

    def call(self, *command: Any, within: float = 60.0) -> Any:
        self.conn.send(command)
        return self.receive(within)

    def keep(self, taken: dict[str, Any]) -> None:
        self.records += taken["records"]
        self.transitions += taken["transitions"]
        self.cache_errors += taken["cache_errors"]

    def collect(self) -> None:
        self.keep(self.call("records"))

    def check(self) -> list[tuple[int, str]]:
        return list(self.call("check"))

    def stats(self) -> dict[str, Any]:
        return dict(self.call("stats"))

    def stop(self, within: float = 30.0) -> None:
        try:
            if self.proc.is_alive():
                self.keep(self.call("stop", within=within))
        finally:
            self.proc.join(within)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
            self.conn.close()


def read_once(config: ReaderConfig, within: float = 120.0) -> list[tuple[int, str]]:
    """What a fresh process (an empty memory tier) reads for every row."""
    fresh = ReaderProcess(config)
    try:
        fresh.wait_ready(within)
        return list(fresh.receive(within))
    finally:
        fresh.proc.join(10)
        if fresh.proc.is_alive():
            fresh.proc.kill()
            fresh.proc.join(5)
        fresh.conn.close()

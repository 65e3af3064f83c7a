"""The listener: change sources -> rules -> coalescing window -> Celery tasks -> confirm.

Events from every source go through one queue. The first event of a window opens it; everything
that arrives within ``coalesce_window_ms`` joins it; then the window is planned, its tasks are
sent (and accepted by the broker), and only then are the sources' positions confirmed, so a crash
at any point replays rather than loses (durable sources). Sources that can lose events report gaps,
answered at once with a conservative invalidation of what they cover.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import redis.asyncio as aredis

from shared_cache import CacheManager, validate_tenant_id
from tasks.settings import TaskSettings
from worker.coalesce import Window
from worker.dead_letters import DeadLetters
from worker.events import ChangeEvent
from worker.rules import PlanError, Planner
from worker.settings import ListenerSettings
from worker.sources.base import ChangeSource

log = logging.getLogger("shared_cache.worker")


class Listener:
    def __init__(
        self,
        settings: ListenerSettings,
        planner: Planner,
        celery_app: Any,
        cache: CacheManager,
        redis_url: str,
        tasks: TaskSettings | None = None,
    ) -> None:
        self.settings = settings
        self.tasks = tasks or TaskSettings()
        self.planner = planner
        self.celery = celery_app
        self.cache = cache
        self.redis = aredis.Redis.from_url(redis_url)
        self.dead_letters = DeadLetters(self.redis, settings.dead_letter_key, settings.dead_letter_max)
        self.sources: list[ChangeSource] = []
        self.queue: asyncio.Queue[tuple[ChangeSource, ChangeEvent]] = asyncio.Queue(maxsize=50_000)
        self.stats: Counter[str] = Counter()
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-send")
        self._pumps: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()  # set once every source is prepared and pumping

    # -- callbacks given to sources ---------------------------------------------------------
    async def on_dead_letter(self, source: str, raw: str, reason: str) -> bool:
        self.stats["dead_letters"] += 1
        log.warning("dead letter from %s: %s", source, reason)
        try:
            await self.dead_letters.park(source, raw, reason)
        except (aredis.ConnectionError, aredis.TimeoutError, OSError):
            self.stats["dead_letters_lost"] += 1  # Redis is down: counted, and the listener goes on
            return False
        return True

    async def on_gap(self, source: str, reason: str) -> None:
        """A source may have lost changes: bump, for every known tenant, the types it covers.

        Never raises (a source's loop calls it): Redis just came back and may refuse a first
        command or two, so it retries with backoff, and counts a failure if Redis stays away.
        """
        self.stats["conservative_invalidations"] += 1
        backoff = 0.05
        for _ in range(8):
            try:
                await self._invalidate_covered(source, reason)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("conservative invalidation for %s failed (%s); retrying", source, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        self.stats["conservative_invalidation_failures"] += 1

    async def _invalidate_covered(self, source: str, reason: str) -> None:
        tables = next((s.tables for s in self.sources if s.name == source), self.planner.tables)
        types = sorted(
            {t for rule in self.planner.rules.values() for t in rule.covered_types() if _qualified(rule) in tables}
        )
        tenants = await self.known_tenants()
        log.warning("%s: %s; invalidating %s for %d tenants", source, reason, ",".join(types), len(tenants))
        for tenant in tenants:
            scopes = [(tenant, "type", data_type) for data_type in types]
            await self.cache.invalidate_scopes(tenant, scopes, f"gap in {source}: {reason}")

    async def known_tenants(self) -> list[str]:
        members = await self.redis.smembers(self.cache.keys.worker_tenants)
        tenants = []
        for raw in members:
            with contextlib.suppress(ValueError):
                tenants.append(validate_tenant_id(raw.decode() if isinstance(raw, bytes) else raw))
        return sorted(tenants)

    async def report(self) -> dict[str, Any]:
        """Counters, per-source details (slot lag for a durable source), for operators."""
        sources = []
        for source in self.sources:
            entry: dict[str, Any] = {"name": source.name, "durable": source.durable}
            for counter in ("received", "malformed", "reconnects", "subscriptions", "probe_failures"):
                if hasattr(source, counter):
                    entry[counter] = getattr(source, counter)
            lag = getattr(source, "lag_bytes", None)
            if lag is not None:
                with contextlib.suppress(Exception):
                    entry["slot_lag_bytes"] = await lag()
            sources.append(entry)
        return {"at": time.time(), "stats": dict(self.stats), "sources": sources}

    async def publish_report(self) -> dict[str, Any]:
        report = await self.report()
        await self.redis.set(self.cache.keys.worker_stats, orjson.dumps(report), ex=60)
        return report

    # -- running ----------------------------------------------------------------------------
    def add_source(self, source: ChangeSource) -> None:
        self.sources.append(source)

    async def _pump(self, source: ChangeSource) -> None:
        async for event in source.events():
            await self.queue.put((source, event))

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        for source in self.sources:
            prepare = getattr(source, "prepare", None)
            if prepare is not None:
                await prepare()
        self._pumps = [asyncio.create_task(self._pump(s), name=f"source-{s.name}") for s in self.sources]
        self._pumps.append(asyncio.create_task(self.watch_redis(), name="redis-watch"))
        window_s = self.settings.coalesce_window_ms / 1000.0
        self.ready.set()
        try:
            while not stop.is_set():
                try:
                    first = await asyncio.wait_for(self.queue.get(), timeout=0.2)
                except TimeoutError:
                    self._check_pumps()
                    continue
                batch = [first]
                deadline = time.monotonic() + window_s
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        batch.append(await asyncio.wait_for(self.queue.get(), timeout=left))
                    except TimeoutError:
                        break
                while not self.queue.empty() and len(batch) < 100_000:  # drain what is already here
                    batch.append(self.queue.get_nowait())
                await self.process(batch)
        finally:
            await self.close()

    async def start(self, stop: asyncio.Event, within: float = 30.0) -> asyncio.Task[None]:
        """Run the listener in a task and return the task once every source is ready.

        If the listener stops before that, its own error is raised (a refused replication plugin, a
        dead broker...), never a bare timeout, and the task is not left with an error nobody reads.
        """
        task = asyncio.create_task(self.run(stop), name="listener")
        ready = asyncio.create_task(self.ready.wait())
        try:
            await asyncio.wait({task, ready}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if task.done():
            task.result()  # raises the listener's error
            raise RuntimeError("the listener stopped before it was ready")
        if not self.ready.is_set():
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
            raise TimeoutError(f"the listener was not ready within {within:.0f} s")
        return task

    def _check_pumps(self) -> None:
        for pump in self._pumps:  # (the Redis watch never ends by itself either)
            if pump.done() and not pump.cancelled() and pump.exception() is not None:
                raise RuntimeError(f"{pump.get_name()} stopped") from pump.exception()

    async def process(self, batch: list[tuple[ChangeSource, ChangeEvent]]) -> Window:
        """Plan a window, send its tasks, then confirm each source's last position."""
        window = Window()
        positions: dict[ChangeSource, str] = {}
        for source, event in batch:
            self.stats["events"] += 1
            try:
                committed = event.commit_timestamp.timestamp() if event.commit_timestamp else None
                window.add(self.planner.plan(event), committed)
            except PlanError as exc:
                await self.on_dead_letter(source.name, event.model_dump_json(by_alias=True), str(exc))
            if event.position is not None:
                positions[source] = event.position
        await self.deliver(window, positions)
        self.stats["windows"] += 1
        self.stats["processed"] += len(batch)
        return window

    async def deliver(self, window: Window, positions: dict[ChangeSource, str]) -> None:
        """Send the window's tasks, then confirm; while the broker or Postgres is away, retry with
        backoff (nothing is confirmed before it went through, so nothing is lost; a task sent twice
        is harmless: tasks are idempotent)."""
        backoff = 0.1
        while True:
            try:
                if window:
                    tenants = self.cache.keys.worker_tenants
                    await self.redis.sadd(tenants, *window.invalidations.keys(), *window.texts.keys())
                    await asyncio.get_running_loop().run_in_executor(self._sender, self._send, window)
                for source, position in positions.items():
                    await source.confirm(position)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats["delivery_retries"] += 1
                log.warning("could not deliver a window (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def watch_redis(self, every: float = 1.0) -> None:
        """A Redis restart may have dropped queued tasks (and its pub/sub messages): when the
        server's run id changes, every source gets a conservative invalidation."""
        run_id = None
        while True:
            try:
                current = (await self.redis.info("server"))["run_id"]
            except Exception:
                await asyncio.sleep(every)
                continue  # down: we will see the new run id when it is back
            if run_id is not None and current != run_id:
                self.stats["redis_restarts"] += 1
                for source in self.sources:
                    with contextlib.suppress(Exception):
                        await self.on_gap(source.name, "Redis restarted: queued tasks may be lost")
            run_id = current
            await asyncio.sleep(every)

    def _send(self, window: Window) -> None:
        """Publish the window's tasks (blocking: kombu's producer; runs on the sender thread)."""
        for tenant, scopes, reason, caused_at in window.invalidation_tasks():
            self.celery.send_task(
                "shared_cache.invalidate", args=[tenant, scopes, reason, caused_at], queue="invalidation"
            )
            self.stats["invalidation_tasks"] += 1
            for scope in scopes:  # invalidations by scope kind, for operators (worker.metrics)
                self.stats[f"scopes:{scope[1] if len(scope) > 1 else 'tenant'}"] += 1
        if self.tasks.embedding_provider != "none":
            for tenant, texts in window.warm_tasks(self.tasks.embedding_batch_size):
                self.celery.send_task("shared_cache.warm_texts", args=[tenant, texts], queue="warming")
                self.stats["warm_tasks"] += 1

    async def close(self) -> None:
        for pump in self._pumps:
            pump.cancel()
        for pump in self._pumps:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
        for source in self.sources:
            with contextlib.suppress(Exception):
                await source.close()
        self._sender.shutdown(wait=True)
        with contextlib.suppress(Exception):
            await self.redis.aclose()


def _qualified(rule: Any) -> str:
    return f"{rule.schema_}.{rule.table}"

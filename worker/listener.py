"""The listener: change sources -> rules -> coalescing window -> task calls -> applied -> confirmed.

Events from every source go through one queue. The first event of a window opens it; everything
that arrives within ``coalesce_window_ms`` joins it; then the window is planned and its calls are
sent. After a quiet spell (no window closed for ``coalesce_window_ms``) the first event does not
wait: its window closes as soon as the queue holds nothing more, so a lone change is invalidated a
window sooner (the common case), and a burst's later events are coalesced by the windows that follow
it. A source's position is confirmed only once every invalidation up to it was applied in Redis
(``worker.acks``): a crash, a lost task or a Redis restart at any point replays (durable sources)
or sends again (every source) rather than loses. Sources that can lose events report gaps, answered
at once with a conservative invalidation of what they cover (``worker.gaps``).

No input ends the listener: an event that cannot be planned, whole or in part, is parked with the
reason (what can be planned of it is still sent), a failed park is retried or dropped according to
the source's guarantee, and a change stream that fails is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import redis.asyncio as aredis

from shared_cache import CacheManager
from shared_cache.cancellation import cancel_and_wait, raise_if_cancelled
from tasks.contracts import INVALIDATION_QUEUE, InvalidateCall, TaskCall, WarmCall
from tasks.settings import TaskSettings
from tasks.support import Backoff, mask_secrets, secrets_of
from worker.acks import Acknowledger, BrokerQueue, HeldDeadLetter
from worker.coalesce import Window
from worker.counters import ListenerCounters
from worker.dead_letters import DeadLetters
from worker.dispatch import DispatchError, send_calls, window_calls
from worker.events import ChangeEvent, commit_seconds
from worker.gaps import ConservativeInvalidator
from worker.rules import Planned, Planner
from worker.settings import ListenerSettings
from worker.sources.base import ChangeSource, qualified
from worker.sources.postgres import ReplicationSetupError
from worker.tenants import KnownTenants

log = logging.getLogger("shared_cache.worker")
_MAX_BATCH = 100_000


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
        self.counters = ListenerCounters()
        self.redis = aredis.Redis.from_url(redis_url)
        self.broker = aredis.Redis.from_url(self.tasks.broker_url.get_secret_value())
        self.dead_letters = DeadLetters(self.redis, settings.dead_letter_key, settings.dead_letter_max)
        self.tenants = KnownTenants(self.redis, cache.keys.worker_tenants)
        self.gaps = ConservativeInvalidator(cache, planner, self.tenants, self.counters)
        self.acks = Acknowledger(
            cache,
            BrokerQueue(self.broker, INVALIDATION_QUEUE),
            self._send,
            self._park,
            self.counters,
            timeout=settings.ack_timeout_s,
            max_pending=settings.max_pending,
        )
        self.sources: list[ChangeSource] = []
        self.queue: asyncio.Queue[tuple[ChangeSource, ChangeEvent]] = asyncio.Queue(maxsize=50_000)
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-send")
        self._tasks: list[asyncio.Task[None]] = []
        self._saving: asyncio.Task[None] | None = None
        self._secrets = [*secrets_of(redis_url), *secrets_of(self.tasks.broker_url.get_secret_value())]
        self._park_logged = 0.0
        self._window_closed = 0.0  # monotonic time the last window closed
        self.ready = asyncio.Event()  # set once every source is prepared and pumping

    @property
    def stats(self) -> dict[str, int]:
        """The counters as plain values (a snapshot)."""
        return self.counters.snapshot()

    # -- callbacks given to sources -------------------------------------------------------------
    async def on_dead_letter(self, source: str, raw: str, reason: str) -> bool:
        """Park input a source could not read; False if Redis refused (see ``DeadLetterHandler``)."""
        if await self._park(source, raw, reason):
            return True
        found = self._source(source)
        if found is not None and not found.durable:
            self.counters.dead_letters_lost += 1
        else:
            self.counters.park_retries += 1  # a durable source keeps it and tries again
        return False

    async def on_gap(self, source: str, reason: str) -> None:
        """A source may have lost changes: bump, for every known tenant, the types it covers."""
        found = self._source(source)
        await self.gaps.invalidate(source, reason, found.tables if found else self.planner.tables)

    async def _park(self, source: str, raw: str, reason: str) -> bool:
        try:
            await self.dead_letters.park(source, raw, reason)
        except Exception as exc:
            now = time.monotonic()
            if now - self._park_logged >= 5.0:
                self._park_logged = now
                log.error("cannot park a dead letter of %s in %s: %s", source, self.dead_letters.key, self._mask(exc))
            return False
        self.counters.dead_letters += 1
        log.warning("dead letter from %s: %s", source, reason)
        return True

    def _source(self, name: str) -> ChangeSource | None:
        return next((s for s in self.sources if s.name == name), None)

    # -- reports --------------------------------------------------------------------------------
    async def report(self) -> dict[str, Any]:
        """Counters, what is pending, and per-source counters and slot lag, for operators."""
        sources = []
        for source in self.sources:
            entry: dict[str, Any] = {"name": source.name, "durable": source.durable, **source.counters()}
            try:
                async with asyncio.timeout(2.0):
                    lag = await source.lag_bytes()
            except Exception:  # Postgres slow or away: no figure this time
                lag = None
            if lag is not None:
                entry["slot_lag_bytes"] = lag
            sources.append(entry)
        pending = {
            "invalidations": self.acks.pending_calls,
            "windows": self.acks.pending_windows,
            "held_dead_letters": self.acks.held,
        }
        return {
            "at": time.time(),
            "stats": self.counters.snapshot(),
            "pending": pending,
            "known_tenants": len(self.tenants),
            "sources": sources,
        }

    async def publish_report(self) -> dict[str, Any]:
        report = await self.report()
        await self.redis.set(self.cache.keys.worker_stats, orjson.dumps(report), ex=60)
        return report

    # -- running --------------------------------------------------------------------------------
    def add_source(self, source: ChangeSource) -> None:
        self.sources.append(source)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        try:
            await self._prepare(stop)
            await self.tenants.load()
            self._tasks = [self._supervise(f"source-{s.name}", functools.partial(self._pump, s)) for s in self.sources]
            self._tasks.append(self._supervise("redis-watch", self.watch_redis))
            self._tasks.append(self._supervise("acknowledger", self.acks.run))
            window_s = self.settings.coalesce_window_ms / 1000.0
            self.ready.set()
            while not stop.is_set():
                await self.acks.room(stop)
                batch = await self._collect(window_s)
                if batch:
                    await self.process(batch)
                raise_if_cancelled()  # redis-py may have lost a cancellation (see shared_cache.cancellation)
            if not await self.acks.drain(self.settings.drain_s):
                log.warning("stopping with %d invalidations not applied yet", self.acks.pending_calls)
        finally:
            await self.close()

    async def _prepare(self, stop: asyncio.Event) -> None:
        """Prepare every source, retrying while a server is away; an error an operator must fix
        (``ReplicationSetupError``) is raised at once."""
        for source in self.sources:
            backoff = Backoff(first=0.2, cap=10.0)
            while not stop.is_set():
                try:
                    await source.prepare()
                    break
                except ReplicationSetupError:
                    raise
                except Exception as exc:
                    raise_if_cancelled()
                    delay = backoff.next()
                    log.warning("%s: cannot prepare (%s); retrying in %.1fs", source.name, self._mask(exc), delay)
                    await asyncio.sleep(delay)

    async def _collect(self, window_s: float) -> list[tuple[ChangeSource, ChangeEvent]]:
        # asyncio.timeout, never wait_for, around the waits of a loop: on Python 3.11 wait_for
        # returns normally when it is cancelled just as what it waits for arrives, so the task
        # would go on after being cancelled. A get the timeout cancels leaves its event queued.
        try:
            async with asyncio.timeout(0.2):
                first = await self.queue.get()
        except TimeoutError:
            return []
        batch = [first]
        now = time.monotonic()
        quiet = now - self._window_closed >= window_s  # a lone change: no wait (leading edge)
        deadline = now if quiet else now + window_s
        while (left := deadline - time.monotonic()) > 0 and len(batch) < _MAX_BATCH:
            try:
                async with asyncio.timeout(left):
                    batch.append(await self.queue.get())
            except TimeoutError:
                break
        while not self.queue.empty() and len(batch) < _MAX_BATCH:  # what is already here joins
            batch.append(self.queue.get_nowait())
        self._window_closed = time.monotonic()
        return batch

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
                async with asyncio.timeout(10):
                    await task
            raise TimeoutError(f"the listener was not ready within {within:.0f} s")
        return task

    def _supervise(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        """A task that runs ``run`` again after an unexpected error (with backoff), until cancelled."""

        async def supervised() -> None:
            backoff = Backoff(first=0.1, cap=10.0)
            while True:
                try:
                    await run()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise_if_cancelled()  # an error on the way out of a cancellation: stop, not restart
                    log.error("%s failed (%s); restarting it", name, self._mask(exc), exc_info=True)
                    await asyncio.sleep(backoff.next())

        return asyncio.create_task(supervised(), name=name)

    async def _pump(self, source: ChangeSource) -> None:
        """Feed the source's events to the queue; a stream that fails is opened again (a durable
        source resumes after its confirmed position; an at-most-once one reports a gap)."""
        backoff = Backoff(first=0.1, cap=10.0)
        while True:
            try:
                async for event in source.events():
                    await self.queue.put((source, event))
                    backoff.reset()
                    raise_if_cancelled()  # a source's client may have lost it (see shared_cache.cancellation)
                return  # the source was closed
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelled()
                self.counters.source_restarts += 1
                log.error("%s: change stream failed (%s); opening it again", source.name, self._mask(exc))
                if not source.durable:
                    await self.on_gap(source.name, f"change stream failed: {type(exc).__name__}")
                await asyncio.sleep(backoff.next())

    # -- one window -----------------------------------------------------------------------------
    async def process(self, batch: list[tuple[ChangeSource, ChangeEvent]]) -> Window:
        """Plan a window and send its calls; its positions are confirmed once they are applied."""
        window = Window()
        positions: dict[ChangeSource, str] = {}
        held: list[HeldDeadLetter] = []
        for source, event in batch:
            self.counters.events += 1
            await self._plan_into(window, source, event, held)
            if event.position is not None:
                positions[source] = event.position
        await self.deliver(window, positions, held)
        self.counters.windows += 1
        self.counters.processed += len(batch)
        return window

    async def _plan_into(
        self, window: Window, source: ChangeSource, event: ChangeEvent, held: list[HeldDeadLetter]
    ) -> None:
        """Add what ``event`` plans to ``window``; park what it cannot plan (never raises)."""
        caused_at: float | None = None
        try:
            caused_at = commit_seconds(event.commit_timestamp)
            planned = self.planner.plan_parts(event)
        except Exception as exc:  # whatever one event does, the listener goes on
            planned = Planned([], [f"cannot plan: {type(exc).__name__}: {exc}"])
        window.add(planned.actions, caused_at)
        if not planned.problems:
            return
        reason = "; ".join(planned.problems)
        if planned.actions:
            self.counters.partly_planned += 1
            reason = f"partly planned: {reason}"
        raw = _raw(event)
        if not await self._park(source.name, raw, reason):
            if source.durable:
                held.append(HeldDeadLetter(source.name, raw, reason))  # its window waits for the park
            else:
                self.counters.dead_letters_lost += 1
        if not planned.actions and not source.durable and (event.schema_, event.table) in self.planner.rules:
            # an at-most-once source will not send it again: what it may have changed is a gap
            self.counters.unplanned_gaps += 1
            tenant = self.planner.tenant_of(event)
            table = qualified(event.schema_, event.table)
            tenants = None if tenant is None else [tenant]
            await self.gaps.invalidate(source.name, "an event could not be planned", [table], tenants)

    async def deliver(
        self, window: Window, positions: dict[ChangeSource, str], held: list[HeldDeadLetter] | None = None
    ) -> None:
        """Send the window's calls (retrying while the broker is away), then track them."""
        calls = window_calls(
            window,
            warming=self.tasks.embedding_provider != "none",
            warm_texts_per_call=self.settings.warm_task_texts,
            receipts=self.acks.receipts,
        )
        await self._send_until_sent(calls)
        invalidations = [c for c in calls if isinstance(c, InvalidateCall)]
        for call in invalidations:
            self.counters.count_scopes(call.scopes)
        self.counters.invalidation_tasks += len(invalidations)
        self.counters.warm_tasks += sum(1 for c in calls if isinstance(c, WarmCall))
        self.acks.track(invalidations, positions, held or [])
        self.tenants.add(window.tenants)
        if self._saving is None or self._saving.done():  # off the window's path: Redis may be slow
            self._saving = asyncio.create_task(self.tenants.save())

    async def _send(self, calls: list[InvalidateCall]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._sender, send_calls, self.celery, calls)

    async def _send_until_sent(self, calls: list[TaskCall]) -> None:
        """Nothing is confirmed before its calls went out, so retrying while the broker is away loses
        nothing; a call the broker took before it failed is not sent twice."""
        backoff = Backoff(first=0.1, cap=5.0)
        loop = asyncio.get_running_loop()
        while calls:
            try:
                await loop.run_in_executor(self._sender, send_calls, self.celery, calls)
                return
            except DispatchError as exc:
                calls = calls[exc.sent :]
                self.counters.delivery_retries += 1
                delay = backoff.next()
                log.warning("could not send %d task calls (%s); retrying in %.1fs", len(calls), self._mask(exc), delay)
                await asyncio.sleep(delay)

    # -- Redis restarts -------------------------------------------------------------------------
    async def watch_redis(self, every: float = 1.0) -> None:
        """A Redis restart may have dropped queued tasks, receipts, recent generation bumps and pub/sub
        messages: when the server's run id changes, every unapplied call is checked at once (and sent
        again if it is gone), the known tenants are written again, and what every source covers gets
        a conservative invalidation."""
        run_id = None
        while True:
            try:
                current = (await self.redis.info("server"))["run_id"]
            except Exception:
                raise_if_cancelled()
                await asyncio.sleep(every)
                continue  # down: we will see the new run id when it is back
            raise_if_cancelled()  # redis-py loses a cancellation that lands as INFO is sent
            if run_id is not None and current != run_id:
                self.counters.redis_restarts += 1
                self.acks.expire_all()
                await self.tenants.save_all()
                tables = sorted({table for source in self.sources for table in source.tables})
                reason = "Redis restarted: queued tasks and recent bumps may be lost"
                await self.gaps.invalidate("redis", reason, tables)
            run_id = current
            await asyncio.sleep(every)

    def _mask(self, exc: BaseException) -> str:
        return mask_secrets(str(exc), self._secrets)

    async def close(self) -> None:
        """Stop every part. One that has not stopped within ``stop_wait_s`` is logged and left behind,
        so a stop never hangs; nothing it held back was confirmed, so a durable source replays it."""
        wait = self.settings.stop_wait_s
        if self._saving:
            self._saving.cancel()
        running = await cancel_and_wait(self._tasks, within=wait)  # cancelled again until done
        if running:
            names = ", ".join(sorted(task.get_name() for task in running))
            log.error("%s still running %.0f s after being cancelled; stopping without them", names, wait)
        for source in self.sources:
            await _closed(f"source {source.name}", source.close(), wait)
        await _closed("task sender", asyncio.to_thread(self._sender.shutdown, True), wait)  # a send in flight
        for name, client in (("redis client", self.redis), ("broker client", self.broker)):
            await _closed(name, client.aclose(), wait)


async def _closed(what: str, closing: Awaitable[Any], wait: float) -> None:
    """Await one part's closing for at most ``wait`` seconds (best effort: its errors are ignored)."""
    try:
        async with asyncio.timeout(wait):
            await closing
    except TimeoutError:
        log.error("%s did not close within %.0f s; stopping without it", what, wait)
    except Exception:  # closing is best effort: the process is stopping
        pass


def _raw(event: ChangeEvent) -> str:
    try:
        return event.model_dump_json(by_alias=True)
    except Exception:  # a value pydantic cannot write back: the repr still tells what it was
        return repr(event)

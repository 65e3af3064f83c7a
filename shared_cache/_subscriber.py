"""The eviction subscriber: every process with a memory tier hears every invalidation.

It runs as a task on the event loop that started it, on a connection of its own. Pub/sub delivers
at most once, and nothing published while a connection is down is replayed, so the memory tier is
flushed whenever the subscription is (re)established and whenever it is lost (ARCHITECTURE.md 3.3).
Malformed events are counted and skipped; the subscriber keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._events import EvictionEvent

if TYPE_CHECKING:
    from ._manager import CacheManager

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0


class EvictionSubscriber:
    def __init__(self, manager: CacheManager) -> None:
        self.manager = manager
        self.channel = manager.settings.eviction_channel
        self.task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.subscribed = asyncio.Event()
        self.connects = 0
        self.events = 0
        self.evicted = 0
        self.malformed = 0
        self.errors = 0
        self.propagation_ms: deque[float] = deque(maxlen=4096)  # publish -> evicted here
        self.commit_to_evict_ms: deque[float] = deque(maxlen=4096)  # the change's commit -> evicted here
        self._stats_task: asyncio.Task[None] | None = None
        # Called with each valid event after its eviction (for a service's own metrics or logs).
        self.listeners: list[Callable[[EvictionEvent], Any]] = []

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done() and self.loop is asyncio.get_running_loop()

    async def start(self, wait: float = 1.0) -> None:
        """Start on the running loop and wait (up to ``wait`` s) for the first subscription."""
        self.loop = asyncio.get_running_loop()
        self.subscribed = asyncio.Event()
        self.task = self.loop.create_task(self._run(), name="shared_cache-eviction-subscriber")
        if self.manager.settings.stats_publish_seconds > 0:
            self._stats_task = self.loop.create_task(self._publish_stats(), name="shared_cache-stats")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.subscribed.wait(), wait)

    async def _publish_stats(self) -> None:
        """Every few seconds, leave this process's stats in Redis for operators (``shared-cache stats``)."""
        while True:
            await asyncio.sleep(self.manager.settings.stats_publish_seconds)
            with contextlib.suppress(Exception):
                await self.manager.publish_stats()

    async def stop(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
            self._stats_task = None
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def stop_soon(self) -> None:
        """Cancel without waiting (from synchronous code, e.g. when the singleton is replaced)."""
        if self._stats_task is not None and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stats_task.cancel)
        task, self.task = self.task, None
        if task is not None and not task.done() and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(task.cancel)

    def _flush(self) -> None:
        if self.manager.memory is not None:
            self.manager.memory.clear()

    async def _run(self) -> None:
        backoff = _BACKOFF_FIRST
        try:
            while True:
                try:
                    await self._listen()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.errors += 1
                    self.manager.stats.error("subscriber")
                if self.subscribed.is_set():  # it had worked: retry quickly
                    backoff = _BACKOFF_FIRST
                self.subscribed.clear()
                self._flush()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
        finally:
            self.subscribed.clear()
            self._flush()  # no one listens any more: nothing local may outlive this

    async def _listen(self) -> None:
        client = self.manager.redis.node_client()
        pubsub = client.pubsub(ignore_subscribe_messages=False)
        try:
            await pubsub.subscribe(self.channel)
            async for message in pubsub.listen():
                kind = message.get("type")
                if kind == "subscribe":
                    self._flush()  # whatever was published while we were away is lost
                    self.connects += 1
                    self.subscribed.set()
                elif kind == "message":
                    self.handle(message.get("data"))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                await client.aclose()

    def handle(self, raw: Any) -> None:
        try:
            event = EvictionEvent.from_json(raw)
        except (ValueError, TypeError):
            self.malformed += 1
            self.manager.stats.error("malformed_eviction")
            return
        self.events += 1
        if event.origin != self.manager.origin and self.manager.memory is not None:
            # (our own events were evicted locally when they were published)
            self.evicted += self.manager.memory.evict_scopes(event.scopes)
        now = time.time()
        self.propagation_ms.append(max(0.0, (now - event.sent_at) * 1000.0))
        if event.caused_at is not None:
            self.commit_to_evict_ms.append(max(0.0, (now - event.caused_at) * 1000.0))
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                self.manager.stats.error("eviction_listener")

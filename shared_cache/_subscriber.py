"""The eviction subscriber: every process with a memory tier hears every invalidation.

It runs as a task on the event loop that started it, on a connection of its own. Pub/sub delivers
at most once, and nothing published while a connection is down is replayed, so the memory tier is
flushed whenever the subscription is (re)established and whenever it is lost (ARCHITECTURE.md 3.3).
Dropping the scopes of an event costs the same whatever they cover (the memory tier's scope
evictions are O(1)). Malformed events are counted and skipped; the subscriber keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._events import EvictionEvent
from ._loop_task import LoopTask
from ._memory import MemoryTier
from ._metrics import CacheStats
from .cancellation import raise_if_cancelled

if TYPE_CHECKING:
    from redis.asyncio import Redis

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0


class EvictionSubscriber(LoopTask):
    """Subscribes to ``channel`` with clients from ``connect`` and evicts from ``memory``."""

    def __init__(
        self,
        memory: MemoryTier,
        channel: str,
        connect: Callable[[], Redis],
        stats: CacheStats,
        origin: str,
    ) -> None:
        super().__init__()
        self.memory = memory
        self.channel = channel
        self.connect = connect
        self.stats = stats
        self.origin = origin
        self.subscribed = asyncio.Event()
        self.failed = asyncio.Event()  # an attempt to subscribe failed (set until the next success)
        self.connects = 0
        self.events = 0
        self.evicted = 0  # scopes evicted on events of other processes
        self.malformed = 0
        self.errors = 0
        self.propagation_ms: deque[float] = deque(maxlen=4096)  # publish -> evicted here
        self.commit_to_evict_ms: deque[float] = deque(maxlen=4096)  # the change's commit -> evicted here
        # Called with each valid event after its eviction (for a service's own metrics or logs).
        self.listeners: list[Callable[[EvictionEvent], Any]] = []

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done() and self.loop is asyncio.get_running_loop()

    async def start(self, wait: float = 1.0) -> None:
        """Start on the running loop and wait (up to ``wait`` s) for the first subscription.

        Not waiting longer is safe: the memory tier is flushed when the subscription is made, so
        nothing kept before it can outlive an eviction it did not hear.
        """
        self.loop = asyncio.get_running_loop()
        self.subscribed = asyncio.Event()
        self.failed = asyncio.Event()
        self.task = self.loop.create_task(self._run(), name="shared_cache-eviction-subscriber")
        if wait > 0:
            # Over as soon as the first attempt succeeds or fails: a refused connection costs nothing.
            waits = [self.loop.create_task(self.subscribed.wait()), self.loop.create_task(self.failed.wait())]
            try:
                await asyncio.wait(waits, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()

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
                    self.stats.error("subscriber")
                raise_if_cancelled()  # a cancellation redis-py turned into an error or lost
                self.failed.set()
                if self.subscribed.is_set():  # it had worked: retry quickly
                    backoff = _BACKOFF_FIRST
                self.subscribed.clear()
                self.memory.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
        finally:
            self.subscribed.clear()
            self.memory.clear()  # no one listens any more: nothing local may outlive this

    async def _listen(self) -> None:
        client = self.connect()
        pubsub = client.pubsub(ignore_subscribe_messages=False)
        try:
            await pubsub.subscribe(self.channel)
            raise_if_cancelled()  # lost by redis-py while sending: listen() would block until a message
            async for message in pubsub.listen():
                kind = message.get("type")
                if kind == "subscribe":
                    self.memory.clear()  # whatever was published while we were away is lost
                    self.connects += 1
                    self.failed.clear()
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
            self.stats.error("malformed_eviction")
            return
        self.events += 1
        if event.origin != self.origin:  # our own events were evicted locally when published
            self.memory.evict_scopes(event.scopes)
            self.evicted += len(event.scopes)
        now = time.time()
        self.propagation_ms.append(max(0.0, (now - event.sent_at) * 1000.0))
        if event.caused_at is not None:
            self.commit_to_evict_ms.append(max(0.0, (now - event.caused_at) * 1000.0))
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                self.stats.error("eviction_listener")

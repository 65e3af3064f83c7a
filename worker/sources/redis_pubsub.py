"""``RedisPubSubSource``: ChangeEvents that services publish themselves, as JSON, on a channel.

Pub/sub delivers at most once and keeps nothing for a disconnected subscriber, so every
(re)subscription reports a gap, and the listener invalidates conservatively.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aredis
from pydantic import ValidationError

from shared_cache.cancellation import raise_if_cancelled
from tasks.support import Backoff
from worker.events import ChangeEvent
from worker.sources.base import DeadLetterHandler, GapHandler


class RedisPubSubSource:
    name = "redis"
    durable = False

    def __init__(
        self,
        redis_url: str,
        channel: str,
        tables: tuple[str, ...],
        on_gap: GapHandler,
        on_dead_letter: DeadLetterHandler,
    ) -> None:
        self.redis_url = redis_url
        self.channel = channel
        self.tables = tables
        self.on_gap = on_gap
        self.on_dead_letter = on_dead_letter
        self.received = 0
        self.malformed = 0
        self.subscriptions = 0
        self.reconnects = 0
        self._closed = False

    async def prepare(self) -> None:
        return None  # the subscription is made by events(): nothing is kept before it anyway

    async def events(self) -> AsyncIterator[ChangeEvent]:
        backoff = Backoff(first=0.05, cap=2.0)
        while not self._closed:
            client = aredis.Redis.from_url(self.redis_url)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                raise_if_cancelled()  # lost by redis-py while sending: listen() would block until a message
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        self.subscriptions += 1
                        backoff.reset()
                        await self.on_gap(self.name, "subscribed" if self.subscriptions == 1 else "resubscribed")
                    elif message["type"] == "message":
                        event = await self._parse(message["data"])
                        if event is not None:
                            self.received += 1
                            yield event
            except (aredis.ConnectionError, aredis.TimeoutError, OSError):
                self.reconnects += 1  # Redis restarting: reconnect below, and report the gap when subscribed again
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            raise_if_cancelled()
            await asyncio.sleep(backoff.next())

    async def _parse(self, raw: bytes) -> ChangeEvent | None:
        text = raw.decode("utf-8", "replace")
        try:
            event = ChangeEvent.model_validate_json(raw)
        except Exception as exc:  # whatever arrives on the channel, the source goes on
            self.malformed += 1
            errors = exc.errors() if isinstance(exc, ValidationError) else []
            detail = errors[0]["msg"] if errors else f"{type(exc).__name__}: {exc}"
            # At most once: if it cannot be parked either, the listener counts it as lost.
            await self.on_dead_letter(self.name, text, f"invalid ChangeEvent: {detail}")
            return None
        return event.model_copy(update={"source": self.name})

    async def confirm(self, position: str) -> None:
        return None  # nothing to confirm: pub/sub keeps nothing

    async def close(self) -> None:
        self._closed = True

    def counters(self) -> dict[str, int]:
        return {
            "received": self.received,
            "malformed": self.malformed,
            "reconnects": self.reconnects,
            "subscriptions": self.subscriptions,
        }

    async def lag_bytes(self) -> int | None:
        return None  # pub/sub keeps no backlog to lag behind

"""Dead letters: events that could not be planned or parsed, parked in a Redis list with the reason.

Nothing is lost silently: each entry keeps the raw input (truncated to 64 KB), the source, the
reason and when; the list is capped (oldest dropped) so a flood cannot fill Redis. ``park`` raises
when Redis refuses (down, at ``maxmemory`` under ``noeviction``, the key holding another type): the
listener decides, by the source's guarantee, whether to retry or to drop and count.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aredis

from shared_cache import Keyspace

_MAX_RAW = 64 * 1024


def _text(value: str, limit: int) -> str:
    # Input decoded with "replace" or "surrogateescape" may hold lone surrogates, which orjson refuses.
    return value[:limit].encode("utf-8", "replace").decode("utf-8")


class DeadLetters:
    def __init__(self, client: aredis.Redis, key: str, max_entries: int = 10_000) -> None:
        self.client = client
        self.key = key
        self.max_entries = max_entries
        self.parked = 0

    async def park(self, source: str, raw: str, reason: str) -> None:
        fields = {"source": _text(source, 100), "reason": _text(reason, 2000), "raw": _text(raw, _MAX_RAW)}
        entry = orjson.dumps({**fields, "at": time.time()})
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.lpush(self.key, entry)
            pipe.ltrim(self.key, 0, self.max_entries - 1)
            pipe.hincrby(Keyspace.dead_letter_counts(self.key), source, 1)
            await pipe.execute()
        self.parked += 1

    async def list(self, count: int = 100) -> list[dict[str, Any]]:
        return [orjson.loads(raw) for raw in await self.client.lrange(self.key, 0, count - 1)]

    async def pop_oldest(self) -> dict[str, Any] | None:
        raw = await self.client.rpop(self.key)
        return None if raw is None else orjson.loads(raw)  # type: ignore[arg-type]

    async def counts(self) -> dict[str, int]:
        raw = await self.client.hgetall(Keyspace.dead_letter_counts(self.key))
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}

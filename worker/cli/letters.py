"""The dead-letter list as an operator reads it: entries and keys that are not what the listener
writes (a hand-pushed value, a key setting that names another key) are reported, never a crash and
never a lost entry."""

from __future__ import annotations

from typing import Any

import orjson

from shared_cache import CacheManager

from .values import count, text

Entry = dict[str, Any]


def decode_entry(raw: bytes | str) -> Entry:
    """A dead letter as stored; an entry that is not a JSON object is kept whole as its raw input,
    so it can be listed and put back rather than lost."""
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        entry = None
    if isinstance(entry, dict):
        return entry
    reason = "not a dead-letter entry (not a JSON object)"
    return {"source": "?", "reason": reason, "raw": text(raw), "unreadable": True}


async def key_problem(manager: CacheManager, key: str) -> str | None:
    """What is wrong with the dead-letter key and its counts key, if they hold another type."""
    client = manager.redis.client()
    for name, expected in ((key, "list"), (manager.keys.dead_letter_counts(key), "hash")):
        kind = text(await client.type(name))
        if kind not in (expected, "none"):
            return f"{name} holds a {kind}, not a {expected}: is SHARED_CACHE_WORKER_DEAD_LETTER_KEY another key?"
    return None


async def parked_counts(manager: CacheManager, key: str) -> dict[str, int]:
    """How many dead letters each source parked so far."""
    raw = await manager.redis.client().hgetall(manager.keys.dead_letter_counts(key))
    return {text(source): count(n) for source, n in raw.items()}

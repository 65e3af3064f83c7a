"""One read of a plan from Redis, shared by every reader: ``get_with_cache_aside``,
``CacheManager.get`` and the operator tools.

A hit is decoded and kept in the memory tier (unless a scope of it was evicted since ``seq``, the
memory tier's eviction count read before the lookup began); a corrupt entry is deleted, counted, and
looked up again. With a lease ``token``, a miss takes the lease in the same round trip.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, NamedTuple

from ._entry import Lookup
from ._keys import KeyPlan
from ._memory import MemoryTier, time_left
from ._metrics import CacheStats
from ._serialization import Deserializer, deserialize_from_cache
from ._store import EntryStore
from .errors import BackendUnavailable


class Hit(NamedTuple):
    value: Any
    found: Lookup


async def read_redis(
    store: EntryStore,
    memory: MemoryTier | None,
    stats: CacheStats,
    plan: KeyPlan,
    ident: Hashable,
    deserializer: Deserializer | None,
    seq: int,
    token: str = "",
) -> Hit | Lookup | None:
    """The decoded hit, or the miss's ``Lookup`` (its tag and lease), or None when Redis cannot be
    used (down, breaker open)."""
    for _ in range(2):  # a corrupt entry is deleted, then one more look
        try:
            found = await store.lookup(plan, token)
        except BackendUnavailable:
            stats.error("redis")
            return None
        if not found.level:
            return found
        try:
            value = deserialize_from_cache(found.payload, plan.data_type, deserializer)
        except Exception:
            await drop_corrupt(store, stats, plan.entry_keys[found.level - 1])
            continue
        remember(memory, stats, ident, plan, found, seq, value)
        return Hit(value, found)
    return None


def remember(
    memory: MemoryTier | None,
    stats: CacheStats,
    ident: Hashable,
    plan: KeyPlan,
    found: Lookup,
    seq: int,
    decoded: Any = None,
) -> None:
    """Keep a Redis hit in the memory tier (never longer than Redis keeps it)."""
    if memory is None:
        return
    ttl = time_left(found.expires_at)
    if ttl is None:
        return
    i = found.level - 1
    key, level = plan.entry_keys[i], plan.level_names[i]
    cell = stats.memory_cell(plan.data_type, plan.tenant_id)
    try:
        if decoded is None:
            memory.set(ident, found.payload, ttl, key, level, plan.scopes, seq, hits=cell)
        else:
            memory.set(ident, found.payload, ttl, key, level, plan.scopes, seq, decoded, cell)
    except ValueError:  # a payload of an unknown kind: not kept (it decoded, so this is rare)
        pass


async def drop_corrupt(store: EntryStore, stats: CacheStats, key: str) -> None:
    stats.error("corrupt_entry")
    try:
        await store.redis.call("DEL", key)
    except BackendUnavailable:
        stats.error("redis")

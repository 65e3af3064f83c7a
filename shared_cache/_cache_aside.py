"""``get_with_cache_aside`` (section 3): memory tier, Redis hierarchy, database, generator.

The memory-tier hit is the hot path and is kept to a dict lookup and a decode. A miss goes through
single-flight (one fetch per identity per process), one MGET that reads every level and every
generation (a hit ends there: one round trip), then on a miss a short lease (one fetch per identity
across processes), the caller's functions, and a generation-checked write.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from time import perf_counter
from typing import Any

from orjson import loads as _loads

from ._context import Context
from ._keys import KeyPlan
from ._manager import CacheManager, Lookup
from ._memory import HOLD_FLAT, HOLD_JSON, HOLD_VALUE, entry_value
from ._serialization import (
    NONE_PAYLOAD,
    Deserializer,
    Serializer,
    deserialize_from_cache,
    serialize_for_cache,
)
from ._ttl import ttl_for
from .errors import BackendUnavailable, SerializationError

Metrics = dict[str, Any]
Loader = Callable[..., Any]


async def get_with_cache_aside(
    data_type: str,
    resource_id: Any,
    tenant_id: str | None,
    fetch_from_db_func: Loader,
    generate_func: Loader | None = None,
    agent_id: Any = None,
    conversation_id: Any = None,
    collection_id: Any = None,
    ctx: Context | None = None,
    ttl: int | None = None,
    serializer: Serializer | None = None,
    deserializer: Deserializer | None = None,
) -> tuple[Any, Metrics]:
    """Read through the cache; returns ``(value, metrics)``.

    ``metrics``: ``source`` (``cache``/``db``/``generated``/``none``), ``tier``
    (``memory``/``redis``/None), ``key``, ``level`` (hierarchy level that served or was written),
    ``latency_ms``. Errors of ``fetch_from_db_func``/``generate_func`` propagate; errors of the cache
    never do.
    """
    start = perf_counter()
    if ctx is not None:
        tenant_id = tenant_id or ctx.tenant_id
        agent_id = agent_id if agent_id is not None else ctx.agent_id
        conversation_id = conversation_id if conversation_id is not None else ctx.conversation_id
        collection_id = collection_id if collection_id is not None else ctx.collection_id
    manager = CacheManager._instance or CacheManager.get_instance()
    ident = (data_type, tenant_id, resource_id, agent_id, conversation_id, collection_id)
    memory = manager.memory
    if memory is not None:
        # Hot path: MemoryTier.get and entry_value inlined (this is the 1.5 us budget).
        data = memory._data
        entry = data.get(ident)
        if entry is not None and entry[0] > (start if memory.timer is perf_counter else memory.timer()):
            data.move_to_end(ident)
            kind = entry[1]
            try:
                if kind == HOLD_VALUE:
                    value = entry[2]
                elif kind == HOLD_FLAT:
                    value = entry[2].copy()
                elif kind == HOLD_JSON:
                    value = _loads(entry[2])
                else:
                    value = entry_value(entry, deserializer)
            except Exception:
                memory.delete(ident)
                manager.stats.error("deserialize")
            else:
                latency = (perf_counter() - start) * 1000.0
                stats = manager.stats
                count = stats.memory_hits[data_type] = stats.memory_hits.get(data_type, 0) + 1
                if not count & 7:  # one latency sample in eight keeps the hot path cheap
                    stats.sample(data_type, "memory", latency)
                return value, {
                    "source": "cache",
                    "tier": "memory",
                    "key": entry[3],
                    "level": entry[4],
                    "latency_ms": latency,
                }
    plan = manager.plan(*ident)  # validates ids: raises InvalidKeyError before any I/O
    if fetch_from_db_func is None or not callable(fetch_from_db_func):
        raise TypeError(f"fetch_from_db_func must be callable, got {fetch_from_db_func!r}")
    if memory is not None and not manager.listening:
        await manager.start()
    seq = memory.eviction_seq if memory is not None else 0
    # A Redis hit needs no single-flight: one MGET, decode, done.
    first: Lookup | bool | None
    try:
        first = await manager.lookup(plan)
    except BackendUnavailable:
        manager.stats.error("redis")
        first = False
    if isinstance(first, Lookup) and first.level:
        served = await _serve_hit(manager, plan, ident, first, deserializer, seq)
        if served is not None:
            value, metrics = served
            latency = (perf_counter() - start) * 1000.0
            metrics["latency_ms"] = latency
            manager.stats.hit(data_type, "redis", latency)
            return value, metrics
        first = None  # the entry was corrupt and is gone: look again
    read = _Read(manager, plan, ident, ctx, ttl, serializer, deserializer)
    value, metrics = await read.single_flight(fetch_from_db_func, generate_func, first, seq)
    latency = (perf_counter() - start) * 1000.0
    metrics["latency_ms"] = latency
    if metrics["source"] == "cache":
        manager.stats.hit(data_type, metrics["tier"], latency)
    else:
        manager.stats.miss(data_type, metrics["source"], latency)
    return value, metrics


async def _serve_hit(
    manager: CacheManager,
    plan: KeyPlan,
    ident: tuple[Any, ...],
    found: Lookup,
    deserializer: Deserializer | None,
    seq: int,
) -> tuple[Any, Metrics] | None:
    """Decode a Redis hit and keep it in memory; None if the entry was corrupt (now deleted)."""
    i = found.level - 1
    try:
        value = deserialize_from_cache(found.payload, plan.data_type, deserializer)
    except Exception:
        await manager._drop_corrupt(plan.entry_keys[i])
        return None
    if found.stale:  # a more specific level was invalidated: reclaim it
        try:
            await manager.reclaim_and_lease(plan, found.stale, "")
        except BackendUnavailable:
            manager.stats.error("redis")
    manager.remember(ident, plan, found, seq, value)
    return value, {"source": "cache", "tier": "redis", "key": plan.entry_keys[i], "level": plan.level_names[i]}


async def _call(func: Loader, *args: Any) -> Any:
    result = func(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class _Read:
    """One miss of one identity: the leader's work, shared with in-process followers."""

    __slots__ = ("ctx", "deserializer", "ident", "manager", "plan", "serializer", "ttl")

    def __init__(
        self,
        manager: CacheManager,
        plan: KeyPlan,
        ident: tuple[Any, ...],
        ctx: Context | None,
        ttl: int | None,
        serializer: Serializer | None,
        deserializer: Deserializer | None,
    ) -> None:
        self.manager, self.plan, self.ident, self.ctx = manager, plan, ident, ctx
        self.ttl, self.serializer, self.deserializer = ttl, serializer, deserializer

    async def single_flight(
        self, fetch: Loader, generate: Loader | None, first: Lookup | bool | None = None, seq: int | None = None
    ) -> tuple[Any, Metrics]:
        """``first``: the caller's lookup; ``seq``: the memory tier's eviction count read before it (a
        value is kept in memory only if no eviction came in since, whatever it was for)."""
        inflight = self.manager.redis.state().inflight
        leader = inflight.get(self.ident)
        if leader is not None:
            value, metrics, payload = await asyncio.shield(leader)
            if payload is not None:  # each follower gets its own copy
                value = deserialize_from_cache(payload, self.plan.data_type, self.deserializer)
            return value, {**metrics, "coalesced": True}
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        inflight[self.ident] = future
        try:
            result = await self.load(fetch, generate, first, seq)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # followers re-raise it; no "never retrieved" warning
            raise
        else:
            future.set_result(result)
            return result[0], dict(result[1])
        finally:
            if inflight.get(self.ident) is future:
                del inflight[self.ident]

    async def load(
        self, fetch: Loader, generate: Loader | None, first: Lookup | bool | None, seq: int | None = None
    ) -> tuple[Any, Metrics, bytes | None]:
        manager, plan = self.manager, self.plan
        memory = manager.memory
        if seq is None:
            seq = memory.eviction_seq if memory is not None else 0
        token = manager.new_token()
        found = await self.lookup(token, first)
        if isinstance(found, tuple):  # another process stored it while we waited for its lease
            value, hit = found
            manager.remember(self.ident, plan, hit, seq)
            i = hit.level - 1
            metrics: Metrics = {
                "source": "cache",
                "tier": "redis",
                "key": plan.entry_keys[i],
                "level": plan.level_names[i],
            }
            return value, metrics, hit.payload if value is not None else None
        tag = found  # the generations to tag our write with, or None if Redis is unusable
        value, source = await self.fetch(fetch, generate, token, tag)
        payload = self.encode(value)
        stored = False
        if tag is not None:
            ttl = self.ttl_seconds(value)
            try:
                stored = await manager.store(plan, tag, payload or b"", ttl, token)
            except BackendUnavailable:
                manager.stats.error("redis")
            if stored and payload is not None:
                manager.stats.size(plan.data_type, len(payload))
                if memory is not None and memory.eviction_seq == seq:
                    memory.set(self.ident, payload, ttl, plan.entry_keys[0], plan.level_names[0], plan.scopes)
            elif payload is not None:
                manager.stats.error("stale_write_refused")
        metrics = {
            "source": source,
            "tier": None,
            "key": plan.entry_keys[0],
            "level": plan.level_names[0],
            "stored": stored,
        }
        return value, metrics, payload if payload and value is not None else None

    async def lookup(self, token: str, first: Lookup | bool | None) -> tuple[Any, Lookup] | bytes | None:
        """Take the lease after a miss, or wait for the process that holds it.

        ``first`` is the caller's lookup: a miss to start from, None to look again, False if
        Redis was unusable. Returns a hit found while waiting as (value, Lookup); else, once we
        hold the lease or waited long enough, the tag to write with; None if Redis is unusable.
        """
        if first is False:
            return None
        manager, plan = self.manager, self.plan
        waited, delay = 0.0, 0.002
        budget = manager.settings.lease_wait_ms / 1000.0
        found = first if isinstance(first, Lookup) else None
        while True:
            try:
                if found is None:
                    found = await manager.lookup(plan)
                if found.level:
                    try:
                        return deserialize_from_cache(found.payload, plan.data_type, self.deserializer), found
                    except Exception:
                        await manager._drop_corrupt(plan.entry_keys[found.level - 1])
                        found = None
                        continue
                leased = await manager.reclaim_and_lease(plan, found.stale, token)
            except BackendUnavailable:
                manager.stats.error("redis")
                return None
            if leased or waited >= budget:
                return found.tag
            if waited == 0:
                manager.stats.error("lease_wait")
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.05)
            found = None

    async def fetch(self, fetch: Loader, generate: Loader | None, token: str, tag: Any) -> tuple[Any, str]:
        _, tenant_id, resource_id = self.ident[:3]
        try:
            value = await _call(fetch, resource_id, tenant_id, self.ctx)
            if value is not None:
                return value, "db"
            if generate is not None:
                value = await _call(generate, resource_id, tenant_id, self.ctx)
                if value is not None:
                    return value, "generated"
            return None, "none"
        except BaseException:
            if tag is not None:  # let the next process fetch without waiting for the lease to expire
                try:
                    await self.manager.store(self.plan, tag, b"", 0, token)
                except BackendUnavailable:
                    self.manager.stats.error("redis")
            raise

    def encode(self, value: Any) -> bytes | None:
        """Payload to store, or None to store nothing (only release the lease)."""
        if value is None:
            return NONE_PAYLOAD if self.manager.settings.negative_ttl_seconds > 0 else None
        try:
            return serialize_for_cache(value, self.plan.data_type, self.serializer)
        except SerializationError:
            self.manager.stats.error("serialize")
            return None

    def ttl_seconds(self, value: Any) -> int:
        settings = self.manager.settings
        if value is None:
            return settings.negative_ttl_seconds
        return ttl_for(self.plan.data_type, self.ttl, settings.ttl_jitter)

"""``get_with_cache_aside`` (section 3): memory tier, Redis hierarchy, database, generator.

The memory-tier hit is the hot path and is kept to a dict lookup and a decode. A miss goes through
single-flight (one fetch per identity per process), one read script that both looks up every level
and, on a miss, returns the generations to tag the write with and tries a short lease (one fetch per
identity across processes), then the caller's functions, then a generation-checked write.
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
from ._manager import CacheManager
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
    read = _Read(manager, plan, ident, ctx, ttl, serializer, deserializer)
    value, metrics = await read.single_flight(fetch_from_db_func, generate_func)
    latency = (perf_counter() - start) * 1000.0
    metrics["latency_ms"] = latency
    if metrics["source"] == "cache":
        manager.stats.hit(data_type, metrics["tier"], latency)
    else:
        manager.stats.miss(data_type, metrics["source"], latency)
    return value, metrics


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

    async def single_flight(self, fetch: Loader, generate: Loader | None) -> tuple[Any, Metrics]:
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
            result = await self.load(fetch, generate)
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

    async def load(self, fetch: Loader, generate: Loader | None) -> tuple[Any, Metrics, bytes | None]:
        manager, plan = self.manager, self.plan
        memory = manager.memory
        seq = memory.eviction_seq if memory is not None else 0
        token = manager.new_token()
        found = await self.lookup(token)
        if found is not None and found[0] > 0:
            return self.served_from_redis(found, seq)
        tag = found[1] if found is not None else None
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

    async def lookup(self, token: str) -> tuple[int, Any, Any] | None:
        """read.lua, waiting while another process holds the lease; None if Redis is unusable."""
        manager = self.manager
        waited, delay = 0.0, 0.002
        budget = manager.settings.lease_wait_ms / 1000.0
        while True:
            try:
                found = await manager.lookup(self.plan, token)
            except BackendUnavailable:
                manager.stats.error("redis")
                return None
            if found[0] > 0:
                try:
                    deserialize_from_cache(found[1], self.plan.data_type, self.deserializer)
                except Exception:
                    await manager._drop_corrupt(self.plan.entry_keys[found[0] - 1])
                    continue
                return found
            if found[2] or waited >= budget:
                return found
            if waited == 0:
                manager.stats.error("lease_wait")
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.05)

    def served_from_redis(self, found: tuple[int, Any, Any], seq: int) -> tuple[Any, Metrics, bytes | None]:
        level, payload, pttl = found
        plan, memory = self.plan, self.manager.memory
        value = deserialize_from_cache(payload, plan.data_type, self.deserializer)
        if memory is not None and memory.eviction_seq == seq:
            memory.set(
                self.ident, payload, pttl / 1000, plan.entry_keys[level - 1], plan.level_names[level - 1], plan.scopes
            )
        metrics = {
            "source": "cache",
            "tier": "redis",
            "key": plan.entry_keys[level - 1],
            "level": plan.level_names[level - 1],
        }
        return value, metrics, payload if value is not None else None

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

"""``get_with_cache_aside`` (section 3): memory tier, Redis hierarchy, database, generator.

The memory-tier hit is the hot path and is kept to a dict lookup, one comparison that says no scope
of the entry was evicted since it was last checked, and a copy. Redis is asked once per read
(lookup.lua): a hit ends there; a miss that nobody else is fetching took the lease in that same
round trip, so it costs one round trip before the fetch and one after (the generation-checked
write, which also releases the lease). Misses of one identity in one process are fetched once
(single-flight); across processes, a miss that finds the lease taken waits for the holder's value.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from time import perf_counter
from typing import Any

from orjson import loads as _loads

from ._context import Context
from ._entry import Lookup
from ._keys import KeyPlan, check_id
from ._manager import CacheManager
from ._memory import entry_value, hit_metrics
from ._read import Hit, read_redis
from ._serialization import NONE_PAYLOAD, Deserializer, Serializer, deserialize_from_cache, encode_value
from ._ttl import ttl_for
from .errors import BackendUnavailable, SerializationError

Metrics = dict[str, Any]
Loader = Callable[..., Any]


def _check_ids(resource_id: Any, agent_id: Any, conversation_id: Any, collection_id: Any) -> None:
    check_id(resource_id, "resource_id")
    for value, what in ((agent_id, "agent_id"), (conversation_id, "conversation_id"), (collection_id, "collection_id")):
        if value is not None:
            check_id(value, what)


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
    never do. A hit returns what the miss returned (see ``serialize_for_cache`` for the rule).
    """
    start = perf_counter()
    if ctx is not None:
        tenant_id = tenant_id or ctx.tenant_id
        agent_id = agent_id if agent_id is not None else ctx.agent_id
        conversation_id = conversation_id if conversation_id is not None else ctx.conversation_id
        collection_id = collection_id if collection_id is not None else ctx.collection_id
    if type(resource_id) is not str or agent_id is not None or conversation_id is not None or collection_id is not None:
        _check_ids(resource_id, agent_id, conversation_id, collection_id)  # True or 1.0 must not find 1's entry
    manager = CacheManager._instance or CacheManager.get_instance()
    ident = (data_type, tenant_id, resource_id, agent_id, conversation_id, collection_id)
    memory = manager.memory
    if memory is not None:
        # Hot path: MemoryTier.get and entry_value inlined (this is the 1.5 us budget). _hot_path.pyx
        # is this block compiled, what the package exports where it was built: change both together
        # (tests/test_hot_path.py runs every behaviour of a hit against both).
        # Entry slots (see _memory): 0 expiry, 1 kind, 2 data, 3 key, 4 level, 7 checked, 8 hit counter,
        # 9 metrics without the latency (built on the first hit), 10 stamp (moved to the recent end
        # only when not among the newest quarter).
        data = memory._data
        entry = data.get(ident)
        if entry is not None:
            # The manager's tier runs on perf_counter, the clock ``start`` was read from (a tier's
            # timer is injectable for the tier's own tests only).
            if entry[0] > start and (entry[7] == memory.seq or memory.revalidate(entry)):
                if entry[10] <= memory.stale_stamp:
                    memory.promote(ident, entry)
                kind = entry[1]
                try:
                    if kind == 4:  # HOLD_FLAT
                        value = entry[2].copy()
                    elif kind == 0:  # HOLD_VALUE
                        value = entry[2]
                    elif kind == 1:  # HOLD_JSON
                        value = _loads(entry[2])
                    else:
                        value = entry_value(entry, deserializer)
                except Exception:
                    memory.delete(ident)
                    manager.stats.error("deserialize")
                else:
                    latency = (perf_counter() - start) * 1000.0
                    cell = entry[8]  # the memory cell (_metrics): [steps of 16, samples, phase]
                    phase = cell[2]
                    if phase < 15:
                        cell[2] = phase + 1
                    else:  # every 16th hit: count the 16, keep this one's latency
                        cell[2] = 0
                        cell[0] += 16
                        cell[1].append(latency)
                    metrics = entry[9]
                    if metrics is None:
                        metrics = hit_metrics(entry)
                    metrics = metrics.copy()
                    metrics["latency_ms"] = latency
                    return value, metrics
            else:
                memory.delete(ident)
    return await _read_through(
        manager, ident, start, fetch_from_db_func, generate_func, ctx, ttl, serializer, deserializer
    )


async def _read_through(
    manager: CacheManager,
    ident: tuple[Any, ...],
    start: float,
    fetch: Loader,
    generate: Loader | None,
    ctx: Context | None,
    ttl: int | None,
    serializer: Serializer | None,
    deserializer: Deserializer | None,
) -> tuple[Any, Metrics]:
    """Past the memory tier: Redis, then (on a miss) the caller's functions."""
    data_type, tenant_id = ident[0], ident[1]
    plan = manager.plan(*ident)  # validates ids: raises InvalidKeyError before any I/O
    if fetch is None or not callable(fetch):
        raise TypeError(f"fetch_from_db_func must be callable, got {fetch!r}")
    memory = manager.memory
    if memory is not None and not manager.listening:
        await manager.start()
    seq = memory.seq if memory is not None else 0
    token = manager.new_token()
    first = await read_redis(manager.store, memory, manager.stats, plan, ident, deserializer, seq, token)
    if isinstance(first, Hit):  # a Redis hit needs no single-flight: one MGET, decode, done
        latency = (perf_counter() - start) * 1000.0
        manager.stats.hit(data_type, "redis", latency, tenant_id)
        i = first.found.level - 1
        metrics: Metrics = {"source": "cache", "tier": "redis", "key": plan.entry_keys[i], "level": plan.level_names[i]}
        metrics["latency_ms"] = latency
        return first.value, metrics
    read = _Miss(manager, plan, ident, ctx, ttl, serializer, deserializer, seq, token)
    value, metrics = await read.single_flight(fetch, generate, first)
    latency = (perf_counter() - start) * 1000.0
    metrics["latency_ms"] = latency
    if metrics["source"] == "cache":
        manager.stats.hit(data_type, metrics["tier"], latency, tenant_id)
    else:
        manager.stats.miss(data_type, metrics["source"], latency, tenant_id)
    return value, metrics


async def _call(func: Loader, *args: Any) -> Any:
    result = func(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class _Miss:
    """One miss of one identity: the leader's work, shared with in-process followers."""

    __slots__ = ("ctx", "deserializer", "ident", "manager", "plan", "seq", "serializer", "token", "ttl")

    def __init__(
        self,
        manager: CacheManager,
        plan: KeyPlan,
        ident: tuple[Any, ...],
        ctx: Context | None,
        ttl: int | None,
        serializer: Serializer | None,
        deserializer: Deserializer | None,
        seq: int,
        token: str,
    ) -> None:
        self.manager, self.plan, self.ident, self.ctx = manager, plan, ident, ctx
        self.ttl, self.serializer, self.deserializer, self.seq = ttl, serializer, deserializer, seq
        self.token = token

    async def single_flight(self, fetch: Loader, generate: Loader | None, first: Lookup | None) -> tuple[Any, Metrics]:
        """``first``: the caller's lookup (a miss), or None when Redis was unusable."""
        inflight = self.manager.redis.state().inflight
        leader = inflight.get(self.ident)
        if leader is not None:
            if first is not None and first.leased:  # the leader here fetches: let others have the lease
                await self.release(first)
            value, metrics, payload = await asyncio.shield(leader)
            if payload is not None:  # each follower gets its own copy
                value = deserialize_from_cache(payload, self.plan.data_type, self.deserializer)
            return value, {**metrics, "coalesced": True}
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        inflight[self.ident] = future
        try:
            result = await self.load(fetch, generate, first)
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
        self, fetch: Loader, generate: Loader | None, found: Lookup | None
    ) -> tuple[Any, Metrics, bytes | None]:
        plan = self.plan
        if found is not None and not found.leased and found.holder is not None:  # another process fetches it
            waited = await self.wait_for_holder(found)
            if isinstance(waited, Hit):
                i = waited.found.level - 1
                metrics: Metrics = {
                    "source": "cache",
                    "tier": "redis",
                    "key": plan.entry_keys[i],
                    "level": plan.level_names[i],
                }
                return waited.value, metrics, waited.found.payload if waited.value is not None else None
            found = waited
        try:
            value, source = await self.fetch(fetch, generate)
        except BaseException:
            if found is not None and found.leased:  # let the next process fetch without waiting for it
                await self.release(found)
            raise
        payload, value = self.encode(value)
        stored = False
        if found is not None:
            stored = await self.store(found, payload, value, self.token if found.leased else "")
        metrics = {"source": source, "tier": None, "key": plan.entry_keys[0], "level": plan.level_names[0]}
        metrics["stored"] = stored
        return value, metrics, payload if payload and value is not None else None

    async def wait_for_holder(self, found: Lookup) -> Hit | Lookup | None:
        """Poll (backing off) until the lease holder's value is there, or the lease is ours (it ended
        without a value), or the wait budget is spent; returns the last lookup (a miss: fetch
        ourselves), or None if Redis became unusable."""
        manager, plan = self.manager, self.plan
        waited, delay = 0.0, 0.002
        budget = manager.settings.lease_wait_ms / 1000.0
        manager.stats.error("lease_wait")
        current: Hit | Lookup | None = found
        while isinstance(current, Lookup) and not current.leased and current.holder is not None and waited < budget:
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.05)
            current = await read_redis(
                manager.store, manager.memory, manager.stats, plan, self.ident, self.deserializer, self.seq, self.token
            )
        return current

    async def fetch(self, fetch: Loader, generate: Loader | None) -> tuple[Any, str]:
        _, tenant_id, resource_id = self.ident[:3]
        value = await _call(fetch, resource_id, tenant_id, self.ctx)
        if value is not None:
            return value, "db"
        if generate is not None:
            value = await _call(generate, resource_id, tenant_id, self.ctx)
            if value is not None:
                return value, "generated"
        return None, "none"

    def encode(self, value: Any) -> tuple[bytes | None, Any]:
        """(payload to store or None, the value to return: what a hit on that payload will return)."""
        if value is None:
            return (NONE_PAYLOAD if self.manager.settings.negative_ttl_seconds > 0 else None), None
        try:
            return encode_value(value, self.plan.data_type, self.serializer)
        except SerializationError:
            self.manager.stats.error("serialize")
            return None, value

    async def store(self, found: Lookup, payload: bytes | None, value: Any, token: str) -> bool:
        """The generation-checked write (releasing the lease and reclaiming what was stale)."""
        manager, plan = self.manager, self.plan
        ttl = self.ttl_seconds(payload)
        try:
            stored = await manager.store.write(plan, found.tag, payload or b"", ttl, token)
        except BackendUnavailable:
            manager.stats.error("redis")
            return False
        if stored and payload is not None:
            manager.stats.size(plan.data_type, len(payload))
            memory = manager.memory
            if memory is not None:
                key, level = plan.entry_keys[0], plan.level_names[0]
                cell = manager.stats.memory_cell(plan.data_type, plan.tenant_id)
                memory.set(self.ident, payload, ttl, key, level, plan.scopes, self.seq, value, cell)
        elif payload is not None:
            manager.stats.error("stale_write_refused")
        return stored

    async def release(self, found: Lookup) -> None:
        try:
            await self.manager.store.write(self.plan, found.tag, b"", 0, self.token)
        except BackendUnavailable:
            self.manager.stats.error("redis")

    def ttl_seconds(self, payload: bytes | None) -> int:
        settings = self.manager.settings
        if payload == NONE_PAYLOAD:
            return settings.negative_ttl_seconds
        return ttl_for(self.plan.data_type, self.ttl, settings.ttl_jitter)

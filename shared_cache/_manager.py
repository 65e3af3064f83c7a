"""``CacheManager``: the singleton that owns the memory tier, the Redis tier and the stats.

Methods of sections 4.2, 7, 9.3 and 13.1 of the standard can be called on the class
(``await CacheManager.get(...)``, served by the singleton) or on an instance.
"""

from __future__ import annotations

import itertools
import os
import re
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import orjson

from ._events import EvictionEvent
from ._keys import (
    KeyPlan,
    build_plan,
    encode_id,
    gen_key,
    text_digest,
    validate_data_type,
    validate_tenant,
)
from ._keyspace import Keyspace, Scope
from ._memory import MemoryTier, entry_value, time_left
from ._metrics import CacheStats
from ._redis_tier import INVALIDATE, LEASE, WRITE, RedisTier
from ._scopes import agent_scopes, collection_scopes, conversation_scopes, resource_scopes, tenant_scopes
from ._serialization import Deserializer, Serializer, deserialize_from_cache, serialize_for_cache
from ._settings import CacheSettings
from ._ttl import ttl_for
from .errors import BackendUnavailable, map_backend_errors

T = TypeVar("T")
_PLAN_CACHE_SIZE = 50_000
RECEIPT_TTL_MS = 600_000
_RECEIPT_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def check_receipt(receipt: object) -> str:
    if not isinstance(receipt, str) or not _RECEIPT_RE.fullmatch(receipt):
        raise ValueError(f"invalid receipt {receipt!r}: expected a string matching [A-Za-z0-9_.:-]{{1,128}}")
    return receipt


class _singleton_method(Generic[T]):
    """Bind a method to the singleton when it is looked up on the class itself."""

    def __init__(self, func: Callable[..., T]) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: Any, cls: type[CacheManager]) -> Callable[..., T]:
        return self.func.__get__(cls.get_instance() if obj is None else obj, cls)  # type: ignore[no-any-return]


class Lookup(NamedTuple):
    """What one MGET of a plan's entries and generations says."""

    level: int  # 1-based level whose entry is current, 0 on a miss
    payload: bytes  # the winning entry's payload (b"" on a miss)
    expires_at: float  # its wall-clock expiry in seconds, 0.0 for none
    tag: bytes  # on a miss: level 1's current generations, to tag the write with
    stale: tuple[tuple[str, bytes], ...]  # (key, tag) of entries found stale, to reclaim


def parse_lookup(plan: KeyPlan, reply: list[bytes | None]) -> Lookup:
    """Pick the most specific entry whose tag equals its scopes' current generations (pure)."""
    n = len(plan.entry_keys)
    gens = [g or b"0" for g in reply[n:]]
    level_gens = plan.level_gens
    stale: list[tuple[str, bytes]] = []
    for i in range(n):
        raw = reply[i]
        if raw is None:
            continue
        tag, _, rest = raw.partition(b"|")
        expiry, found, payload = rest.partition(b"|")
        if found and expiry.isdigit() and tag == b",".join([gens[j] for j in level_gens[i]]):
            return Lookup(i + 1, payload, int(expiry) / 1000.0, b"", tuple(stale))
        stale.append((plan.entry_keys[i], tag[:64]))
    return Lookup(0, b"", 0.0, b",".join([gens[j] for j in level_gens[0]]), tuple(stale))


class CacheManager:
    """Redis + memory cache manager; one per process via :meth:`get_instance`."""

    _instance: ClassVar[CacheManager | None] = None

    def __init__(self, settings: CacheSettings | None = None) -> None:
        self.settings = settings or CacheSettings()
        s = self.settings
        self.prefix = s.key_prefix
        self.keys = Keyspace(s.key_prefix)
        self.memory: MemoryTier | None = (
            MemoryTier(s.memory_max_entries, s.memory_max_bytes, s.memory_ttl_cap_seconds) if s.memory_enabled else None
        )
        self.redis = RedisTier(s)
        self.stats = CacheStats()
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seq = itertools.count(1)
        self._tokens = itertools.count(1)
        self._plans: dict[Hashable, KeyPlan] = {}
        self.subscriber: Any = None  # EvictionSubscriber, started by start()

    # -- singleton ---------------------------------------------------------------------------
    @classmethod
    def get_instance(cls) -> CacheManager:
        instance = cls._instance
        if instance is None:
            instance = cls._instance = cls()
        return instance

    @classmethod
    def configure(cls, settings: CacheSettings | None = None, **overrides: Any) -> CacheManager:
        """Replace the singleton (e.g. at service start-up or in tests) and return it."""
        if settings is None:
            settings = CacheSettings(**overrides)
        elif overrides:
            settings = settings.model_copy(update=overrides)
        old = cls._instance
        if old is not None and old.subscriber is not None:
            old.subscriber.stop_soon()
        cls._instance = cls(settings)
        return cls._instance

    # -- plans -------------------------------------------------------------------------------
    def plan(
        self,
        data_type: Any,
        tenant_id: Any,
        resource_id: Any,
        agent_id: Any = None,
        conversation_id: Any = None,
        collection_id: Any = None,
    ) -> KeyPlan:
        """Validated keys of a request identity, cached (validation runs once per identity)."""
        ident = (data_type, tenant_id, resource_id, agent_id, conversation_id, collection_id)
        plan = self._plans.get(ident)
        if plan is None:
            plan = build_plan(self.prefix, data_type, tenant_id, resource_id, agent_id, conversation_id, collection_id)
            if len(self._plans) >= _PLAN_CACHE_SIZE:
                self._plans.clear()
            self._plans[ident] = plan
        return plan

    def new_token(self) -> str:
        return f"{self.origin}:{next(self._tokens)}"

    # -- Redis primitives ------------------------------------------------------------------------
    async def lookup(self, plan: KeyPlan) -> Lookup:
        """Every level and every generation in one MGET: one round trip, a plain command."""
        return parse_lookup(plan, await self.redis.call("MGET", *plan.mget_keys))

    async def reclaim_and_lease(self, plan: KeyPlan, stale: tuple[tuple[str, bytes], ...], token: str) -> bool:
        """Delete entries found stale (if still so) and, with a token, try to take the lease."""
        keys = [key for key, _ in stale]
        args: list[Any] = [tag for _, tag in stale]
        reply = await self.redis.script(LEASE, [*keys, plan.lease_key], [*args, token, self.settings.lease_ms])
        return bool(reply)

    async def store(
        self,
        plan: KeyPlan,
        tag: bytes | str,
        payload: bytes,
        ttl_seconds: int,
        lease_token: str = "",
    ) -> bool:
        keys = (plan.entry_keys[0], *plan.gen_keys, plan.lease_key, self.permanent_set(plan.tenant_id))
        expires_ms = int((time.time() + ttl_seconds) * 1000) if ttl_seconds > 0 else 0
        member = "\n".join((plan.entry_keys[0], *plan.gen_keys)) if ttl_seconds == 0 else ""
        args = [tag, payload, ttl_seconds * 1000, lease_token, expires_ms, member]
        return bool(await self.redis.script(WRITE, keys, args))

    def permanent_set(self, tenant_id: str) -> str:
        """Set of a tenant's entries written without expiry (``key\ngen_key...`` members)."""
        return self.keys.permanent(tenant_id)

    async def reclaim_permanent(self, tenant_id: str, batch: int = 500) -> int:
        """Delete the tenant's invalidated entries that have no expiry; returns how many.

        Entries with a TTL are reclaimed by Redis itself, and any entry is deleted when a read
        meets it stale; an entry written with ``TTL_PERMANENT`` and never read again after an
        invalidation would stay forever without this sweep (the worker runs it periodically).
        It walks the tenant's set with SSCAN, in batches, off the read and invalidation paths.
        """
        key = self.permanent_set(validate_tenant(tenant_id))
        cursor, deleted = 0, 0
        while True:
            cursor, members = await self.redis.call("SSCAN", key, cursor, "COUNT", batch)
            if members:
                deleted += await self._reclaim_batch(key, members)
            if int(cursor) == 0:
                return deleted

    async def _reclaim_batch(self, set_key: str, members: list[bytes]) -> int:
        entries = [m.decode().split("\n") for m in members]
        client = self.redis.client()
        with map_backend_errors():
            pipe = client.pipeline(transaction=False)
            for parts in entries:
                pipe.mget(parts)
            replies = await pipe.execute()
        stale: list[tuple[str, bytes]] = []
        gone: list[bytes] = []
        for member, parts, reply in zip(members, entries, replies, strict=True):
            raw = reply[0]
            tag = raw.partition(b"|")[0] if raw is not None else b""
            if raw is None or tag != b",".join([g or b"0" for g in reply[1:]]):
                gone.append(member)
                if raw is not None:
                    stale.append((parts[0], tag))
        if stale:  # deleted only if still stale (lease.lua), in the tenant's slot
            keys = [k for k, _ in stale]
            await self.redis.script(LEASE, [*keys, set_key], [*[t for _, t in stale], "", 0])
        if gone:
            await self.redis.call("SREM", set_key, *gone)
        return len(stale)

    async def publish_eviction(
        self,
        tenant_id: str,
        scopes: list[Scope],
        gen_keys: list[str],
        reason: str,
        caused_at: float | None = None,
        receipt: str | None = None,
    ) -> None:
        """Bump ``gen_keys`` and publish one event for ``scopes`` in one round trip, then evict locally;
        with a ``receipt``, the same script records that this invalidation was applied."""
        event = EvictionEvent(tenant_id, tuple(scopes), next(self._seq), self.origin, reason, caused_at=caused_at)
        keys = gen_keys
        args: list[Any] = [self.settings.eviction_channel, event.to_json()]
        if receipt is not None:
            keys = [*gen_keys, self.keys.receipt(tenant_id, check_receipt(receipt))]
            args.append(RECEIPT_TTL_MS)
        try:
            await self.redis.script(INVALIDATE, keys, args)
        finally:
            # Local memory goes whatever Redis said: never serve locally what we meant to drop.
            if self.memory is not None:
                self.memory.evict_scopes(scopes)

    # -- basic operations (section 4.2) ----------------------------------------------------------
    @_singleton_method
    async def get(
        self,
        data_type: str,
        resource_id: Any,
        tenant_id: str,
        agent_id: Any = None,
        conversation_id: Any = None,
        collection_id: Any = None,
        deserializer: Deserializer | None = None,
    ) -> Any:
        """The cached value (memory, then the Redis hierarchy) or None. Never raises for Redis."""
        ident = (data_type, tenant_id, resource_id, agent_id, conversation_id, collection_id)
        memory = self.memory
        if memory is not None:
            entry = memory.get(ident)
            if entry is not None:
                try:
                    return entry_value(entry, deserializer)
                except Exception:
                    memory.delete(ident)
                    self.stats.error("deserialize")
        plan = self.plan(*ident)
        if memory is not None and not self.listening:
            await self.start()
        seq = memory.eviction_seq if memory is not None else 0
        try:
            found = await self.lookup(plan)
            if found.stale:
                await self.reclaim_and_lease(plan, found.stale, "")
        except BackendUnavailable:
            self.stats.error("redis")
            return None
        if found.level == 0:
            return None
        try:
            value = deserialize_from_cache(found.payload, data_type, deserializer)
        except Exception:
            await self._drop_corrupt(plan.entry_keys[found.level - 1])
            return None
        self.remember(ident, plan, found, seq)
        return value

    def remember(self, ident: Hashable, plan: KeyPlan, found: Lookup, seq: int, decoded: Any = None) -> None:
        """Keep a Redis hit in the memory tier, unless an eviction came in since the lookup began."""
        memory = self.memory
        if memory is None or memory.eviction_seq != seq:
            return
        ttl = time_left(found.expires_at)
        if ttl is None:
            return
        i = found.level - 1
        if decoded is None:
            memory.set(ident, found.payload, ttl, plan.entry_keys[i], plan.level_names[i], plan.scopes)
        else:
            memory.set(ident, found.payload, ttl, plan.entry_keys[i], plan.level_names[i], plan.scopes, decoded)

    @_singleton_method
    async def set(
        self,
        data_type: str,
        resource_id: Any,
        value: Any,
        tenant_id: str,
        agent_id: Any = None,
        conversation_id: Any = None,
        collection_id: Any = None,
        ttl: int | None = None,
        serializer: Serializer | None = None,
    ) -> bool:
        """Store ``value`` at the most specific key. Raises ``SerializationError`` for values with
        no encoding; returns False (and counts it) if Redis is unavailable."""
        ident = (data_type, tenant_id, resource_id, agent_id, conversation_id, collection_id)
        plan = self.plan(*ident)
        payload = serialize_for_cache(value, data_type, serializer)
        seconds = ttl_for(data_type, ttl, self.settings.ttl_jitter)
        try:
            stored = await self.store(plan, "", payload, seconds)
        except BackendUnavailable:
            self.stats.error("redis")
            stored = False
        if self.memory is not None:
            self.memory.delete(ident)
        if stored:
            self.stats.size(data_type, len(payload))
            # Other nodes may hold the previous value of this resource in memory.
            await self._announce(plan.tenant_id, [plan.scopes[2]], "set")
        return stored

    @_singleton_method
    async def delete(
        self,
        data_type: str,
        resource_id: Any,
        tenant_id: str,
        agent_id: Any = None,
        conversation_id: Any = None,
        collection_id: Any = None,
    ) -> bool:
        """Delete the entry at the most specific key (memory and Redis); True if Redis had it."""
        plan = self.plan(data_type, tenant_id, resource_id, agent_id, conversation_id, collection_id)
        try:
            deleted = bool(await self.redis.call("DEL", plan.entry_keys[0]))
        except BackendUnavailable:
            self.stats.error("redis")
            deleted = False
        await self._announce(plan.tenant_id, [plan.scopes[2]], "delete")
        return deleted

    @_singleton_method
    async def ttl(
        self,
        data_type: str,
        resource_id: Any,
        tenant_id: str,
        agent_id: Any = None,
        conversation_id: Any = None,
        collection_id: Any = None,
    ) -> int:
        """Seconds left of the entry that a read would serve from Redis; -1 = no expiry,
        -2 = no valid entry (missing, expired or invalidated)."""
        plan = self.plan(data_type, tenant_id, resource_id, agent_id, conversation_id, collection_id)
        found = await self.lookup(plan)
        if found.level == 0:
            return -2
        pttl = int(await self.redis.call("PTTL", plan.entry_keys[found.level - 1]))
        if pttl == -2:
            return -2
        return -1 if pttl < 0 else max(0, round(pttl / 1000))

    async def _announce(self, tenant_id: str, scopes: list[Scope], reason: str) -> None:
        """Evict ``scopes`` from every node's memory tier without bumping generations."""
        try:
            await self.publish_eviction(tenant_id, scopes, [], reason)
        except BackendUnavailable:
            self.stats.error("redis")

    async def _drop_corrupt(self, key: str) -> None:
        self.stats.error("corrupt_entry")
        try:
            await self.redis.call("DEL", key)
        except BackendUnavailable:
            self.stats.error("redis")

    # -- invalidation (section 7) ----------------------------------------------------------------
    @_singleton_method
    async def invalidate(
        self,
        tenant_id: str,
        data_type: str,
        resource_id: Any = "*",
        agent_id: Any = None,
        conversation_id: Any = None,
        collection_id: Any = None,
    ) -> None:
        """Invalidate one resource in every context it was cached under, or with ``resource_id="*"``
        every entry of the type for the tenant. O(1): one generation bump, one round trip.

        ``agent_id``/``conversation_id``/``collection_id`` narrow nothing (a resource's entries are
        all dropped); they are accepted for the standard's signature. Raises ``BackendUnavailable`` if
        Redis cannot record the invalidation: the caller must know it did not happen.
        """
        scopes = resource_scopes(tenant_id, data_type, resource_id)
        await self.publish_eviction(scopes[0][0], scopes, [gen_key(self.prefix, scopes[0])], "invalidate")

    @_singleton_method
    async def invalidate_scopes(
        self,
        tenant_id: str,
        scopes: list[Scope],
        reason: str = "invalidate",
        caused_at: float | None = None,
        receipt: str | None = None,
    ) -> None:
        """Bump several scopes of one tenant at once (one round trip, one event). ``caused_at`` (the
        commit time of the change behind it) lets every node measure commit-to-eviction latency.
        ``receipt`` (``[A-Za-z0-9_.:-]``, up to 128 characters) is recorded by the same script, for
        :meth:`applied_receipts`: whoever sent the invalidation can tell it was applied."""
        tenant = validate_tenant(tenant_id)
        checked = [s for s in scopes if s and s[0] == tenant]
        if len(checked) != len(scopes):
            raise ValueError(f"every scope must belong to tenant {tenant!r}: {scopes!r}")
        gen_keys = [self.keys.generation(s) for s in checked]
        await self.publish_eviction(tenant, checked, gen_keys, reason, caused_at, receipt)

    async def applied_receipts(self, receipts: Iterable[tuple[str, str]]) -> frozenset[tuple[str, str]]:
        """Which ``(tenant_id, receipt)`` invalidations were applied (receipts live 10 minutes).

        One round trip: one MGET per tenant (a tenant's receipts share its hash slot), pipelined.
        Raises ``BackendUnavailable`` when Redis cannot answer.
        """
        by_tenant: dict[str, list[str]] = {}
        for tenant, receipt in receipts:
            by_tenant.setdefault(validate_tenant(tenant), []).append(check_receipt(receipt))
        if not by_tenant:
            return frozenset()
        client = self.redis.client()
        with map_backend_errors():
            pipe = client.pipeline(transaction=False)
            for tenant, ids in by_tenant.items():
                pipe.mget([self.keys.receipt(tenant, r) for r in ids])
            replies = await pipe.execute()
        return frozenset(
            (tenant, r)
            for (tenant, ids), reply in zip(by_tenant.items(), replies, strict=True)
            for r, value in zip(ids, reply, strict=True)
            if value is not None
        )

    async def forget_receipts(self, receipts: Iterable[tuple[str, str]]) -> None:
        """Delete receipts nobody needs any more (they also expire by themselves)."""
        keys = [self.keys.receipt(validate_tenant(t), check_receipt(r)) for t, r in receipts]
        if not keys:
            return
        client = self.redis.client()
        with map_backend_errors():
            pipe = client.pipeline(transaction=False)
            for key in keys:  # one command per key: on a cluster the tenants' slots differ
                pipe.unlink(key)
            await pipe.execute()

    @_singleton_method
    async def invalidate_agent_complete(self, tenant_id: str, agent_id: Any) -> None:
        """Every entry cached under the agent, and its ``agent_config``."""
        await self.invalidate_scopes(tenant_id, agent_scopes(tenant_id, agent_id), "agent")

    @_singleton_method
    async def invalidate_collection_complete(self, tenant_id: str, collection_id: Any) -> None:
        """Every entry cached under the collection (queries, retrievals, its vector store)."""
        await self.invalidate_scopes(tenant_id, collection_scopes(tenant_id, collection_id), "collection")

    @_singleton_method
    async def invalidate_conversation_complete(self, tenant_id: str, conversation_id: Any) -> None:
        await self.invalidate_scopes(tenant_id, conversation_scopes(tenant_id, conversation_id), "conversation")

    @_singleton_method
    async def invalidate_tenant(self, tenant_id: str) -> None:
        """Everything of one tenant (offboarding, key rotation): one generation bump."""
        await self.invalidate_scopes(tenant_id, tenant_scopes(tenant_id), "tenant")

    # -- typed helpers (sections 4.2 and 11) ---------------------------------------------------
    @staticmethod
    def embedding_resource_id(text: str, model_name: str) -> str:
        if not isinstance(text, str) or not isinstance(model_name, str) or not model_name:
            raise ValueError(
                f"embedding needs str text and a non-empty str model_name, got {type(text).__name__}, {model_name!r}"
            )
        return "emb_" + text_digest(f"{len(model_name)}:{model_name}{text}")

    @_singleton_method
    async def get_embedding(self, text: str, model_name: str, tenant_id: str) -> list[float] | None:
        return await self.get("embedding", self.embedding_resource_id(text, model_name), tenant_id)  # type: ignore[no-any-return]

    @_singleton_method
    async def set_embedding(
        self, text: str, embedding: Any, model_name: str, tenant_id: str, ttl: int | None = None
    ) -> bool:
        return await self.set("embedding", self.embedding_resource_id(text, model_name), embedding, tenant_id, ttl=ttl)

    @staticmethod
    def query_resource_id(query: str, params: Mapping[str, Any]) -> str:
        if not isinstance(query, str):
            raise ValueError(f"query must be a str, got {type(query).__name__}")
        body = orjson.dumps({"q": query, "p": params}, option=orjson.OPT_SORT_KEYS).decode()
        return "q_" + text_digest(body)

    @_singleton_method
    async def get_query_result(
        self, query: str, collection_id: Any, tenant_id: str, similarity_top_k: int | None = None, **params: Any
    ) -> Any:
        params["similarity_top_k"] = similarity_top_k
        rid = self.query_resource_id(query, params)
        return await self.get("query_result", rid, tenant_id, collection_id=collection_id)

    @_singleton_method
    async def set_query_result(
        self,
        query: str,
        result: Any,
        collection_id: Any,
        tenant_id: str,
        similarity_top_k: int | None = None,
        ttl: int | None = None,
        **params: Any,
    ) -> bool:
        params["similarity_top_k"] = similarity_top_k
        rid = self.query_resource_id(query, params)
        return await self.set("query_result", rid, result, tenant_id, collection_id=collection_id, ttl=ttl)

    @_singleton_method
    async def get_agent_config(self, agent_id: Any, tenant_id: str) -> Any:
        return await self.get("agent_config", agent_id, tenant_id)

    @_singleton_method
    async def set_agent_config(self, agent_id: Any, config: Any, tenant_id: str, ttl: int | None = None) -> bool:
        return await self.set("agent_config", agent_id, config, tenant_id, ttl=ttl)

    # -- counters (section 9.3) ------------------------------------------------------------------
    def _counter_key(self, counter_type: str, resource_id: Any, tenant_id: str) -> str:
        tenant = validate_tenant(tenant_id)
        kind = validate_data_type(counter_type)
        res = "-" if resource_id is None else encode_id(resource_id)
        return self.keys.counter(tenant, kind, res)

    @_singleton_method
    async def increment_counter(
        self,
        counter_type: str,
        amount: int | float = 1,
        resource_id: Any = None,
        tenant_id: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> int | float:
        """Add ``amount`` to a tenant's counter; ``metadata`` items are counted as sub-totals.
        Returns the new total. Raises ``BackendUnavailable`` when Redis is down (counts are data)."""
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise ValueError(f"counter amount must be a number, got {amount!r}")
        key = self._counter_key(counter_type, resource_id, tenant_id)
        command = "HINCRBY" if isinstance(amount, int) else "HINCRBYFLOAT"
        total = await self.redis.call(command, key, "total", amount)
        for name, value in (metadata or {}).items():
            await self.redis.call(command, key, f"{name}={value}", amount)
        return _number(total)

    @_singleton_method
    async def get_counter(
        self, scope: str, resource_id: Any = None, tenant_id: str = "", metadata: Mapping[str, Any] | None = None
    ) -> int | float:
        """A counter's total, or the sub-total of one ``metadata`` item; 0 if never incremented."""
        key = self._counter_key(scope, resource_id, tenant_id)
        field = "total"
        if metadata:
            ((name, value),) = metadata.items()
            field = f"{name}={value}"
        return _number(await self.redis.call("HGET", key, field))

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the eviction subscriber on the running loop (called on first use if needed)."""
        if self.memory is None or not self.settings.subscriber_enabled:
            return
        if self.subscriber is not None:
            if self.subscriber.alive:
                return
            self.subscriber.stop_soon()
        from ._subscriber import EvictionSubscriber

        self.subscriber = EvictionSubscriber(self)
        await self.subscriber.start()

    def stats_key(self, origin: str | None = None) -> str:
        return self.keys.stats(origin or self.origin)

    def stats_report(self) -> dict[str, Any]:
        """This process's stats: the snapshot, the memory tier, and what its subscriber measured."""
        from ._metrics import _percentile

        report: dict[str, Any] = {"origin": self.origin, "at": time.time(), **self.stats.snapshot()}
        if self.memory is not None:
            report["memory"] = {"entries": len(self.memory), "bytes": self.memory.bytes}
        sub = self.subscriber
        if sub is not None:
            report["subscriber"] = {
                "connects": sub.connects,
                "events": sub.events,
                "evicted": sub.evicted,
                "malformed": sub.malformed,
                "propagation_ms": {
                    "p50": _percentile(list(sub.propagation_ms), 0.5),
                    "p99": _percentile(list(sub.propagation_ms), 0.99),
                },
                "commit_to_evict_ms": {
                    "p50": _percentile(list(sub.commit_to_evict_ms), 0.5),
                    "p99": _percentile(list(sub.commit_to_evict_ms), 0.99),
                    "count": len(sub.commit_to_evict_ms),
                },
            }
        return report

    async def publish_stats(self) -> None:
        """Leave ``stats_report()`` in Redis for a minute (read by ``shared-cache stats``)."""
        await self.redis.call("SET", self.stats_key(), orjson.dumps(self.stats_report()), "EX", 60)

    @property
    def listening(self) -> bool:
        """True if no subscriber is needed or it runs on the current loop."""
        if self.memory is None or not self.settings.subscriber_enabled:
            return True
        return self.subscriber is not None and bool(self.subscriber.alive)

    async def close(self) -> None:
        if self.subscriber is not None:
            await self.subscriber.stop()
            self.subscriber = None
        await self.redis.close()

    def __repr__(self) -> str:
        return f"CacheManager(origin={self.origin!r}, memory={'on' if self.memory is not None else 'off'})"


def _number(raw: Any) -> int | float:
    if raw is None:
        return 0
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        return int(text)
    except ValueError:
        return float(text)

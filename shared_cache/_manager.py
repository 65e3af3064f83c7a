"""``CacheManager``: the process singleton, and the facade of sections 4.2, 7, 9.3 and 13.1.

It owns the parts (settings, key layout, memory tier, Redis tier, entry store, stats, eviction
subscriber, stats publisher) and offers the standard's methods over them. Methods can be called on
the class (``await CacheManager.get(...)``, served by the singleton) or on an instance. The read
path, the batch path, counters and the reclaim sweep live in their own modules.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from . import _counters, _reclaim
from ._embedding_ids import embedding_resource_id
from ._entry import Lookup
from ._events import EvictionEvent
from ._keys import KeyPlan, build_plan, text_digest, validate_tenant
from ._keyspace import Keyspace, Scope
from ._memory import MemoryTier, entry_value
from ._metrics import CacheStats
from ._read import Hit, read_redis
from ._redis_tier import RedisTier
from ._reporter import REPORT_TTL_SECONDS, StatsPublisher, stats_report
from ._scopes import agent_scopes, collection_scopes, conversation_scopes, resource_scopes, tenant_scopes
from ._serialization import Deserializer, Serializer, serialize_for_cache
from ._settings import CacheSettings
from ._store import EntryStore
from ._subscriber import EvictionSubscriber
from ._ttl import ttl_for
from .errors import BackendUnavailable, InvalidKeyError

T = TypeVar("T")
_RECEIPT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")


class _singleton_method(Generic[T]):
    """Bind a method to the singleton when it is looked up on the class itself."""

    def __init__(self, func: Callable[..., T]) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: Any, cls: type[CacheManager]) -> Callable[..., T]:
        return self.func.__get__(cls.get_instance() if obj is None else obj, cls)  # type: ignore[no-any-return]


def check_receipt(receipt: object) -> str:
    if not isinstance(receipt, str) or not 0 < len(receipt) <= 128 or not _RECEIPT_CHARS.issuperset(receipt):
        raise InvalidKeyError(f"invalid receipt {receipt!r}: expected a string matching [A-Za-z0-9_.:-]{{1,128}}")
    return receipt


class CacheManager:
    """Redis + memory cache manager; one per process via :meth:`get_instance`."""

    _instance: ClassVar[CacheManager | None] = None

    def __init__(self, settings: CacheSettings | None = None) -> None:
        self.settings = s = settings or CacheSettings()
        self.prefix = s.key_prefix
        self.keys = Keyspace(s.key_prefix)
        self.memory: MemoryTier | None = (
            MemoryTier(s.memory_max_entries, s.memory_max_bytes, s.memory_ttl_cap_seconds) if s.memory_enabled else None
        )
        self.redis = RedisTier(s)
        self.stats = CacheStats()
        self.store = EntryStore(self.redis, self.keys, s, self.stats)
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seq = itertools.count(1)
        self._tokens = itertools.count(1)
        # Bounded one plan at a time, oldest first: it used to hold 50,000 plans (up to 130 MB) and
        # drop them all at once, a 160 ms stall of the event loop on the read that found it full.
        self._plans: OrderedDict[Hashable, KeyPlan] = OrderedDict()
        self.subscriber: EvictionSubscriber | None = None
        self.publisher: StatsPublisher | None = None

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
        if old is not None:
            for part in (old.subscriber, old.publisher):
                if part is not None:
                    part.stop_soon()
        cls._instance = cls(settings)
        return cls._instance

    # -- plans and lookups -----------------------------------------------------------------------
    def plan(
        self,
        data_type: Any,
        tenant_id: Any,
        resource_id: Any,
        agent_id: Any = None,
        conversation_id: Any = None,
        collection_id: Any = None,
    ) -> KeyPlan:
        """Validated keys of a request identity, cached for the ``plan_cache_size`` identities planned
        last (validation and key building run once per identity while it is kept)."""
        ident = (data_type, tenant_id, resource_id, agent_id, conversation_id, collection_id)
        plans = self._plans
        plan = plans.get(ident)
        if plan is None:
            plan = build_plan(self.prefix, data_type, tenant_id, resource_id, agent_id, conversation_id, collection_id)
            size = self.settings.plan_cache_size
            if size:
                if len(plans) >= size:
                    plans.popitem(last=False)
                plans[ident] = plan
        return plan

    def new_token(self) -> str:
        return f"{self.origin}:{next(self._tokens)}"

    async def lookup(self, plan: KeyPlan) -> Lookup:
        """What Redis holds for a plan: one MGET of its levels, generations and lease."""
        return await self.store.lookup(plan)

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
        plan = self.plan(data_type, tenant_id, resource_id, agent_id, conversation_id, collection_id)
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
            if not self.listening:
                await self.start()
        seq = memory.seq if memory is not None else 0
        found = await read_redis(self.store, memory, self.stats, plan, ident, deserializer, seq)
        return found.value if isinstance(found, Hit) else None

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
        """Store ``value`` at the most specific key. Raises ``SerializationError`` for values the cache
        cannot give back unchanged; returns False (and counts it) if Redis is unavailable."""
        ident = (data_type, tenant_id, resource_id, agent_id, conversation_id, collection_id)
        plan = self.plan(*ident)
        payload = serialize_for_cache(value, data_type, serializer)
        seconds = ttl_for(data_type, ttl, self.settings.ttl_jitter)
        try:
            stored = await self.store.write(plan, "", payload, seconds)
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

    # -- invalidation (section 7) ----------------------------------------------------------------
    async def publish_eviction(
        self,
        tenant_id: str,
        scopes: list[Scope],
        reason: str,
        caused_at: float | None = None,
        receipt: str | None = None,
        bump: bool = True,
    ) -> None:
        """Bump ``scopes`` and publish one event for them in one round trip, then evict locally (in
        O(1) whatever they cover); with a ``receipt``, the same script records that it was applied."""
        event = EvictionEvent(tenant_id, tuple(scopes), next(self._seq), self.origin, reason, caused_at=caused_at)
        try:
            if bump:
                await self.store.invalidate(tenant_id, scopes, event, receipt)
            else:
                await self.store.announce(event)
        finally:
            # Local memory goes whatever Redis said: never serve locally what we meant to drop.
            if self.memory is not None:
                self.memory.evict_scopes(scopes)

    async def _announce(self, tenant_id: str, scopes: list[Scope], reason: str) -> None:
        """Evict ``scopes`` from every node's memory tier without bumping generations."""
        try:
            await self.publish_eviction(tenant_id, scopes, reason, bump=False)
        except BackendUnavailable:
            self.stats.error("redis")

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
        await self.publish_eviction(scopes[0][0], scopes, "invalidate")

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
            raise InvalidKeyError(f"every scope must belong to tenant {tenant!r}: {scopes!r}")
        await self.publish_eviction(
            tenant, checked, reason, caused_at, None if receipt is None else check_receipt(receipt)
        )

    async def applied_receipts(self, receipts: Iterable[tuple[str, str]]) -> frozenset[tuple[str, str]]:
        """Which ``(tenant_id, receipt)`` invalidations were applied (receipts live 10 minutes).

        One round trip: one MGET per tenant (a tenant's receipts share its hash slot), pipelined.
        Raises ``BackendUnavailable`` when Redis cannot answer.
        """
        by_tenant: dict[str, list[str]] = {}
        for tenant, receipt in receipts:
            by_tenant.setdefault(validate_tenant(tenant), []).append(check_receipt(receipt))
        commands = [("MGET", *(self.keys.receipt(t, r) for r in ids)) for t, ids in by_tenant.items()]
        replies = await self.redis.call_many(commands)
        applied: set[tuple[str, str]] = set()
        for (tenant, ids), reply in zip(by_tenant.items(), replies, strict=True):
            if isinstance(reply, BaseException):
                raise reply
            applied.update((tenant, r) for r, value in zip(ids, reply, strict=True) if value is not None)
        return frozenset(applied)

    async def forget_receipts(self, receipts: Iterable[tuple[str, str]]) -> None:
        """Delete receipts nobody needs any more (they also expire by themselves)."""
        keys = [self.keys.receipt(validate_tenant(t), check_receipt(r)) for t, r in receipts]
        await self.redis.call_many([("UNLINK", key) for key in keys])  # a key per command: slots differ

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

    @_singleton_method
    async def reclaim_permanent(self, tenant_id: str, batch: int = 500) -> int:
        """Delete the tenant's invalidated entries that have no expiry; returns how many (see
        ``_reclaim``; the worker's beat schedule runs it for the tenants it knows)."""
        return await _reclaim.reclaim_permanent(self.store, validate_tenant(tenant_id), batch)

    # -- typed helpers (sections 4.2 and 11) ---------------------------------------------------
    embedding_resource_id = staticmethod(embedding_resource_id)

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
        import orjson

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
        return await _counters.increment(self.redis, self.keys, counter_type, amount, resource_id, tenant_id, metadata)

    @_singleton_method
    async def get_counter(
        self, scope: str, resource_id: Any = None, tenant_id: str = "", metadata: Mapping[str, Any] | None = None
    ) -> int | float:
        """A counter's total, or the sub-total of one ``metadata`` item; 0 if never incremented."""
        return await _counters.read(self.redis, self.keys, scope, resource_id, tenant_id, metadata)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the eviction subscriber and the stats publisher on the running loop (called on first
        use). The first read waits for the subscription at most the connect timeout, and not at all
        while the breaker says Redis is down: a memory tier is flushed when it subscribes, so reading
        on meanwhile is safe."""
        if self.memory is None or not self.settings.subscriber_enabled:
            return
        if self.subscriber is not None:
            if self.subscriber.alive:
                return
            self.subscriber.stop_soon()
        if self.publisher is not None:
            self.publisher.stop_soon()
        self.subscriber = EvictionSubscriber(
            self.memory, self.settings.eviction_channel, self.redis.node_client, self.stats, self.origin
        )
        if self.settings.stats_publish_seconds > 0:
            self.publisher = StatsPublisher(self.publish_stats, self.settings.stats_publish_seconds)
            self.publisher.start()
        wait = 0.0 if self.redis.breaker.is_open else min(1.0, self.settings.connect_timeout_seconds)
        await self.subscriber.start(wait)

    @property
    def listening(self) -> bool:
        """True if no subscriber is needed or it runs on the current loop."""
        if self.memory is None or not self.settings.subscriber_enabled:
            return True
        return self.subscriber is not None and self.subscriber.alive

    def stats_report(self) -> dict[str, Any]:
        """This process's stats: the snapshot, the memory tier, and what its subscriber measured."""
        return stats_report(self.origin, self.stats, self.memory, self.subscriber, self.settings.stats_top_tenants)

    async def publish_stats(self) -> None:
        """Leave ``stats_report()`` in Redis for a minute (read by ``shared-cache stats``)."""
        import orjson

        report = orjson.dumps(self.stats_report())
        await self.redis.call("SET", self.keys.stats(self.origin), report, "EX", REPORT_TTL_SECONDS)

    async def close(self) -> None:
        for part in (self.subscriber, self.publisher):
            if part is not None:
                await part.stop()
        self.subscriber = self.publisher = None
        await self.redis.close()

    def __repr__(self) -> str:
        return f"CacheManager(origin={self.origin!r}, memory={'on' if self.memory is not None else 'off'})"

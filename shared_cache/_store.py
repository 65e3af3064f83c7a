"""The entry store: the Redis side of a plan, one round trip per step.

- :meth:`EntryStore.lookup`: ``lookup.lua`` reads every hierarchy level, the generation counters of
  the request's scopes and the lease in one round trip; it returns the most specific current entry,
  deletes the stale ones it met, and on a miss takes the lease (or says who holds it): a miss costs
  one round trip before the fetch.
- :meth:`EntryStore.write`: after the fetch, ``write.lua`` stores the value only if the generations
  are still those read before the fetch, and releases the lease: one round trip after the fetch.
- :meth:`EntryStore.invalidate`: INCR of the scopes' generations and PUBLISH of the eviction event
  in one script (with a receipt when asked).

The single-key read, ``CacheManager.get``, the batch path and the operator tools all read through
here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ._entry import Lookup, parse_lookup
from ._events import EvictionEvent
from ._keys import KeyPlan
from ._keyspace import Keyspace, Scope
from ._metrics import CacheStats
from ._redis_tier import INVALIDATE, LOOKUP, RECLAIM, WRITE, RedisTier
from ._settings import CacheSettings

RECEIPT_TTL_MS = 600_000


class EntryStore:
    def __init__(self, redis: RedisTier, keys: Keyspace, settings: CacheSettings, stats: CacheStats) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.stats = stats

    async def lookup(self, plan: KeyPlan, token: str = "") -> Lookup:
        """Every level, every generation and the lease in one script; with a ``token``, a miss takes
        the lease when nobody holds it."""
        args = (*plan.lookup_args, token, self.settings.lease_ms)
        return parse_lookup(await self.redis.script(LOOKUP, plan.mget_keys, args))

    async def write(
        self,
        plan: KeyPlan,
        tag: bytes | str,
        payload: bytes,
        ttl_seconds: int,
        lease_token: str = "",
        stale: Sequence[tuple[str, bytes]] = (),
    ) -> bool:
        """Store ``payload`` at the most specific key if the generations still read ``tag`` ('' = the
        current ones); release the lease; delete ``stale`` entries that are still stale."""
        keys = [
            plan.entry_keys[0],
            *plan.gen_keys,
            plan.lease_key,
            self.keys.permanent(plan.tenant_id),
            *(key for key, _ in stale),
        ]
        expires_ms = int((time.time() + ttl_seconds) * 1000) if ttl_seconds > 0 else 0
        member = "\n".join((plan.entry_keys[0], *plan.gen_keys)) if ttl_seconds == 0 else ""
        args = [tag, payload, ttl_seconds * 1000, lease_token, expires_ms, member, len(plan.gen_keys)]
        args += [seen for _, seen in stale]
        return bool(await self.redis.script(WRITE, keys, args))

    async def reclaim(
        self, tenant_id: str, stale: Sequence[tuple[str, bytes]], forget: Sequence[bytes | str] = ()
    ) -> int:
        """Delete ``stale`` entries still carrying the tag seen; forget ``forget`` members of the
        tenant's permanent-entry set. Returns how many entries were deleted."""
        keys = [self.keys.permanent(tenant_id), *(key for key, _ in stale)]
        return int(await self.redis.script(RECLAIM, keys, [*(seen for _, seen in stale), *forget]))

    async def invalidate(
        self,
        tenant_id: str,
        scopes: Sequence[Scope],
        event: EvictionEvent,
        receipt: str | None = None,
    ) -> None:
        """Bump the scopes' generations and publish ``event``, in one script; with a ``receipt``, the
        same script records that this invalidation was applied."""
        keys = list(self.keys.generations(tuple(scopes)))
        args: list[Any] = [self.settings.eviction_channel, event.to_json()]
        if receipt is not None:
            keys.append(self.keys.receipt(tenant_id, receipt))
            args.append(RECEIPT_TTL_MS)
        await self.redis.script(INVALIDATE, keys, args)

    async def announce(self, event: EvictionEvent) -> None:
        """Publish an eviction event without bumping anything (a direct set or delete)."""
        await self.redis.script(INVALIDATE, [], [self.settings.eviction_channel, event.to_json()])

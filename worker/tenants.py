"""Tenants the listener has seen changes of: what a conservative invalidation bumps.

They are kept in the listener's own memory, which a Redis restart cannot take away (a restart that
emptied Redis once left the conservative invalidation it triggers with no tenant at all), and
written to a Redis set (``Keyspace.worker_tenants``) for the next listener, ``shared-cache stats`` and
the reclaim sweep. A new tenant costs one SADD, once; the whole set is written again after a Redis
restart.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

import redis.asyncio as aredis

from shared_cache import validate_tenant_id

log = logging.getLogger("shared_cache.worker")
_CHUNK = 1000


class KnownTenants:
    def __init__(self, client: aredis.Redis, key: str) -> None:
        self.client = client
        self.key = key
        self._known: set[str] = set()
        self._unsaved: set[str] = set()

    def __len__(self) -> int:
        return len(self._known)

    def all(self) -> list[str]:
        return sorted(self._known)

    def add(self, tenants: Iterable[str]) -> None:
        new = set(tenants) - self._known
        self._known |= new
        self._unsaved |= new

    async def load(self) -> int:
        """Add the tenants of the Redis set (those earlier listeners saw); best effort."""
        loaded = set()
        try:
            async for raw in self.client.sscan_iter(self.key, count=_CHUNK):
                with contextlib.suppress(ValueError):
                    loaded.add(validate_tenant_id(raw.decode() if isinstance(raw, bytes) else raw))
        except Exception as exc:  # Redis away: the set is read again after its restart
            log.warning("could not read the known tenants from Redis (%s)", exc)
        self._known |= loaded
        return len(loaded)

    async def save(self) -> None:
        """Write the tenants not written yet; on failure they stay pending for the next call."""
        if not self._unsaved:
            return
        pending = sorted(self._unsaved)
        try:
            for start in range(0, len(pending), _CHUNK):
                await self.client.sadd(self.key, *pending[start : start + _CHUNK])
        except Exception as exc:
            log.warning("could not record %d new tenants in Redis (%s); kept in memory", len(pending), exc)
            return
        self._unsaved.difference_update(pending)

    async def save_all(self) -> None:
        """Write every known tenant again (Redis restarted, possibly empty)."""
        self._unsaved |= self._known
        await self.save()

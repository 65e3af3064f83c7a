"""Conservative invalidation: when changes may have been lost, bump what they could have touched.

A gap (an at-most-once source that resubscribed, a silent feed, a Redis restart, an event of an
at-most-once source that cannot be planned) means some change may never arrive. For each tenant
concerned (the known tenants, or the one tenant an event names) the listener bumps every data type
the affected tables' rules cover: one round trip per tenant, applied when the call returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from shared_cache import CacheManager
from tasks.support import Backoff
from worker.counters import ListenerCounters
from worker.rules import Planner
from worker.sources.base import qualified
from worker.tenants import KnownTenants

log = logging.getLogger("shared_cache.worker")
_CONCURRENCY = 32  # tenants bumped at once
_ATTEMPTS = 8


class ConservativeInvalidator:
    def __init__(
        self, cache: CacheManager, planner: Planner, tenants: KnownTenants, counters: ListenerCounters
    ) -> None:
        self.cache = cache
        self.planner = planner
        self.tenants = tenants
        self.counters = counters

    def covered_types(self, tables: Iterable[str]) -> list[str]:
        """Data types the rules of ``tables`` (qualified ``schema.table``) can make stale."""
        wanted = set(tables)
        rules = [rule for rule in self.planner.rules.values() if qualified(rule.schema_, rule.table) in wanted]
        return sorted({data_type for rule in rules for data_type in rule.covered_types()})

    async def invalidate(self, label: str, reason: str, tables: Iterable[str], tenants: list[str] | None = None) -> int:
        """Bump the covered types of ``tables`` for ``tenants`` (default: every known tenant).

        Never raises: Redis that just came back may refuse a first command or two, so it retries with
        backoff, and counts a failure if Redis stays away. Returns how many tenants were bumped.
        """
        self.counters.conservative_invalidations += 1
        types = self.covered_types(tables)
        targets = self.tenants.all() if tenants is None else tenants
        log.warning("%s: %s; invalidating %s for %d tenants", label, reason, ",".join(types) or "nothing", len(targets))
        if not types or not targets:
            return 0
        todo = list(targets)
        backoff = Backoff(first=0.05, cap=5.0)
        for _ in range(_ATTEMPTS):
            todo = await self._bump(todo, types, f"gap in {label}: {reason}")
            if not todo:
                self.counters.conservative_tenants += len(targets)
                return len(targets)
            await asyncio.sleep(backoff.next())
        self.counters.conservative_invalidation_failures += 1
        self.counters.conservative_tenants += len(targets) - len(todo)
        log.error("%s: conservative invalidation failed for %d tenants: Redis stays away", label, len(todo))
        return len(targets) - len(todo)

    async def _bump(self, tenants: list[str], types: list[str], reason: str) -> list[str]:
        """Bump each tenant's types; returns the tenants that failed."""
        failed: list[str] = []
        for start in range(0, len(tenants), _CONCURRENCY):
            chunk = tenants[start : start + _CONCURRENCY]
            results = await asyncio.gather(
                *(self.cache.invalidate_scopes(t, [(t, "type", d) for d in types], reason) for t in chunk),
                return_exceptions=True,
            )
            failed += [t for t, result in zip(chunk, results, strict=True) if isinstance(result, BaseException)]
        return failed

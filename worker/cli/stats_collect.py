"""What ``shared-cache stats`` reads from Redis, returned as plain data (the renderers print it).

Every key comes from ``manager.keys`` (``shared_cache.Keyspace``): the processes' stats reports, the
listener's report and its tenant set, the dead-letter counts; the keys of one tenant are found with
its SCAN pattern.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from shared_cache import CacheManager, InvalidKeyError, validate_tenant_id

from .letters import key_problem, parked_counts
from .stats_aggregate import aggregate_reads, aggregate_tenants, listener_row, process_row
from .values import integer, json_object, text


async def collect_stats(
    manager: CacheManager,
    dead_letter_key: str,
    max_scan: int,
    max_tenants: int,
    tenants: list[str],
    cluster: bool = False,
) -> dict[str, Any]:
    """Everything ``stats`` shows. ``tenants``: only these (default: the busiest and those the
    listener knows); ``max_scan`` 0: no key counts per tenant."""
    client = manager.redis.client()
    now = time.time()
    reports, unreadable = await read_reports(manager)
    by_tenant, reported = aggregate_tenants(reports, max_tenants, set(tenants) if tenants else None)
    listener = json_object(await client.get(manager.keys.worker_stats))
    memory = await client.info("memory")
    data: dict[str, Any] = {
        "prefix": manager.prefix,
        "cache": aggregate_reads(reports)
        | {"unreadable_reports": unreadable, "by_tenant": by_tenant, "tenants_reported": reported},
        "processes": [process_row(r, now) for r in reports],
        "listener": listener_row(listener, now) if listener is not None else None,
        "redis": {
            "used_memory": integer(memory.get("used_memory")),
            "maxmemory": integer(memory.get("maxmemory")),
            "maxmemory_policy": text(memory.get("maxmemory_policy")),
            "keys": integer(await client.dbsize()),
        },
        "dead_letters": await dead_letters(manager, dead_letter_key),
        "tenants": None,
    }
    if max_scan:
        if not tenants:  # the busiest first, then those the listener has seen
            tenants = [row["tenant"] for row in by_tenant] + await known_tenants(manager, max_tenants)
        scanned = list(dict.fromkeys(tenants))[:max_tenants]
        data["tenants"] = {
            "known": integer(await client.scard(manager.keys.worker_tenants)),
            "max_scan": max_scan,
            "rows": [await tenant_keys(manager, tenant, max_scan, cluster) for tenant in scanned],
        }
    return data


async def dead_letters(manager: CacheManager, key: str) -> dict[str, Any]:
    """How many dead letters wait and how many each source parked; ``problem`` if the keys are not
    the listener's (then nothing is counted)."""
    problem = await key_problem(manager, key)
    if problem:
        return {"key": key, "waiting": None, "parked": {}, "problem": problem}
    waiting = integer(await manager.redis.client().llen(key))
    return {"key": key, "waiting": waiting, "parked": await parked_counts(manager, key)}


async def read_reports(manager: CacheManager) -> tuple[list[dict[str, Any]], int]:
    """The stats reports left in the last minute, by origin, and how many could not be read."""
    client = manager.redis.client()
    reports: list[dict[str, Any]] = []
    unreadable = 0
    async for key in client.scan_iter(match=manager.keys.stats_pattern(), count=1000):
        report = json_object(await client.get(key))
        if report is None:
            unreadable += 1 if await client.exists(key) else 0  # (gone meanwhile: expired)
            continue
        reports.append(report)
    reports.sort(key=lambda r: str(r.get("origin", "")))
    return reports, unreadable


async def known_tenants(manager: CacheManager, most: int) -> list[str]:
    """Up to ``most`` tenants the listener has seen changes of, by name."""
    found: list[str] = []
    async for raw in manager.redis.client().sscan_iter(manager.keys.worker_tenants, count=500):
        with contextlib.suppress(InvalidKeyError):
            found.append(validate_tenant_id(text(raw)))
        if len(found) >= most:
            break
    return sorted(found)


async def tenant_keys(manager: CacheManager, tenant: str, max_scan: int, cluster: bool) -> dict[str, Any]:
    """The tenant's cache entries per data type, and its bookkeeping keys, counted by SCAN."""
    entries: dict[str, int] = {}
    other = 0
    complete = True
    async for key in scan_bounded(manager.redis.client(), manager.keys.tenant_pattern(tenant), max_scan, cluster):
        if key is None:
            complete = False
            break
        data_type = manager.keys.entry_type(tenant, key)
        if data_type is None:  # generations, leases, counters, receipts, the permanent-entry set
            other += 1
        else:
            entries[data_type] = entries.get(data_type, 0) + 1
    return {
        "tenant": tenant,
        "entries": sum(entries.values()),
        "by_type": dict(sorted(entries.items())),
        "bookkeeping_keys": other,
        "complete": complete,
    }


async def scan_bounded(client: Any, match: str, max_scan: int, cluster: bool) -> AsyncIterator[bytes | None]:
    """Keys matching ``match``; yields None (and stops) once about ``max_scan`` keys were walked.

    On a single server the cursor is driven here so the bound is on keys walked (the server's
    work), not on keys matched. A cluster client scans every node itself (``scan_iter``), so there
    the bound is on keys matched.
    """
    page = min(1000, max(10, max_scan))
    if cluster:
        seen = 0
        async for key in client.scan_iter(match=match, count=page):
            seen += 1
            yield key
            if seen >= max_scan:
                yield None
                return
        return
    cursor, walked = 0, 0
    while True:
        cursor, keys = await client.scan(cursor, match=match, count=page)
        walked += page  # COUNT is how many keys one call walks (a hint the server follows closely)
        for key in keys:
            yield key
        if int(cursor) == 0:
            return
        if walked >= max_scan:
            yield None
            return

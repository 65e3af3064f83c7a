"""Maintenance tasks, run periodically by Celery beat (``celery -A worker.app beat``).

``reclaim_permanent``: entries written with ``TTL_PERMANENT`` have no expiry, so one that is
invalidated and never read again would stay in Redis forever; the library's sweep
(``CacheManager.reclaim_permanent``) deletes them, tenant by tenant. The tenants swept are the ones
the listener has seen changes of (``Keyspace.worker_tenants``), or those the call names.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from celery import shared_task

from shared_cache import CacheManager, validate_tenant_id
from tasks._runtime import run
from tasks.contracts import RECLAIM_PERMANENT, ReclaimCall
from tasks.invalidation import TASK_OPTIONS

log = logging.getLogger(__name__)


async def known_tenants(manager: CacheManager) -> list[str]:
    """Tenants the listener recorded, valid ids only, sorted."""
    tenants: set[str] = set()
    client = manager.redis.client()
    async for raw in client.sscan_iter(manager.keys.worker_tenants, count=500):
        with contextlib.suppress(ValueError):
            tenants.add(validate_tenant_id(raw.decode() if isinstance(raw, bytes) else raw))
    return sorted(tenants)


async def reclaim(call: ReclaimCall) -> dict[str, int]:
    manager = CacheManager.get_instance()
    tenants = list(call.tenant_ids) or await known_tenants(manager)
    deleted = 0
    for tenant in tenants:
        deleted += await manager.reclaim_permanent(tenant)
    log.info("reclaimed %d invalidated permanent entries of %d tenants", deleted, len(tenants))
    return {"tenants": len(tenants), "deleted": deleted}


@shared_task(name=RECLAIM_PERMANENT, **TASK_OPTIONS)
def reclaim_permanent(tenant_ids: Any = ()) -> dict[str, int]:
    """Delete invalidated entries without expiry of ``tenant_ids`` (default: every known tenant)."""
    return run(reclaim(ReclaimCall.from_wire(tenant_ids)))

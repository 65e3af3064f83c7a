"""The invalidation task: bump a tenant's scopes, which also publishes the eviction to every node.

Idempotent (bumping a generation twice only invalidates twice), acknowledged late and rejected
when its worker dies, so a killed worker loses no invalidation: the message is delivered again.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from shared_cache import CacheManager
from tasks._runtime import run

# Shared by every task of ours: at-least-once delivery, bounded retries with backoff and jitter.
TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (Exception,),
    "retry_backoff": 0.5,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 8,
}


def _scopes(tenant_id: str, scopes: list[list[str]]) -> list[tuple[str, ...]]:
    if not isinstance(scopes, list) or not all(isinstance(s, list) and s for s in scopes):
        raise ValueError(f"scopes must be a list of non-empty lists, got {scopes!r}")
    return [tuple(scope) for scope in scopes]


@shared_task(name="shared_cache.invalidate", queue="invalidation", **TASK_OPTIONS)
def invalidate(tenant_id: str, scopes: list[list[str]], reason: str = "change", caused_at: float | None = None) -> int:
    """Bump ``scopes`` of ``tenant_id`` (one round trip) and publish one eviction event; ``caused_at``
    is the commit time of the change, carried in the event for commit-to-eviction latency."""
    checked = _scopes(tenant_id, scopes)
    run(CacheManager.get_instance().invalidate_scopes(tenant_id, checked, reason, caused_at))
    return len(checked)

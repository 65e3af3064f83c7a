"""The invalidation task: bump a tenant's scopes, which also publishes the eviction to every node.

Idempotent (bumping a generation twice only invalidates twice), acknowledged late and rejected
when its worker dies. A message can still be lost between the broker handing it to a worker and
the worker recording it (kombu's Redis transport pops before it records), so the sender does not
trust delivery: each call carries a receipt that the invalidation script records when it applies
the bumps, and the listener sends again any call whose receipt does not appear (``worker.acks``).
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from shared_cache import CacheManager
from tasks._runtime import run
from tasks.contracts import INVALIDATE, ContractError, InvalidateCall
from tasks.settings import TaskSettings


def delivery_options(settings: TaskSettings) -> dict[str, Any]:
    """Options shared by every task of ours: at-least-once delivery, bounded retries with backoff and
    jitter, and no retry of a call that breaks its contract (it would fail the same way again)."""
    return {
        "acks_late": True,
        "reject_on_worker_lost": True,
        "autoretry_for": (Exception,),
        "dont_autoretry_for": (ContractError,),
        "retry_backoff": 0.5,
        "retry_backoff_max": 30,
        "retry_jitter": True,
        "max_retries": settings.task_max_retries,
    }


TASK_OPTIONS = delivery_options(TaskSettings())


@shared_task(name=INVALIDATE, **TASK_OPTIONS)
def invalidate(
    tenant_id: str,
    scopes: list[list[str]],
    reason: str = "change",
    caused_at: float | None = None,
    receipt: str | None = None,
) -> int:
    """Bump ``scopes`` of ``tenant_id`` (one round trip) and publish one eviction event; see
    :class:`tasks.contracts.InvalidateCall` for the arguments."""
    call = InvalidateCall.from_wire(tenant_id, scopes, reason, caused_at, receipt)
    return run(apply_invalidation(call))


async def apply_invalidation(call: InvalidateCall) -> int:
    manager = CacheManager.get_instance()
    await manager.invalidate_scopes(call.tenant_id, list(call.scopes), call.reason, call.caused_at, call.receipt)
    return len(call.scopes)

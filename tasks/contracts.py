"""The worker's task contracts: task names, their queues, and typed calls with their wire form.

Everything that sends or runs a task goes through these types: the listener and the dead-letter
replay build calls (``worker.dispatch`` sends them), the tasks rebuild them from what arrived. A call
travels as JSON keyword arguments (:meth:`InvalidateCall.to_wire`); ``from_wire`` checks every field
once, on receipt, and raises :class:`ContractError` naming the bad value: a malformed message is
refused at once, never retried. Scopes are checked by ``shared_cache.parse_scopes`` (each scope inside
the call's tenant, of a known kind and length).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from shared_cache import Scope, parse_scopes, validate_tenant_id

INVALIDATE = "shared_cache.invalidate"
WARM_TEXTS = "shared_cache.warm_texts"
WARM_COLLECTION = "shared_cache.warm_collection"
RECLAIM_PERMANENT = "shared_cache.reclaim_permanent"

# Two queues: latency-bound invalidations apart from bulk work (warming, reclaim sweeps), so that a
# warming backlog never delays an invalidation.
INVALIDATION_QUEUE = "invalidation"
WARMING_QUEUE = "warming"
QUEUES = (INVALIDATION_QUEUE, WARMING_QUEUE)
TASK_ROUTES: dict[str, dict[str, str]] = {
    INVALIDATE: {"queue": INVALIDATION_QUEUE},
    WARM_TEXTS: {"queue": WARMING_QUEUE},
    WARM_COLLECTION: {"queue": WARMING_QUEUE},
    RECLAIM_PERMANENT: {"queue": WARMING_QUEUE},
}

# The same rule as the library's receipts; receipts also serve as task ids (see worker.acks).
_RECEIPT = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
MAX_REASON = 200


class ContractError(ValueError):
    """A task call whose arguments break the contract; the message names the value."""


def _reason(value: Any) -> str:
    if not isinstance(value, str):
        raise ContractError(f"reason must be a str, got {type(value).__name__}")
    return value[:MAX_REASON]


def _caused_at(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ContractError(f"caused_at must be a finite number of seconds or null, got {value!r}")
    return float(value)


def _receipt(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not _RECEIPT.fullmatch(value)):
        raise ContractError(f"receipt must match [A-Za-z0-9_.:-]{{1,128}} or be null, got {value!r}")
    return value


def _tenant(value: Any) -> str:
    try:
        return validate_tenant_id(value)
    except ValueError as exc:
        raise ContractError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class InvalidateCall:
    """Bump ``scopes`` of ``tenant_id`` in one round trip. ``caused_at``: commit time of the change
    (for commit-to-eviction latency); ``receipt``: recorded by the same script once applied, so the
    sender can tell (``CacheManager.applied_receipts``)."""

    task: ClassVar[str] = INVALIDATE
    tenant_id: str
    scopes: tuple[Scope, ...]
    reason: str = "change"
    caused_at: float | None = None
    receipt: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "scopes": [list(scope) for scope in self.scopes],
            "reason": self.reason,
            "caused_at": self.caused_at,
            "receipt": self.receipt,
        }

    @classmethod
    def from_wire(
        cls,
        tenant_id: Any,
        scopes: Any,
        reason: Any = "change",
        caused_at: Any = None,
        receipt: Any = None,
    ) -> InvalidateCall:
        tenant = _tenant(tenant_id)
        try:
            checked = parse_scopes(tenant, scopes if isinstance(scopes, Iterable) else [scopes])
        except ValueError as exc:
            raise ContractError(str(exc)) from exc
        return cls(tenant, checked, _reason(reason), _caused_at(caused_at), _receipt(receipt))


@dataclass(frozen=True, slots=True)
class WarmCall:
    """Embed and cache ``texts`` for ``tenant_id`` (texts already cached are skipped)."""

    task: ClassVar[str] = WARM_TEXTS
    tenant_id: str
    texts: tuple[str, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "texts": list(self.texts)}

    @classmethod
    def from_wire(cls, tenant_id: Any, texts: Any) -> WarmCall:
        tenant = _tenant(tenant_id)
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise ContractError(f"texts must be a list of str, got {type(texts).__name__}")
        return cls(tenant, tuple(texts))


@dataclass(frozen=True, slots=True)
class WarmCollectionCall:
    """Embed every chunk text of one collection (read from the database)."""

    task: ClassVar[str] = WARM_COLLECTION
    tenant_id: str
    collection_id: str

    def to_wire(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "collection_id": self.collection_id}

    @classmethod
    def from_wire(cls, tenant_id: Any, collection_id: Any) -> WarmCollectionCall:
        if not isinstance(collection_id, str) or not collection_id:
            raise ContractError(f"collection_id must be a non-empty str, got {collection_id!r}")
        return cls(_tenant(tenant_id), collection_id)


@dataclass(frozen=True, slots=True)
class ReclaimCall:
    """Delete invalidated entries written without expiry, for ``tenant_ids`` (empty: every tenant
    the listener has seen)."""

    task: ClassVar[str] = RECLAIM_PERMANENT
    tenant_ids: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"tenant_ids": list(self.tenant_ids)}

    @classmethod
    def from_wire(cls, tenant_ids: Any = ()) -> ReclaimCall:
        if tenant_ids is None:
            return cls()
        if not isinstance(tenant_ids, (list, tuple)):
            raise ContractError(f"tenant_ids must be a list of tenant ids, got {type(tenant_ids).__name__}")
        return cls(tuple(_tenant(t) for t in tenant_ids))


TaskCall = InvalidateCall | WarmCall | WarmCollectionCall | ReclaimCall

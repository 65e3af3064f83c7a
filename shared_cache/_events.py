"""``EvictionEvent``: the small typed message every invalidation publishes (ARCHITECTURE.md 3.3)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson

from ._keys import validate_tenant
from ._keyspace import Scope
from ._scopes import parse_scope

EVENT_VERSION = 1


@dataclass(frozen=True, slots=True)
class EvictionEvent:
    """Scopes of one tenant whose generations were bumped (or entries deleted) by one call.

    ``seq`` increases per ``origin`` (the publishing process), so a subscriber can tell gaps and
    duplicates from one node; ``sent_at`` (wall clock) lets a subscriber measure propagation.
    """

    tenant_id: str
    scopes: tuple[Scope, ...]
    seq: int
    origin: str
    reason: str = "invalidate"
    sent_at: float = field(default_factory=time.time)
    caused_at: float | None = None  # wall clock of what caused it (a commit), when known

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "v": EVENT_VERSION,
                "tenant": self.tenant_id,
                "scopes": self.scopes,
                "seq": self.seq,
                "origin": self.origin,
                "reason": self.reason,
                "sent_at": self.sent_at,
                "caused_at": self.caused_at,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> EvictionEvent:
        """Parse and validate; raises ``ValueError`` naming what is wrong."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"eviction event is not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("v") != EVENT_VERSION:
            raise ValueError(f"eviction event of unknown version: {str(data)[:200]!r}")
        tenant = validate_tenant(data.get("tenant"))
        scopes = data.get("scopes")
        if not isinstance(scopes, list) or not scopes:
            raise ValueError(f"eviction event has no scopes: {scopes!r}")
        seq, origin, sent_at, caused_at = (
            data.get("seq"),
            data.get("origin"),
            data.get("sent_at"),
            data.get("caused_at"),
        )
        if not isinstance(seq, int) or not isinstance(origin, str) or not isinstance(sent_at, (int, float)):
            raise ValueError("eviction event needs int seq, str origin and numeric sent_at")
        if caused_at is not None and not isinstance(caused_at, (int, float)):
            raise ValueError("eviction event caused_at must be numeric when given")
        return cls(
            tenant_id=tenant,
            scopes=tuple(parse_scope(s, tenant) for s in scopes),
            seq=seq,
            origin=origin,
            reason=str(data.get("reason", "invalidate")),
            sent_at=float(sent_at),
            caused_at=None if caused_at is None else float(caused_at),
        )

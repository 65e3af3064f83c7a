"""Coalescing: actions planned within one window become a few typed task calls (pure code).

10,000 chunk updates of one document in a window plan 10,000 identical invalidations; they collapse
to one. Invalidations are grouped per tenant (one call, one round trip each); warming texts are
deduplicated and cut into calls of at most ``texts_per_call`` texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared_cache import Scope
from tasks.contracts import InvalidateCall, WarmCall
from worker.rules import Action, Invalidate, Warm


@dataclass
class Window:
    """What one window collected: scopes per tenant, texts per tenant, and how many actions."""

    invalidations: dict[str, dict[Scope, str]] = field(default_factory=dict)
    caused_at: dict[str, float] = field(default_factory=dict)  # latest commit time per tenant
    texts: dict[str, dict[str, None]] = field(default_factory=dict)
    actions: int = 0
    events: int = 0

    def add(self, actions: list[Action], caused_at: float | None = None) -> None:
        self.events += 1
        for action in actions:
            self.actions += 1
            if isinstance(action, Invalidate):
                if caused_at is not None:
                    self.caused_at[action.tenant_id] = max(caused_at, self.caused_at.get(action.tenant_id, 0.0))
                scopes = self.invalidations.setdefault(action.tenant_id, {})
                for scope in action.scopes:
                    scopes.setdefault(scope, action.reason)
            elif isinstance(action, Warm):
                self.texts.setdefault(action.tenant_id, {}).update(dict.fromkeys(action.texts))

    def __bool__(self) -> bool:
        return bool(self.invalidations or self.texts)

    @property
    def tenants(self) -> set[str]:
        return {*self.invalidations, *self.texts}

    def invalidate_calls(self, reason_prefix: str = "") -> list[InvalidateCall]:
        """One call per tenant, tenants and scopes in a stable order, without receipts."""
        calls = []
        for tenant, scopes in sorted(self.invalidations.items()):
            reasons = sorted(set(scopes.values()))
            reason = reasons[0] if len(reasons) == 1 else f"{len(reasons)} kinds of change"
            caused_at = self.caused_at.get(tenant)
            calls.append(InvalidateCall(tenant, tuple(sorted(scopes)), reason_prefix + reason, caused_at))
        return calls

    def warm_calls(self, texts_per_call: int) -> list[WarmCall]:
        if texts_per_call < 1:
            raise ValueError(f"texts_per_call must be >= 1, got {texts_per_call}")
        calls = []
        for tenant, texts in sorted(self.texts.items()):
            ordered = tuple(texts)
            for start in range(0, len(ordered), texts_per_call):
                calls.append(WarmCall(tenant, ordered[start : start + texts_per_call]))
        return calls

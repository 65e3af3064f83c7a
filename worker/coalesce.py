"""Coalescing: actions planned within one window become a few tasks (pure code).

10,000 chunk updates of one document in a window plan 10,000 identical invalidations; they
collapse to one. Invalidations are grouped per tenant (one task, one round trip each); warming
texts are deduplicated and cut into batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared_cache import Scope
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

    def invalidation_tasks(self) -> list[tuple[str, list[list[str]], str, float | None]]:
        """(tenant, scopes, reason, caused_at) per tenant, scopes in a stable order."""
        tasks = []
        for tenant, scopes in sorted(self.invalidations.items()):
            reasons = sorted(set(scopes.values()))
            reason = reasons[0] if len(reasons) == 1 else f"{len(reasons)} kinds of change"
            tasks.append((tenant, [list(s) for s in sorted(scopes)], reason, self.caused_at.get(tenant)))
        return tasks

    def warm_tasks(self, batch_size: int) -> list[tuple[str, list[str]]]:
        tasks = []
        for tenant, texts in sorted(self.texts.items()):
            ordered = list(texts)
            for start in range(0, len(ordered), batch_size):
                tasks.append((tenant, ordered[start : start + batch_size]))
        return tasks

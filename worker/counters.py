"""The listener's counters: one typed object, read by its status report and by Prometheus.

Each counter is a field with its help text; ``worker.metrics`` exposes every field as
``shared_cache_worker_<name>_total``, so a counter added here is exported without another table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

SCOPE_PREFIX = "scopes:"


def _counter(help_text: str) -> Any:
    return field(default=0, metadata={"help": help_text})


@dataclass
class ListenerCounters:
    events: int = _counter("Change events taken from the sources.")
    processed: int = _counter("Change events planned and dispatched (or parked).")
    windows: int = _counter("Coalescing windows dispatched.")
    invalidation_tasks: int = _counter("Invalidation calls sent (first sends).")
    warm_tasks: int = _counter("Warming calls sent.")
    applied: int = _counter("Invalidation calls whose receipt showed they were applied.")
    resent: int = _counter("Invalidation calls sent again: not applied in time and no longer queued.")
    confirmations: int = _counter("Positions confirmed to durable sources (all changes up to them applied).")
    confirm_errors: int = _counter("Confirmations that failed and were retried.")
    receipt_check_errors: int = _counter("Receipt checks that failed (Redis away) and were retried.")
    backpressure_waits: int = _counter("Times the listener stopped reading changes: too many calls unapplied.")
    dead_letters: int = _counter("Events or inputs parked as dead letters.")
    dead_letters_lost: int = _counter("Dead letters that could not be parked and were dropped (at-most-once).")
    park_retries: int = _counter("Failed parks retried (a durable source waits for them).")
    partly_planned: int = _counter("Events of which one part was planned and another parked.")
    unplanned_gaps: int = _counter("Unplannable events of an at-most-once source, answered as a gap.")
    conservative_invalidations: int = _counter("Conservative invalidations after a source may have lost changes.")
    conservative_tenants: int = _counter("Tenants bumped by conservative invalidations.")
    conservative_invalidation_failures: int = _counter("Conservative invalidations that failed after every retry.")
    delivery_retries: int = _counter("Sends retried because the broker was away.")
    redis_restarts: int = _counter("Redis restarts seen (a new run id).")
    source_restarts: int = _counter("Change streams restarted after an unexpected error.")
    scopes: dict[str, int] = field(default_factory=dict)  # scopes sent, by kind (tenant, type, res...)

    def count_scopes(self, scopes: Any) -> None:
        for scope in scopes:
            kind = scope[1] if len(scope) > 1 else "tenant"
            self.scopes[kind] = self.scopes.get(kind, 0) + 1

    def snapshot(self) -> dict[str, int]:
        """Plain values for the status report and logs, scope kinds as ``scopes:<kind>``; safe to call
        from another thread (a scrape)."""
        values = {f.name: int(getattr(self, f.name)) for f in counter_fields()}
        for kind, count in list(self.scopes.items()):
            values[SCOPE_PREFIX + kind] = count
        return values


def counter_fields() -> list[Any]:
    """The integer counters (every field but ``scopes``), with their help in ``metadata["help"]``."""
    return [f for f in fields(ListenerCounters) if "help" in f.metadata]

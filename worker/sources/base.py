"""The interface every change source implements, and the callbacks the listener gives them.

The listener uses a source only through :class:`ChangeSource`: it never probes one for optional
attributes. A source that has nothing to say for a member still implements it (``confirm`` of an
at-most-once source does nothing; ``lag_bytes`` of a source without a replication slot is ``None``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Protocol, runtime_checkable

from worker.events import ChangeEvent

# Called with (source name, reason) whenever a source may have lost events: after it
# (re)subscribes, after a liveness probe failed, after its Redis connection came back. The listener
# answers with a conservative invalidation of what the source covers and counts it. Never raises.
GapHandler = Callable[[str, str], Awaitable[None]]

# Called with (source name, raw payload, reason) for input that could not become a ChangeEvent.
# Returns True once the input is parked in the dead-letter list, False if it could not be (Redis
# full or away). A durable source must not move past input that was neither planned nor parked:
# it retries later. An at-most-once source drops it (the listener counts it as lost). Never raises.
DeadLetterHandler = Callable[[str, str, str], Awaitable[bool]]

# Counters every source reports (others may add their own, e.g. ``subscriptions``, ``probe_failures``).
COMMON_COUNTERS = ("received", "malformed", "reconnects")


def qualified(schema: str, table: str) -> str:
    """The one form a watched table is named in: ``schema.table`` (``public.documents``)."""
    return f"{schema}.{table}"


@runtime_checkable
class ChangeSource(Protocol):
    """Yields ``ChangeEvent``s; ``confirm(position)`` once every change up to it was applied.

    - ``name``: the source's name in logs, metrics and dead letters (``postgres``, ``redis``...).
    - ``durable``: True if the source replays what was not confirmed (a replication slot), False if
      it delivers at most once (realtime, pub/sub). The listener answers a gap of an at-most-once
      source with a conservative invalidation.
    - ``tables``: the watched tables, always qualified ``schema.table`` (see :func:`qualified`).
    - ``prepare()``: connect and set up what the source needs (a slot) before the listener reports
      ready; raises an error an operator can act on when that is impossible.
    - ``events()``: the changes, in the source's order, until ``close()``. One consumer only. If
      iterating raises, the listener calls ``events()`` again after a backoff: a durable source goes
      on after what it yielded (or confirmed), an at-most-once one subscribes again (a gap).
    - ``confirm(position)``: the listener calls it with the ``position`` of the last event of a
      window once every invalidation of that window and of all windows before it was applied in
      Redis (end to end, not when the broker accepted the task). Positions only move forward.
    - ``close()``: stop ``events()`` and release connections; idempotent.
    - ``counters()``: a snapshot of the source's counters, at least :data:`COMMON_COUNTERS`.
    - ``lag_bytes()``: how far the confirmed position is behind the source's head, in bytes (a
      replication slot's lag), or ``None`` where that means nothing.
    """

    @property
    def name(self) -> str: ...

    @property
    def durable(self) -> bool: ...

    @property
    def tables(self) -> tuple[str, ...]: ...

    async def prepare(self) -> None: ...

    def events(self) -> AsyncIterator[ChangeEvent]: ...

    async def confirm(self, position: str) -> None: ...

    async def close(self) -> None: ...

    def counters(self) -> Mapping[str, int]: ...

    async def lag_bytes(self) -> int | None: ...

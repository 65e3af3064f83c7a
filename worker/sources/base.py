"""The interface every change source implements."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, runtime_checkable

from worker.events import ChangeEvent

# Called with (source name, reason) whenever a source may have lost events: after it
# (re)subscribes, after a liveness probe failed, after its Redis connection came back. The listener
# answers with a conservative invalidation of what the source covers and counts it.
GapHandler = Callable[[str, str], Awaitable[None]]
# Called with (source name, raw payload, reason) for input that could not become a ChangeEvent.
DeadLetterHandler = Callable[[str, str, str], Awaitable[None]]


@runtime_checkable
class ChangeSource(Protocol):
    """Yields ``ChangeEvent``s; ``confirm`` is called once their tasks were accepted by the broker.

    ``durable`` says whether the source can replay what it missed (a replication slot) or
    delivers at most once (realtime, pub/sub).
    """

    name: str
    durable: bool
    tables: tuple[str, ...]

    def events(self) -> AsyncIterator[ChangeEvent]: ...

    async def confirm(self, position: str) -> None: ...

    async def close(self) -> None: ...

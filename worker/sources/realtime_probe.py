"""The realtime liveness probe's bookkeeping (pure code: the caller passes the time).

Every touch of the heartbeat row carries the next number of a sequence (``beat``). Realtime
delivers the changes of one subscription in commit order and the touches are made one after the
other, so the echoes must come back in that order too. That gives three verdicts:

- an echo after a (re)subscribe proves the new subscription really forwards changes: the gap the
  subscribe stands for is signalled then (not at ``SUBSCRIBED``, which can precede the feed);
- an echo that overtakes an earlier touch that succeeded means the server skipped changes while
  the subscription stayed up (its tenant-wide rate limit drops changes silently): a gap;
- no echo within ``timeout`` of the oldest unanswered touch: the feed is dead. A resubscribe does
  not restart that clock: a client that rejoins every second after a channel error must not keep
  a dead feed looking alive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

REASON_HEARTBEAT_LOST = "changes dropped by the server (a heartbeat never came back)"


@dataclass
class Echo:
    """What one echo means: the gap to signal (if any) and how many earlier heartbeats were lost."""

    gap: str | None
    lost: int


@dataclass
class Probe:
    interval: float
    timeout: float
    beat: int = 0  # the last number handed out; never reused, also across subscriptions
    _sent: dict[int, float] = field(default_factory=dict)  # touched, not yet echoed -> when
    _pending_since: float | None = None  # oldest touch no echo has answered yet
    _awaiting: str | None = None  # gap reason to signal once the feed is shown to flow
    _last_touch: float = -math.inf
    _next_touch: float = 0.0

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError(f"probe interval and timeout must be positive, got {self.interval!r} and {self.timeout!r}")

    @property
    def retouch(self) -> float:
        """How soon to touch again while a probe is unanswered: a touch committed before the feed
        really flows is lost, and a later one must get its chance within the timeout."""
        return min(self.interval, self.timeout / 2)

    def restart(self, now: float) -> None:
        """A fresh client: nothing is pending, touch at once."""
        self._sent.clear()
        self._pending_since = self._awaiting = None
        self._last_touch, self._next_touch = -math.inf, now

    def next_beat(self) -> int:
        self.beat += 1
        return self.beat

    def touched(self, beat: int, now: float, ok: bool) -> None:
        """A touch was made (``ok``) or failed. A failed touch is still a probe: a feed that cannot
        be verified is treated as a dead one rather than trusted."""
        if ok:
            self._sent[beat] = now
        if self._pending_since is None:
            self._pending_since = now
        self._last_touch, self._next_touch = now, now + self.retouch

    def subscribed(self, reason: str, now: float) -> None:
        """A (re)subscribe: its gap waits for the first echo; a probe already pending stays pending."""
        self._awaiting = reason
        self._next_touch = now

    def troubled(self, now: float) -> None:
        """A channel error or a timed-out join: make sure a probe is pending, so the feed either
        proves itself within the timeout or is replaced."""
        if self._pending_since is None:
            self._next_touch = min(self._next_touch, now)

    def echo(self, beat: int, now: float) -> Echo:
        """Heartbeat ``beat`` came back through the feed."""
        lost = sum(1 for earlier in self._sent if earlier < beat)
        for answered in [b for b in self._sent if b <= beat]:
            del self._sent[answered]
        self._pending_since = min(self._sent.values(), default=None)
        if self._pending_since is None:
            self._next_touch = max(now, self._last_touch + self.interval)
        gap, self._awaiting = self._awaiting, None
        if gap is not None:  # whatever was lost before the feed flowed is covered by this gap
            return Echo(gap, 0)
        return Echo(REASON_HEARTBEAT_LOST if lost else None, lost)

    def overdue(self, now: float) -> bool:
        return self._pending_since is not None and now - self._pending_since >= self.timeout

    def wants_touch(self, now: float) -> bool:
        return now >= self._next_touch

    def deadline(self) -> float:
        """When the supervisor must look again if nothing else wakes it."""
        if self._pending_since is None:
            return self._next_touch
        return min(self._next_touch, self._pending_since + self.timeout)

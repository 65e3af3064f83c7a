"""A small circuit breaker: after ``threshold`` consecutive failures, skip Redis for ``reset_after``
seconds, then let one probe through; one success closes it again."""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = 5,
        reset_after: float = 2.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or reset_after <= 0:
            raise ValueError(f"breaker needs threshold >= 1 and reset_after > 0, got {threshold!r}, {reset_after!r}")
        self.threshold = threshold
        self.reset_after = reset_after
        self.timer = timer
        self.failures = 0
        self.open_until = 0.0
        self.opened = 0  # how many times it opened, for stats

    @property
    def is_open(self) -> bool:
        return self.failures >= self.threshold and self.timer() < self.open_until

    def allow(self) -> bool:
        """True if a call may go to Redis now (closed, or a half-open probe)."""
        if self.failures < self.threshold:
            return True
        now = self.timer()
        if now < self.open_until:
            return False
        self.open_until = now + self.reset_after  # one probe per period; others keep skipping
        return True

    def success(self) -> None:
        self.failures = 0

    def failure(self) -> None:
        self.failures += 1
        if self.failures == self.threshold:
            self.open_until = self.timer() + self.reset_after
            self.opened += 1

"""One clock for every process (the wall clock, ``time.time()``), a timeline of what the harness
did, and bounded waits for conditions.

Every process of the suite stamps its records with ``time.time()``; the listener's and Celery's log
lines carry the same clock in local time, which is how the timeline prints it too, so a fault, a
read and a log line can be put side by side.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def stamp(at: float) -> str:
    """``HH:MM:SS.mmm`` in local time, as the listener and Celery print their log lines."""
    whole = int(at)
    return time.strftime("%H:%M:%S", time.localtime(whole)) + f".{int((at - whole) * 1000):03d}"


class Timeline:
    """What the harness did and saw, in order, also written to ``path`` as it happens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def mark(self, text: str, at: float | None = None) -> float:
        at = time.time() if at is None else at
        with self._lock:
            self.entries.append((at, text))
            with self.path.open("a") as handle:
                handle.write(f"{stamp(at)} {text}\n")
        return at

    def lines(self) -> list[str]:
        with self._lock:
            return [f"{stamp(at)} {text}" for at, text in sorted(self.entries)]


class WaitTimeout(AssertionError):
    """A bounded wait ran out; the message says what was awaited."""


def wait_for(check: Callable[[], Any], within: float, what: str, every: float = 0.02, fail: bool = True) -> float:
    """Poll ``check`` until it returns something truthy; return the time it did. After ``within``
    seconds raise ``WaitTimeout`` naming ``what`` (or, with ``fail=False``, return the time)."""
    deadline = time.monotonic() + within
    while True:
        if check():
            return time.time()
        if time.monotonic() >= deadline:
            if not fail:
                return time.time()
            raise WaitTimeout(f"not within {within:.0f} s: {what}")
        time.sleep(every)


def sleep_until(at: float) -> None:
    """Sleep until the wall clock reaches ``at`` (a scheduled step of a fault, e.g. a restart)."""
    left = at - time.time()
    if left > 0:
        time.sleep(left)

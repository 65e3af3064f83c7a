"""Per-process runtime of the tasks: one event loop and one library configuration per process.

A Celery prefork child runs its tasks one after another on its main thread; keeping one
``asyncio.Runner`` per process reuses the loop (and so the Redis connections) across tasks, instead
of paying a new loop and new connections per task as ``asyncio.run`` would. The worker process has
no memory tier of its own: it reads nothing hot, and needs no eviction subscriber.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from shared_cache import CacheManager

T = TypeVar("T")
_runner: asyncio.Runner | None = None
_pid = 0


def run(coro: Coroutine[Any, Any, T]) -> T:
    global _runner, _pid
    if _runner is None or _pid != os.getpid():  # first task in this process (or after a fork)
        _runner, _pid = asyncio.Runner(), os.getpid()
        CacheManager.configure(memory_enabled=False, subscriber_enabled=True)
    return _runner.run(coro)

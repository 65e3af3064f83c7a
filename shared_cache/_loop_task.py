"""A background task owned by the event loop that started it (the eviction subscriber, the stats
publisher): stopped from that loop with :meth:`stop`, or from synchronous code with :meth:`stop_soon`."""

from __future__ import annotations

import asyncio

from .cancellation import cancel_and_wait


class LoopTask:
    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def stop(self) -> None:
        task = self.task
        if task is None or task.done() or self.loop is not asyncio.get_running_loop():
            self.stop_soon()  # nothing to wait for, or another loop's task (asyncio.run per Celery task)
            return
        self.task = None
        await cancel_and_wait([task])  # again until done: redis-py can lose a cancellation

    def stop_soon(self) -> None:
        """Cancel without waiting (from synchronous code, e.g. when the singleton is replaced)."""
        task, self.task = self.task, None
        if task is not None and not task.done() and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(task.cancel)

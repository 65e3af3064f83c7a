"""A background task owned by the event loop that started it (the eviction subscriber, the stats
publisher): stopped from that loop with :meth:`stop`, or from synchronous code with :meth:`stop_soon`."""

from __future__ import annotations

import asyncio
import contextlib


class LoopTask:
    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def stop_soon(self) -> None:
        """Cancel without waiting (from synchronous code, e.g. when the singleton is replaced)."""
        task, self.task = self.task, None
        if task is not None and not task.done() and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(task.cancel)

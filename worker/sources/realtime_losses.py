"""How the realtime source reports what it may have lost: gaps and dead letters, never raising.

A *gap* tells the listener that changes may have been lost (it answers with a conservative
invalidation of what the source covers). Gaps raised by single changes (a dead letter, an
overflowing queue) are coalesced: while one runs, any number of later ones become one more after
it, so a burst costs at most two invalidations and the last still follows every loss. Gaps raised
by a failure (a channel error, a closed channel) are sent once per failure, until the feed is seen
to flow again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from worker.sources.base import DeadLetterHandler, GapHandler

logger = logging.getLogger(__name__)


class LossReporter:
    def __init__(self, source: str, on_gap: GapHandler, on_dead_letter: DeadLetterHandler) -> None:
        self.source, self._on_gap, self._on_dead_letter = source, on_gap, on_dead_letter
        self.gaps = 0
        self.troubled = False  # a failure was signalled and the feed has not been seen to flow since
        self._again: dict[str, bool] = {}  # coalesced gap reason -> another wanted after the running one
        self._tasks: set[asyncio.Task[None]] = set()

    async def gap(self, reason: str) -> None:
        """Tell the listener events may have been lost; a failing handler must not stop the source."""
        self.gaps += 1
        logger.info("%s gap: %s", self.source, reason)
        try:
            await self._on_gap(self.source, reason)
        except Exception:
            logger.exception("gap handler failed")

    async def gap_once(self, reason: str) -> None:
        """A failure's gap, once per failure: rejoins that fail the same way are not new gaps."""
        if not self.troubled:
            self.troubled = True
            await self.gap(reason)

    def flowing(self) -> None:
        """Changes are seen to flow again: the next failure is a new one."""
        self.troubled = False

    async def coalesced_gap(self, reason: str) -> None:
        if reason in self._again:
            self._again[reason] = True
            return
        self._again[reason] = False
        try:
            while True:
                await self.gap(reason)
                if not self._again[reason]:
                    return
                self._again[reason] = False
        finally:
            del self._again[reason]

    def dead_letter(self, raw: str, reason: str, gap_reason: str) -> None:
        """Park ``raw`` with ``reason`` (in the background: called from the client's callbacks), then
        signal the gap the lost change stands for."""
        logger.warning("%s change dead-lettered: %s", self.source, reason)
        self.spawn(self._deliver(raw, reason, gap_reason))

    async def _deliver(self, raw: str, reason: str, gap_reason: str) -> None:
        try:
            await self._on_dead_letter(self.source, raw, reason)
        except Exception:
            logger.exception("dead-letter handler failed")
        await self.coalesced_gap(gap_reason)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, grace: float = 2.0) -> None:
        """Give handlers in flight a moment to finish, then cancel the rest."""
        tasks = set(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

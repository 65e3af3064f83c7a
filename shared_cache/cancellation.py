"""A cancellation that a library call lost still stops the task that was cancelled.

On Python 3.11, ``asyncio.wait_for`` returns normally when it is cancelled in the same loop iteration
as the operation it waits for completes: the cancellation is lost. redis-py wraps every command it
sends in ``wait_for`` when a socket timeout is set (redis-py 8 sets one by default), so a task
cancelled just as its command is written goes on as if nothing happened. A loop that calls redis-py
would then run forever, and whoever awaits it after cancelling it (a shutdown) waits forever.

Both ends guard against it. Every background loop that calls redis-py checks, once per round,
whether it was asked to stop (``Task.cancelling()`` counts the requests even when the
``CancelledError`` never arrived), and whoever stops a task cancels it again until it is done. A
service's own loops over redis-py can use the same two functions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` in a task that was cancelled, whether or not the error reached it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling() > 0:
        raise asyncio.CancelledError


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], within: float | None = None, every: float = 0.5
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait until they are done, cancelling again every ``every`` seconds (a
    request may have been lost, see above), for at most ``within`` seconds (None: until done).

    Returns the tasks still running after ``within``. The errors of the tasks that ended (before the
    call too) are retrieved and dropped, so that none is reported later as "never retrieved".
    """
    running = set(tasks)
    deadline = None if within is None else asyncio.get_running_loop().time() + within
    for task in running:
        task.cancel()  # a no-op on a task that is done
    while running:
        wait = every if deadline is None else min(every, deadline - asyncio.get_running_loop().time())
        if wait <= 0:
            break
        done, running = await asyncio.wait(running, timeout=wait)
        for task in done:
            if not task.cancelled():
                task.exception()
        for task in running:
            task.cancel()
    return running

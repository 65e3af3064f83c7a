"""A cancelled background task stops, even when redis-py lost the cancellation.

On Python 3.11 redis-py sends each command through ``asyncio.wait_for``, which returns normally when
it is cancelled as the write completes: the task never sees the ``CancelledError``. A listener's
Redis watch once went on after its shutdown that way and held the process's event loop open for
good. Here the real loops run against a real Redis and are cancelled once, at random moments,
hundreds of times: every cancellation must end the task.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from shared_cache import CacheManager
from shared_cache.cancellation import cancel_and_wait
from tasks.settings import TaskSettings
from worker.app import make_app
from worker.listener import Listener
from worker.rules import DEFAULT_RULES, Planner
from worker.settings import ListenerSettings

ROUNDS = 300


async def rounds_left_running(run: Callable[[], Coroutine[Any, Any, None]], rounds: int = ROUNDS) -> list[int]:
    """Start ``run`` in a task, cancel it once at a random moment of its first milliseconds, and
    note the rounds where it was still running a second later (the first three: enough to fail)."""
    rng = random.Random(11)
    stuck: list[int] = []
    for round_ in range(rounds):
        task = asyncio.create_task(run())
        await asyncio.sleep(rng.uniform(0.0, 0.004))
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1.0)
        if not done:
            stuck.append(round_)
            await cancel_and_wait([task])
            if len(stuck) == 3:
                break
    return stuck


@pytest.fixture
async def listener(redis_url: str) -> AsyncIterator[Listener]:
    cache = CacheManager.configure(redis_url=redis_url, key_prefix="cancel:", memory_enabled=False)
    tasks = TaskSettings(broker_url=redis_url)
    listener = Listener(ListenerSettings(), Planner(DEFAULT_RULES), make_app(tasks), cache, redis_url, tasks)
    yield listener
    await listener.close()
    await cache.close()


async def test_the_listeners_redis_watch_stops_at_whatever_moment_it_is_cancelled(listener: Listener) -> None:
    # INFO every half millisecond: most cancellations land while a command is being sent.
    assert await rounds_left_running(lambda: listener.watch_redis(every=0.0005)) == []


async def test_cancel_and_wait_ends_a_task_whose_first_cancellation_was_lost() -> None:
    lost = asyncio.Event()

    async def loses_one_cancellation() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            lost.set()  # what wait_for does to it: as if nothing had happened
        await asyncio.sleep(30)

    task = asyncio.create_task(loses_one_cancellation())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], within=5.0, every=0.05) == set()
    assert lost.is_set() and task.cancelled()


async def test_cancel_and_wait_gives_up_after_within_and_names_what_still_runs() -> None:
    released = asyncio.Event()

    async def stops_only_when_released() -> None:
        while not released.is_set():
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                pass

    async def fails() -> None:
        raise ValueError("an error nobody else reads")

    stubborn, failed = asyncio.create_task(stops_only_when_released()), asyncio.create_task(fails())
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await cancel_and_wait([stubborn, failed], within=0.3, every=0.05) == {stubborn}
    assert 0.25 <= loop.time() - started < 2.0
    assert failed.done() and not stubborn.done()
    released.set()
    assert await cancel_and_wait([stubborn], within=5.0) == set()

"""Dead-letter replay: take the oldest entries, plan them with the current rules, send the tasks
coalesced as the listener does, and put back whatever still fails (or could not be sent).

Nothing taken is lost: an entry leaves the list only once its tasks went to the broker; one that
fails again goes back with the new reason; an interruption (Ctrl-C, Redis gone mid-way) puts back
everything taken and not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from pydantic import ValidationError

from shared_cache import CacheManager
from tasks.settings import TaskSettings
from worker.coalesce import Window
from worker.dispatch import dispatch_window
from worker.events import ChangeEvent
from worker.rules import Planner

from .errors import CliFailure, describe, first_error
from .letters import Entry, decode_entry, key_problem
from .state import State


def send_window(celery: Any, window: Window, settings: TaskSettings) -> dict[str, int]:
    """Send the window's tasks through the listener's dispatch: one invalidation per tenant, warming
    calls if warming is on. They carry no commit time, so replayed changes do not skew the
    commit-to-evict latency, and their reason says they are replayed. Returns how many tasks went
    to each queue (it runs on a thread: Celery's publishing blocks)."""
    return dispatch_window(celery, window, settings, reason_prefix="replay: ")


def plan_entry(entry: Entry, planner: Planner, window: Window) -> str | None:
    """Add the entry's actions to ``window``; or the reason it still fails."""
    raw = entry.get("raw")
    if not isinstance(raw, str) or not raw:
        return "replay: the entry has no raw input"
    try:
        event = ChangeEvent.model_validate_json(raw)
    except ValidationError as exc:
        return f"replay: not a ChangeEvent: {first_error(exc)}"
    try:
        window.add(planner.plan(event))  # no commit time: see send_window
    except ValueError as exc:  # PlanError, or an id the cache refuses
        return f"replay: {exc}"
    return None


async def replay(state: State, manager: CacheManager, planner: Planner, celery: Any, count: int) -> dict[str, Any]:
    """Replay at most ``count`` of the oldest dead letters (see the module's docstring)."""
    settings = state.listener
    key, client = settings.dead_letter_key, manager.redis.client()
    problem = await key_problem(manager, key)
    if problem:
        raise CliFailure(problem)
    # Entries that fail again are pushed back at the newest end: taking at most what is there now
    # never takes them twice in one run.
    waiting = int(await client.llen(key))
    window = Window()
    taken: list[Entry] = []
    planned: list[Entry] = []
    failed: list[tuple[Entry, str]] = []
    sent, sent_ok, error = {"invalidation": 0, "warming": 0}, False, ""
    try:
        for _ in range(min(count, waiting)):
            raw = await client.rpop(key)
            if not isinstance(raw, (bytes, str)):  # (None: emptied meanwhile)
                break
            entry = decode_entry(raw)
            taken.append(entry)
            reason = plan_entry(entry, planner, window)
            if reason is None:
                planned.append(entry)
            else:
                failed.append((entry, reason))
        if window:
            # The tenants go where the listener leaves them (for its conservative invalidations).
            await client.sadd(manager.keys.worker_tenants, *{*window.invalidations, *window.texts})
            try:
                sent = await asyncio.to_thread(send_window, celery, window, state.tasks)
                sent_ok = True
            except Exception as exc:  # the broker is away: nothing taken may be lost
                error = state.scrub(f"broker {state.broker_display}: {describe(exc)}")
                failed += [(entry, f"replay: tasks not sent: {error}") for entry in planned]
                planned = []
        await park_again(client, key, settings.dead_letter_max, failed)
    except BaseException:
        reasons = {id(entry): reason for entry, reason in failed}
        delivered = {id(entry) for entry in planned} if sent_ok else set()
        back = [(e, reasons.get(id(e), str(e.get("reason", "")))) for e in taken if id(e) not in delivered]
        with contextlib.suppress(Exception):
            await park_again(client, key, settings.dead_letter_max, back)
        raise
    return {
        "replayed": len(planned),
        "failed": len(failed),
        "tasks": sent,
        "reasons": [reason for _, reason in failed],
        "error": error,
    }


async def park_again(client: Any, key: str, max_entries: int, items: list[tuple[Entry, str]]) -> None:
    """Push entries back with their new reason. Not ``DeadLetters.park``: that also counts a new
    dead letter for the source, and these are the same events again."""
    if not items:
        return
    now = time.time()
    async with client.pipeline(transaction=True) as pipe:
        for entry, reason in items:
            again = {
                **{k: v for k, v in entry.items() if k != "unreadable"},
                "reason": reason,
                "at": now,
                "first_at": entry.get("first_at", entry.get("at")),
                "replays": _replays(entry) + 1,
            }
            pipe.lpush(key, orjson.dumps(again))
        pipe.ltrim(key, 0, max_entries - 1)
        await pipe.execute()


def _replays(entry: Entry) -> int:
    try:
        return max(0, int(entry.get("replays", 0) or 0))
    except (TypeError, ValueError):
        return 0

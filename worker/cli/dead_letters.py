"""``dead-letters list`` and ``dead-letters replay``: the events the listener could not parse or plan."""

from __future__ import annotations

import sys
from typing import Any

import click
from pydantic import ValidationError

from shared_cache import CacheManager

from .errors import BadInput, CliFailure, first_error
from .letters import decode_entry, key_problem, parked_counts
from .render import clip, parked, table, when
from .replay import replay
from .state import State


@click.group(name="dead-letters")
def dead_letters() -> None:
    """Events the listener could not parse or plan, parked with the reason (SHARED_CACHE_WORKER_DEAD_LETTER_KEY)."""


@dead_letters.command(name="list")
@click.option("--count", "most", default=20, show_default=True, type=click.IntRange(min=1), help="Most entries shown.")
@click.pass_obj
def list_(state: State, most: int) -> None:
    """The newest dead letters first, with how many are waiting and how many each source parked."""
    key = state.listener.dead_letter_key

    async def work(manager: CacheManager) -> dict[str, Any]:
        problem = await key_problem(manager, key)
        if problem:
            raise CliFailure(problem)
        client = manager.redis.client()
        waiting = int(await client.llen(key))
        entries = [decode_entry(raw) for raw in await client.lrange(key, 0, most - 1)]
        return {"key": key, "waiting": waiting, "parked": await parked_counts(manager, key), "entries": entries}

    data = state.run(work)

    def render() -> str:
        head = f"{data['waiting']} dead letters waiting in {key}" + parked(data["parked"])
        rows = [
            [when(e.get("at")), clip(e.get("source", "?"), 12), clip(e.get("reason"), 70), clip(e.get("raw"), 60)]
            for e in data["entries"]
        ]
        return "\n".join([head, *(table(["PARKED", "SOURCE", "REASON", "RAW"], rows) if rows else [])])

    state.emit(data, render)


@dead_letters.command(name="replay")
@click.option(
    "--count", "most", default=100, show_default=True, type=click.IntRange(min=1), help="Most entries replayed."
)
@click.pass_obj
def replay_(state: State, most: int) -> None:
    """Take the oldest dead letters, parse each raw input as a ChangeEvent, plan it with the current
    rules (SHARED_CACHE_WORKER_RULES_FILE) and send the tasks, coalesced as the listener does.
    Entries that still fail go back to the list with the new reason; if the broker cannot take the
    tasks, every entry taken goes back. Replayed invalidations carry no commit time, so they do not
    skew the commit-to-evict latency. Exit code 1 only if the tasks could not be sent."""
    from worker.rules import Planner, load_rules

    rules_file = state.listener.rules_file
    try:
        planner = Planner(load_rules(rules_file))
    except ValidationError as exc:
        raise BadInput(f"rules file {rules_file}: {first_error(exc)}") from None
    except (OSError, ValueError) as exc:  # missing, unreadable, not TOML, not rules
        raise BadInput(f"rules file {rules_file}: {exc}") from None
    state.cache  # noqa: B018 (settings errors first, as usage errors)
    celery = state.celery()
    try:
        result = state.run(lambda manager: replay(state, manager, planner, celery, most))
    finally:
        celery.close()
    state.emit(
        result,
        f"replayed {result['replayed']}, still failing {result['failed']} (parked again); tasks sent: "
        f"{result['tasks']['invalidation']} invalidation, {result['tasks']['warming']} warming"
        + (f"; not sent: {result['error']}" if result.get("error") else ""),
    )
    if result.get("error"):
        sys.exit(1)

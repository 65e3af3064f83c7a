"""``get`` and ``ttl``: what a read of one resource would get from Redis, and how long it stays."""

from __future__ import annotations

import sys
from typing import Any

import click

from shared_cache import CacheManager, CorruptEntryError, deserialize_from_cache

from .errors import CliFailure
from .group import identity_options
from .render import dumps
from .state import State


@click.command()
@click.argument("data_type")
@click.argument("resource_id")
@identity_options
@click.pass_obj
def get(
    state: State,
    data_type: str,
    resource_id: str,
    tenant: str,
    agent: str | None,
    conversation: str | None,
    collection: str | None,
) -> None:
    """The value a read of DATA_TYPE RESOURCE_ID would get from Redis, and the hierarchy level it
    comes from (this command has no memory tier: the tier is always redis). Exit code 1 if nothing
    valid is cached."""

    async def work(manager: CacheManager) -> dict[str, Any]:
        plan = manager.plan(data_type, tenant, resource_id, agent, conversation, collection)
        found = await manager.lookup(plan)
        if not found.level:
            return {"found": False, "key": plan.entry_keys[0]}
        i = found.level - 1
        key = plan.entry_keys[i]
        pttl = int(await manager.redis.call("PTTL", key))
        try:
            value = deserialize_from_cache(found.payload, data_type)
        except CorruptEntryError as exc:
            raise CliFailure(f"the entry at {key} does not decode: {exc}") from None
        return {
            "found": True,
            "tier": "redis",
            "level": plan.level_names[i],
            "key": key,
            "ttl": -1 if pttl == -1 else max(0, round(pttl / 1000)),
            "negative": found.payload == b"n",  # a cached "not found"
            "value": value,
        }

    result = state.run(work)
    if not result["found"]:
        state.emit(result, f"no valid entry (most specific key {result['key']})")
        sys.exit(1)

    def text() -> str:
        ttl = "no expiry" if result["ttl"] == -1 else f"{result['ttl']} s left"
        kind = " (a cached 'not found')" if result["negative"] else ""
        head = f"from redis, level {result['level']}, key {result['key']}, {ttl}{kind}"
        return head + "\n" + dumps(result["value"])

    state.emit(result, text)


@click.command()
@click.argument("data_type")
@click.argument("resource_id")
@identity_options
@click.pass_obj
def ttl(
    state: State,
    data_type: str,
    resource_id: str,
    tenant: str,
    agent: str | None,
    conversation: str | None,
    collection: str | None,
) -> None:
    """Seconds left of the entry a read would serve (-1: no expiry; -2: no valid entry, exit code 1)."""

    async def work(manager: CacheManager) -> int:
        return int(await manager.ttl(data_type, resource_id, tenant, agent, conversation, collection))

    seconds = state.run(work)
    meaning = {-1: "no expiry", -2: "no valid entry"}.get(seconds, f"{seconds} s left")
    state.emit({"ttl": seconds, "meaning": meaning}, f"{seconds} ({meaning})")
    if seconds == -2:
        sys.exit(1)

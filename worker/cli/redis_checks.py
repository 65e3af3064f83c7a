"""Doctor's Redis checks, one function each: the server, its memory policy, eviction subscribers,
the listener's report, dead letters waiting."""

from __future__ import annotations

import time
from typing import Any

from shared_cache import CacheManager

from .checks import Check
from .letters import key_problem
from .render import size
from .values import integer, json_object, number, text


async def check_redis(manager: CacheManager, shown_url: str) -> Check:
    """The server answers; its version. Raises what the client raises if it does not."""
    await manager.redis.call("PING")
    server = await manager.redis.client().info("server")
    return Check("OK", "redis", f"{shown_url} answers (Redis {text(server.get('redis_version'))})")


async def check_memory_policy(client: Any) -> Check:
    """A policy that may evict keys without a TTL can evict generation counters, which have none."""
    memory = await client.info("memory")
    policy, maxmemory = text(memory.get("maxmemory_policy")), integer(memory.get("maxmemory"))
    if policy.startswith("allkeys-"):
        return Check(
            "WARN",
            "redis memory policy",
            f"{policy} may evict keys without a TTL, and generation counters have none: an evicted counter"
            " can make invalidated entries valid again. Use volatile-lru, volatile-ttl or noeviction.",
        )
    limit = size(maxmemory) if maxmemory else "no maxmemory"
    return Check("OK", "redis memory policy", f"{policy} ({limit}): keys without a TTL are never evicted")


async def check_eviction_subscribers(client: Any, channel: str) -> Check:
    """How many processes listen for evictions (each one running a memory tier should)."""
    ((_, subscribers),) = await client.pubsub_numsub(channel)
    if subscribers:
        return Check("OK", "eviction subscribers", f"{subscribers} listening on {channel}")
    return Check(
        "WARN", "eviction subscribers", f"no process listens on {channel}: fine if no service runs a memory tier now"
    )


async def check_listener_report(manager: CacheManager) -> Check:
    """The listener left its report within the last minute."""
    report = json_object(await manager.redis.client().get(manager.keys.worker_stats))
    if report is None:
        return Check("WARN", "listener", "no report in the last minute: is `python -m worker` running?")
    age = time.time() - number(report.get("at"))
    counters = report.get("stats")
    events = integer(counters.get("events")) if isinstance(counters, dict) else 0
    return Check("OK", "listener", f"reported {age:.0f} s ago, {events} events")


async def check_dead_letters(manager: CacheManager, key: str) -> Check:
    """None waiting, or how many (a WARN); a FAIL if the key is not a list of dead letters."""
    problem = await key_problem(manager, key)
    if problem:
        return Check("FAIL", "dead letters", problem)
    dead = integer(await manager.redis.client().llen(key))
    if dead:
        return Check("WARN", "dead letters", f"{dead} waiting: `shared-cache dead-letters list`, then `... replay`")
    return Check("OK", "dead letters", "none waiting")


async def redis_checks_after_ping(manager: CacheManager, dead_letter_key: str) -> list[Check]:
    """The Redis checks that follow ``check_redis``, in order."""
    client = manager.redis.client()
    return [
        await check_memory_policy(client),
        await check_eviction_subscribers(client, manager.settings.eviction_channel),
        await check_listener_report(manager),
        await check_dead_letters(manager, dead_letter_key),
    ]

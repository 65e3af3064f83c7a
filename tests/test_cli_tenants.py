"""Reads per tenant in ``shared-cache stats``: the busiest tenants of each process's stats report,
added up over processes, from reports left in the session's Redis the way the library leaves them
(``SET <Keyspace.stats(origin)> <JSON> EX 60``)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis

from shared_cache import CacheManager, get_with_cache_aside
from tests.cli_harness import as_json, cli_env, run


@pytest.fixture
def env(manager: CacheManager, redis_url: str) -> dict[str, str]:
    return cli_env(manager, redis_url)


def leave_report(client: redis.Redis, manager: CacheManager, origin: str, report: dict[str, Any]) -> None:
    client.set(manager.keys.stats(origin), orjson.dumps({"origin": origin, **report}), ex=60)


def tenant(hits: int, misses: int, p99_ms: float) -> dict[str, Any]:
    return {"hits": hits, "misses": misses, "hit_ratio": hits / (hits + misses), "p99_ms": p99_ms}


def reads_table(text: str) -> list[list[str]]:
    """The rows of the "Reads per tenant" table, split on whitespace."""
    section = text.split("Reads per tenant", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in section.splitlines()[1:]:
        if line.strip().startswith("("):  # the notes under the table
            break
        rows.append(line.split())
    return rows


async def test_tenants_add_up_over_processes_busiest_first(
    manager: CacheManager, env: dict[str, str], sync_redis: redis.Redis
) -> None:
    # A real process's report (the figures it holds, as it publishes them), plus its busiest tenants.
    await get_with_cache_aside("document", "d1", "acme", lambda r, t, c: {"id": r})
    report = manager.stats_report()
    report["tenants"] = {"acme": tenant(10, 2, 1.5), "beta": tenant(1, 1, 0.3)}
    leave_report(sync_redis, manager, manager.origin, report)
    leave_report(sync_redis, manager, "p2", {"tenants": {"acme": tenant(5, 3, 4.0), "gamma": tenant(100, 0, 0.2)}})
    leave_report(sync_redis, manager, "p3", {"hits": 7, "misses": 1})  # a library that reports no tenants

    data = as_json(await run(env, "--json", "stats", "--max-scan", "0"))
    cache = data["cache"]
    assert cache["processes"] == 3 and cache["tenants_reported"] == 3
    assert cache["by_tenant"] == [
        {"tenant": "gamma", "hits": 100, "misses": 0, "hit_ratio": 1.0, "p99_ms": 0.2, "processes": 1},
        {"tenant": "acme", "hits": 15, "misses": 5, "hit_ratio": 0.75, "p99_ms": 4.0, "processes": 2},
        {"tenant": "beta", "hits": 1, "misses": 1, "hit_ratio": 0.5, "p99_ms": 0.3, "processes": 1},
    ]

    text = (await run(env, "stats", "--max-scan", "0")).stdout
    assert "Reads per tenant (busiest first)" in text
    assert reads_table(text) == [
        ["TENANT", "HITS", "MISSES", "HIT", "RATIO", "P99", "MS", "PROCESSES"],
        ["gamma", "100", "0", "100.0%", "0.200", "1"],
        ["acme", "15", "5", "75.0%", "4.00", "2"],
        ["beta", "1", "1", "50.0%", "0.300", "1"],
    ]
    assert "p99: the highest of those processes' p99s" in text


async def test_max_tenants_bounds_reads_and_key_counts(
    manager: CacheManager, env: dict[str, str], sync_redis: redis.Redis
) -> None:
    reads = {f"t{i}": tenant(10 * i, 1, 1.0) for i in range(1, 6)}  # t5 the busiest
    leave_report(sync_redis, manager, "p1", {"tenants": reads})
    await manager.set("document", "d1", "v", "t5")
    await manager.set("document", "d2", "v", "t5")
    sync_redis.sadd(manager.keys.worker_tenants, "known1")  # a tenant the listener has seen

    data = as_json(await run(env, "--json", "stats", "--max-tenants", "2"))
    assert [t["tenant"] for t in data["cache"]["by_tenant"]] == ["t5", "t4"]
    assert data["cache"]["tenants_reported"] == 5
    # The key counts follow: the busiest tenants first, up to the same bound.
    assert [(t["tenant"], t["entries"]) for t in data["tenants"]["rows"]] == [("t5", 2), ("t4", 0)]
    text = (await run(env, "stats", "--max-tenants", "2")).stdout
    assert "Reads per tenant (the 2 busiest of 5, busiest first)" in text

    everyone = as_json(await run(env, "--json", "stats", "--max-tenants", "10"))
    assert [t["tenant"] for t in everyone["tenants"]["rows"]] == ["t5", "t4", "t3", "t2", "t1", "known1"]


async def test_tenant_option_shows_only_those_tenants(
    manager: CacheManager, env: dict[str, str], sync_redis: redis.Redis
) -> None:
    leave_report(sync_redis, manager, "p1", {"tenants": {"acme": tenant(3, 1, 2.0), "beta": tenant(50, 50, 9.0)}})
    data = as_json(await run(env, "--json", "stats", "--tenant", "acme", "--tenant", "nobody"))
    assert [t["tenant"] for t in data["cache"]["by_tenant"]] == ["acme"]  # nobody has no reads: no row
    assert [t["tenant"] for t in data["tenants"]["rows"]] == ["acme", "nobody"]


async def test_reports_without_tenants_show_nothing_per_tenant(
    manager: CacheManager, env: dict[str, str], sync_redis: redis.Redis
) -> None:
    await get_with_cache_aside("document", "d1", "acme", lambda r, t, c: {"id": r})
    report = manager.stats_report()
    report.pop("tenants", None)
    leave_report(sync_redis, manager, manager.origin, report)

    data = as_json(await run(env, "--json", "stats", "--max-scan", "0"))
    assert data["cache"]["processes"] == 1 and data["cache"]["misses"] == 1
    assert data["cache"]["by_tenant"] == [] and data["cache"]["tenants_reported"] == 0
    text = (await run(env, "stats", "--max-scan", "0")).stdout
    assert "Reads per tenant: none reported in the last minute" in text


async def test_malformed_tenant_rows_are_left_out_not_fatal(
    manager: CacheManager, env: dict[str, str], sync_redis: redis.Redis
) -> None:
    leave_report(sync_redis, manager, "p1", {"tenants": ["acme"]})  # not an object
    leave_report(
        sync_redis,
        manager,
        "p2",
        {
            "tenants": {
                "bad:tenant": tenant(1000, 0, 1.0),  # not a tenant id the library accepts
                "acme": "hits",  # not an object
                "beta": {"hits": "12", "misses": None, "p99_ms": "slow"},  # wrong types count as 0
                "gamma": {"hits": -5, "misses": 2, "p99_ms": 1.0},  # a negative count is 0
            },
            "by_type": {"document": {"hits": [1], "misses": "x", "latency_ms": {"redis": "fast"}}},
            "memory": {"entries": "many"},
            "subscriber": {"events": 3, "propagation_ms": "x"},
        },
    )
    sync_redis.set(manager.keys.stats("p3"), b"\xff not json", ex=60)

    result = await run(env, "stats", "--max-scan", "0")
    assert result.exit_code == 0, result.output
    assert reads_table(result.stdout)[1:] == [
        ["beta", "12", "0", "100.0%", "0.000", "1"],
        ["gamma", "0", "2", "0.0%", "1.00", "1"],
    ]
    data = as_json(await run(env, "--json", "stats", "--max-scan", "0"))
    assert data["cache"]["unreadable_reports"] == 1 and data["cache"]["processes"] == 2

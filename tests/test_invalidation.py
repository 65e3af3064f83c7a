"""Invalidation at every scope: O(1) generation bumps, reclaiming, hostile ids (real Redis)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared_cache import TTL_PERMANENT, CacheManager, get_with_cache_aside, invalidate_document_update
from tests.conftest import Monitor


def value_of(v: Any) -> Any:
    return lambda r, t, c: v


async def read(data_type: str, rid: str, tenant: str = "t", **ctx: Any) -> tuple[Any, str]:
    """(value, "old") if the value cached by fill() is still served, else (value, "new")."""
    value, _ = await get_with_cache_aside(data_type, rid, tenant, value_of({"new": rid}), **ctx)
    return value, next(iter(value))


async def fill(data_type: str, rid: str, tenant: str = "t", **ctx: Any) -> None:
    await get_with_cache_aside(data_type, rid, tenant, value_of({"old": rid}), **ctx)


async def test_resource_in_every_context_and_nothing_else(manager: CacheManager) -> None:
    await fill("document", "d1")
    await fill("document", "d1", agent_id="a", collection_id="c")
    await fill("document", "d2")
    await manager.invalidate("t", "document", "d1")
    assert (await read("document", "d1"))[1] == "new"
    assert (await read("document", "d1", agent_id="a", collection_id="c"))[1] == "new"
    assert (await read("document", "d2"))[1] == "old"


async def test_wildcard_is_the_whole_type_of_one_tenant(manager: CacheManager) -> None:
    for rid in ("d1", "d2"):
        await fill("document", rid)
    await fill("agent_config", "a1")
    await fill("document", "d1", tenant="other")
    await manager.invalidate("t", "document", "*")
    assert [(await read("document", r))[1] for r in ("d1", "d2")] == ["new", "new"]
    assert (await read("agent_config", "a1"))[1] == "old"
    assert (await read("document", "d1", tenant="other"))[1] == "old"


async def test_document_update_is_coordinated(manager: CacheManager) -> None:
    await fill("document", "doc_123")
    await fill("embedding", "doc_123")
    await fill("vector_store", "coll_456")
    await fill("query_result", "q1", collection_id="coll_456")
    await fill("retrieval_cache", "r1", collection_id="coll_456")
    await fill("query_result", "q1", collection_id="coll_other")
    await fill("document", "doc_other")
    await invalidate_document_update(tenant_id="t", document_id="doc_123", collection_id="coll_456")
    for data_type, rid, ctx in (
        ("document", "doc_123", {}),
        ("embedding", "doc_123", {}),
        ("vector_store", "coll_456", {}),
        ("query_result", "q1", {"collection_id": "coll_456"}),
        ("retrieval_cache", "r1", {"collection_id": "coll_456"}),
    ):
        assert (await read(data_type, rid, **ctx))[1] == "new", data_type
    assert (await read("query_result", "q1", collection_id="coll_other"))[1] == "old"
    assert (await read("document", "doc_other"))[1] == "old"


async def test_agent_collection_conversation_and_tenant_scopes(manager: CacheManager) -> None:
    await fill("agent_response", "x", agent_id="a1")
    await fill("agent_response", "x", agent_id="a2")
    await manager.invalidate_agent_complete("t", "a1")
    assert (await read("agent_response", "x", agent_id="a1"))[1] == "new"
    assert (await read("agent_response", "x", agent_id="a2"))[1] == "old"

    await fill("retrieval_cache", "r", collection_id="c1")
    await manager.invalidate_collection_complete("t", "c1")
    assert (await read("retrieval_cache", "r", collection_id="c1"))[1] == "new"

    await fill("agent_response", "m", agent_id="a2", conversation_id="conv1")
    await manager.invalidate_conversation_complete("t", "conv1")
    assert (await read("agent_response", "m", agent_id="a2", conversation_id="conv1"))[1] == "new"

    await fill("document", "d")
    await fill("document", "d", tenant="u")
    await manager.invalidate_tenant("t")
    assert (await read("agent_response", "x", agent_id="a2"))[1] == "new"
    assert (await read("document", "d"))[1] == "new"
    assert (await read("document", "d", tenant="u"))[1] == "old"


async def test_one_round_trip_whatever_the_scope_covers(
    manager: CacheManager, sync_redis: redis.Redis, redis_url: str
) -> None:
    await manager.invalidate("warm", "document", "*")  # loads the script once
    prefix = f"{manager.prefix}{{big}}:document:"
    sync_redis.execute_command("DEBUG", "POPULATE", 20_000, prefix)
    with Monitor(redis_url) as seen:
        await manager.invalidate("big", "document", "*")
    assert seen.commands == ["EVALSHA"]
    assert sync_redis.dbsize() >= 20_000  # nothing was scanned or deleted


async def test_permanent_entries_do_not_leak(manager: CacheManager, sync_redis: redis.Redis) -> None:
    async def fill_and_reclaim(tenant: str) -> int:
        """Fill the tenant with 3,000 entries without expiry, invalidate them all, reclaim them;
        returns Redis's used memory once they are filled."""
        for i in range(3000):
            await get_with_cache_aside(
                "semantic_index", f"s{i}", tenant, value_of({"i": i, "pad": "x" * 200}), ttl=TTL_PERMANENT
            )
        filled = int(sync_redis.info("memory")["used_memory"])
        await manager.invalidate(tenant, "semantic_index", "*")
        assert await manager.reclaim_permanent(tenant, batch=200) == 3000
        assert not sync_redis.keys(f"{manager.prefix}{{{tenant}}}:semantic_index:*")
        assert sync_redis.scard(manager.keys.permanent(tenant)) == 0
        return filled

    # A server's first scripts, leases and publishes grow a few of its own tables once (up to
    # ~400 KB on a fresh server, then never again): a first round makes the baseline a warm server.
    await fill_and_reclaim("perm-warm-up")
    sync_redis.execute_command("MEMORY", "PURGE")
    baseline = int(sync_redis.info("memory")["used_memory"])
    filled = await fill_and_reclaim("perm")
    assert filled - baseline > 600_000
    after = int(sync_redis.info("memory")["used_memory"])
    assert after - baseline < (filled - baseline) * 0.1
    # still-valid permanent entries are kept
    await get_with_cache_aside("semantic_index", "keep", "perm", value_of({"old": 1}), ttl=TTL_PERMANENT)
    assert await manager.reclaim_permanent("perm") == 0
    assert (await read("semantic_index", "keep", tenant="perm"))[1] == "old"


hostile = st.sampled_from(["doc*", "a:*", "*:*", "c:1", "c*", "", "}{", "\n", "x" * 300, "d1:", ":d1", "é*"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(resource=hostile, collection=hostile, tenant=st.sampled_from(["", "other", "t:*", "*", "T"]))
async def test_hostile_invalidations_touch_nothing_else(
    manager: CacheManager, resource: str, collection: str, tenant: str
) -> None:
    await fill("document", "d1")
    await fill("document", "d1", collection_id="c1")
    await fill("document", "d1", tenant="victim")
    for call in (
        lambda: manager.invalidate("t", "document", resource),
        lambda: manager.invalidate_collection_complete("t", collection),
        lambda: invalidate_document_update("t", resource, collection),
        lambda: manager.invalidate(tenant, "document", "*"),
        lambda: manager.invalidate_tenant(tenant),
    ):
        try:
            await call()
        except ValueError:
            pass  # refused with a clear error: fine
    assert (await read("document", "d1"))[1] == "old"
    assert (await read("document", "d1", collection_id="c1"))[1] == "old"
    assert (await read("document", "d1", tenant="victim"))[1] == "old"


async def test_a_receipt_is_written_by_the_invalidation_itself(manager: CacheManager, sync_redis: redis.Redis) -> None:
    await fill("document", "d1", tenant="t1")
    scopes = [("t1", "res", "document", "d1")]
    assert await manager.applied_receipts([("t1", "w1:0")]) == frozenset()
    await manager.invalidate_scopes("t1", scopes, "test", receipt="w1:0")
    await manager.invalidate_scopes("t2", [("t2",)], "test")  # no receipt asked: none written
    assert (await read("document", "d1", tenant="t1"))[1] == "new"
    asked = [("t1", "w1:0"), ("t1", "w1:1"), ("t2", "w1:0")]
    assert await manager.applied_receipts(asked) == frozenset({("t1", "w1:0")})
    key = manager.keys.receipt("t1", "w1:0")
    assert 0 < sync_redis.pttl(key) <= 600_000
    await manager.forget_receipts([("t1", "w1:0")])
    assert await manager.applied_receipts(asked) == frozenset()
    for bad in ("", "a b", "x" * 129, "{t2}"):
        with pytest.raises(ValueError, match="invalid receipt"):
            await manager.invalidate_scopes("t1", scopes, "test", receipt=bad)

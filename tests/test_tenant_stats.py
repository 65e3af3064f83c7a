"""Per-tenant figures, bounded: which tenant is cold, which one is thrashing."""

from __future__ import annotations

import pytest

from shared_cache import CacheManager, get_cache_stats, get_with_cache_aside
from shared_cache._metrics import TenantStats


async def test_busiest_tenants_with_hits_misses_ratio_and_p99(manager: CacheManager) -> None:
    for i in range(4):  # hot: 1 miss, then 19 memory hits
        for _ in range(5):
            await get_with_cache_aside("document", f"d{i}", "hot", lambda r, t, c: {"v": 1})
    for i in range(3):  # cold: every read a miss
        await get_with_cache_aside("document", f"d{i}", "cold", lambda r, t, c: None)
    tenants = get_cache_stats()["tenants"]
    assert list(tenants) == ["hot", "cold"]  # busiest first
    assert (tenants["hot"]["hits"], tenants["hot"]["misses"]) == (16, 4)
    assert tenants["hot"]["hit_ratio"] == pytest.approx(0.8)
    assert (tenants["cold"]["hits"], tenants["cold"]["misses"], tenants["cold"]["hit_ratio"]) == (0, 3, 0.0)
    assert tenants["cold"]["p99_ms"] > 0
    report = manager.stats_report()
    assert report["tenants"] == get_cache_stats()["tenants"]


async def test_memory_hits_counted_exactly_and_sampled_into_type_and_tenant_figures(manager: CacheManager) -> None:
    await get_with_cache_aside("document", "d", "quiet", lambda r, t, c: {"v": 1})  # the miss
    manager.stats.reset()  # from here on only memory-tier hits
    for hits in (1, 15, 16, 17, 40):
        while get_cache_stats()["hits"] < hits:
            await get_with_cache_aside("document", "d", "quiet", lambda r, t, c: {"v": 2})
        snap = get_cache_stats()
        assert snap["hits"] == hits and snap["misses"] == 0
        assert snap["by_type"]["document"]["hits"] == {"memory": hits}  # type: ignore[index]
        assert snap["tenants"]["quiet"]["hits"] == hits  # type: ignore[index]
        memory_latency = snap["by_type"]["document"]["latency_ms"].get("memory")  # type: ignore[index]
        if hits < 16:  # one hit in sixteen is timed into the percentiles
            assert memory_latency is None and snap["tenants"]["quiet"]["p99_ms"] == 0.0  # type: ignore[index]
        else:
            assert 0 < memory_latency["p50"] <= memory_latency["p99"] < 50
            assert 0 < snap["tenants"]["quiet"]["p99_ms"] < 50  # type: ignore[index]
    manager.stats.reset()
    assert get_cache_stats()["hits"] == 0 and get_cache_stats()["tenants"] == {}


def test_the_number_of_tenants_tracked_is_bounded() -> None:
    stats = TenantStats(capacity=100)
    for i in range(10_000):
        counts = stats.track(f"t{i}")
        counts[1] += 1
    for _ in range(50):
        stats.track("busy")[0] += 1
    assert len(stats.by_tenant) <= 100
    assert next(iter(stats.top(3))) == "busy"


async def test_prometheus_per_tenant_series_only_when_asked(redis_url: str) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from shared_cache import register_metrics

    for enabled in (False, True):
        manager = CacheManager.configure(
            redis_url=redis_url, key_prefix=f"tstats{enabled}:", prometheus_tenant_metrics=enabled
        )
        registry = CollectorRegistry()
        register_metrics(manager, registry)
        await get_with_cache_aside("document", "d", "acme", lambda r, t, c: {"v": 1})
        await get_with_cache_aside("document", "d", "acme", lambda r, t, c: {"v": 1})
        text = generate_latest(registry).decode()
        assert ('shared_cache_tenant_hits_total{tenant="acme"} 1.0' in text) is enabled
        assert ('shared_cache_tenant_misses_total{tenant="acme"} 1.0' in text) is enabled
        await manager.close()
    CacheManager._instance = None

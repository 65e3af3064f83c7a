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

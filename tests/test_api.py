"""The public API: names, static-style methods, counters, typed helpers, context, import cost."""

from __future__ import annotations

import subprocess
import sys

import pytest

import shared_cache
from shared_cache import CacheManager, CacheSettings, Context, InvalidKeyError, get_with_cache_aside, with_context


def test_all_is_exactly_the_public_names() -> None:
    submodules = {"errors", "cancellation"}  # public modules, imported by name (shared_cache.errors...)
    public = {name for name in vars(shared_cache) if not name.startswith("_")} - {"annotations", *submodules}
    assert set(shared_cache.__all__) - {"__version__"} == public


def test_seed_names_are_exported() -> None:
    for name in (
        "CacheManager",
        "get_with_cache_aside",
        "serialize_for_cache",
        "deserialize_from_cache",
        "TTL_STANDARD",
        "TTL_SHORT",
        "TTL_EXTENDED",
        "TTL_PERMANENT",
        "invalidate_document_update",
        "get_embeddings_batch_with_cache",
        "METRIC_CACHE_HIT",
        "METRIC_CACHE_MISS",
        "METRIC_LATENCY",
        "METRIC_CACHE_SIZE",
        "track_cache_metrics",
        "Context",
        "with_context",
    ):
        assert name in shared_cache.__all__, name
    assert (
        shared_cache.TTL_SHORT,
        shared_cache.TTL_STANDARD,
        shared_cache.TTL_EXTENDED,
        shared_cache.TTL_PERMANENT,
    ) == (300, 3600, 86400, 0)


def test_import_does_not_pull_heavy_dependencies() -> None:
    heavy = "{'numpy', 'torch', 'celery', 'supabase', 'realtime', 'tensorflow'}"
    code = f"import sys, shared_cache; print(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


async def test_static_style_methods_use_the_singleton(manager: CacheManager) -> None:
    assert CacheManager.get_instance() is manager
    assert await CacheManager.set("document", "doc_123", {"a": 1}, "tenant_abc") is True
    assert await CacheManager.get(data_type="document", resource_id="doc_123", tenant_id="tenant_abc") == {"a": 1}
    assert 3400 <= await CacheManager.ttl("document", "doc_123", "tenant_abc") <= 3600
    assert await CacheManager.delete("document", "doc_123", "tenant_abc") is True
    assert await CacheManager.get("document", "doc_123", "tenant_abc") is None


async def test_set_rejects_unserializable(manager: CacheManager) -> None:
    with pytest.raises(shared_cache.SerializationError, match="cannot cache a value of type"):
        await CacheManager.set("document", "d", object(), "t")


async def test_typed_helpers(manager: CacheManager) -> None:
    await CacheManager.set_embedding("Texto a embeber", [0.5, 0.25], "text-embedding-ada-002", "tenant_abc")
    assert await CacheManager.get_embedding("Texto a embeber", "text-embedding-ada-002", "tenant_abc") == [0.5, 0.25]

    await CacheManager.set_query_result(
        "¿Cómo funciona X?", {"answer": 1}, "coll_123", "tenant_abc", similarity_top_k=4
    )
    assert await CacheManager.get_query_result("¿Cómo funciona X?", "coll_123", "tenant_abc", similarity_top_k=4) == {
        "answer": 1
    }
    assert (
        await CacheManager.get_query_result("¿Cómo funciona X?", "coll_123", "tenant_abc", similarity_top_k=5) is None
    )
    assert (
        await CacheManager.get_query_result("¿Cómo funciona X?", "coll_999", "tenant_abc", similarity_top_k=4) is None
    )

    await CacheManager.set_agent_config("agent_123", {"model": "x"}, "tenant_abc")
    assert await CacheManager.get_agent_config("agent_123", "tenant_abc") == {"model": "x"}
    await CacheManager.invalidate_agent_complete("tenant_abc", "agent_123")
    assert await CacheManager.get_agent_config("agent_123", "tenant_abc") is None


async def test_counters(manager: CacheManager) -> None:
    for status in ("success", "success", "error"):
        await CacheManager.increment_counter(
            counter_type="api_calls",
            amount=1,
            resource_id="my_endpoint",
            tenant_id="tenant_abc",
            metadata={"status": status},
        )
    assert await CacheManager.get_counter(scope="api_calls", resource_id="my_endpoint", tenant_id="tenant_abc") == 3
    assert await CacheManager.get_counter("api_calls", "my_endpoint", "tenant_abc", metadata={"status": "error"}) == 1
    assert await CacheManager.increment_counter("latency_sum", 0.5, None, "tenant_abc") == 0.5
    assert await CacheManager.get_counter("api_calls", "my_endpoint", "other_tenant") == 0
    with pytest.raises(ValueError, match="counter amount must be a number"):
        await CacheManager.increment_counter("api_calls", "1", None, "tenant_abc")  # type: ignore[arg-type]


async def test_metrics_snapshot_and_custom_metrics(manager: CacheManager) -> None:
    await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 1})
    for _ in range(9):
        await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 1})
    seen: list[tuple[str, float]] = []
    manager.stats.hooks.append(lambda dt, tid, metric, value, meta: seen.append((metric, value)))
    await shared_cache.track_cache_metrics("embedding", "tenant_abc", "custom_metric_name", 35.7, {"source": "svc"})
    snap = shared_cache.get_cache_stats()
    assert snap["hits"] == 9 and snap["misses"] == 1 and snap["hit_ratio"] == pytest.approx(0.9)
    doc = snap["by_type"]["document"]  # type: ignore[index]
    assert doc["hits"] == {"memory": 9} and "p99" in doc["latency_ms"]["db"]
    assert seen == [("custom_metric_name", 35.7)]


async def test_with_context() -> None:
    @with_context(tenant=True, agent=True)
    async def my_function(ctx: Context) -> tuple[str, str | None]:
        return ctx.get_tenant_id(), ctx.get_agent_id()

    assert await my_function(ctx=Context(tenant_id="t", agent_id="a")) == ("t", "a")
    with Context(tenant_id="t2", agent_id="a2").bind():
        assert await my_function() == ("t2", "a2")  # type: ignore[call-arg]
    with pytest.raises(InvalidKeyError, match="needs agent_id"):
        await my_function(ctx=Context(tenant_id="t"))
    with pytest.raises(InvalidKeyError, match="invalid tenant_id"):
        Context(tenant_id="bad tenant")


@pytest.mark.parametrize("marker", ["settings-table", "listener-settings-table", "task-settings-table"])
def test_readme_settings_tables_match_the_models(marker: str) -> None:
    import pathlib
    import re

    from devtools.readme import TABLES, settings_table

    model = TABLES[marker]
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    block = re.search(rf"<!-- {marker} -->\n(.*?)\n<!-- /{marker} -->", readme, re.S)
    assert block is not None, f"README.md has no {marker}"
    assert block.group(1) == settings_table(model), "regenerate it: python -m devtools.readme"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setenv("SHARED_CACHE_REDIS_URL", "rediss://user:secret@cache.internal:6380/2")
    monkeypatch.setenv("SHARED_CACHE_MEMORY_ENABLED", "false")
    settings = CacheSettings()
    assert settings.redis_url.get_secret_value().startswith("rediss://user:secret@")
    assert "secret" not in repr(settings)  # secrets stay out of logs and error reports
    assert settings.memory_enabled is False
    with pytest.raises(ValueError, match="key_prefix"):
        CacheSettings(key_prefix="a{b}")

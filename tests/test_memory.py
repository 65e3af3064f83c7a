"""The memory tier as a plain data structure, with injected time."""

from __future__ import annotations

import pytest

from shared_cache import MemoryTier
from shared_cache._memory import entry_value
from shared_cache._serialization import serialize_for_cache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def put(tier: MemoryTier, ident: str, value: object, ttl: float = 60, scopes: tuple[tuple[str, ...], ...] = ()) -> None:
    tier.set(ident, serialize_for_cache(value, "document"), ttl, f"key:{ident}", "tenant", scopes)


def test_lru_bound_on_entries() -> None:
    tier = MemoryTier(max_entries=2)
    put(tier, "a", 1)
    put(tier, "b", 2)
    assert tier.get("a") is not None  # a is now most recent
    put(tier, "c", 3)
    assert "b" not in tier and "a" in tier and "c" in tier


def test_bound_on_bytes() -> None:
    tier = MemoryTier(max_entries=100, max_bytes=600)
    for i in range(10):
        put(tier, str(i), "x" * 100)
    assert tier.bytes <= 600 and len(tier) < 10
    put(tier, "huge", "x" * 10_000)
    assert "huge" not in tier


def test_ttl_cap_with_injected_time() -> None:
    clock = Clock()
    tier = MemoryTier(ttl_cap=10, timer=clock)
    put(tier, "short", 1, ttl=2)
    put(tier, "long", 1, ttl=3600)
    put(tier, "permanent", 1, ttl=0)
    clock.now += 3
    assert "short" not in tier and "long" in tier and "permanent" in tier
    clock.now += 8
    assert len([k for k in ("long", "permanent") if k in tier]) == 0


def test_evict_scope_drops_exactly_its_entries() -> None:
    tier = MemoryTier()
    put(tier, "a", 1, scopes=(("t",), ("t", "coll", "c1")))
    put(tier, "b", 1, scopes=(("t",), ("t", "coll", "c2")))
    put(tier, "c", 1, scopes=(("u",), ("u", "coll", "c1")))
    assert tier.evict_scope(("t", "coll", "c1")) == 1
    assert "a" not in tier and "b" in tier and "c" in tier
    assert tier.evict_scope(("t",)) == 1
    assert "c" in tier and len(tier) == 1


def test_hits_return_fresh_objects() -> None:
    tier = MemoryTier()
    put(tier, "nested", {"a": [1, 2]})
    put(tier, "flat", {"a": 1})
    for ident in ("nested", "flat"):
        first = entry_value(tier.get(ident))  # type: ignore[arg-type]
        first["a"] = "changed"
        assert entry_value(tier.get(ident)) != first  # type: ignore[arg-type]


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="memory tier bounds must be positive"):
        MemoryTier(max_entries=0)

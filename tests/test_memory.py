"""The memory tier as a plain data structure, with injected time."""

from __future__ import annotations

import enum
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared_cache._memory import HOLD_FLAT, HOLD_JSON, MemoryTier, entry_value, hold
from shared_cache._metrics import new_memory_cell
from shared_cache._serialization import encode_embedding, serialize_for_cache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def put(
    tier: MemoryTier,
    ident: str,
    value: object,
    ttl: float = 60,
    scopes: tuple[tuple[str, ...], ...] = (("t",),),
    seq: int | None = None,
) -> bool:
    return tier.set(ident, serialize_for_cache(value, "document"), ttl, f"key:{ident}", "tenant", scopes, seq)


def test_lru_bound_on_entries() -> None:
    tier = MemoryTier(max_entries=2)
    put(tier, "a", 1)
    put(tier, "b", 2)
    assert tier.get("a") is not None  # a is now most recent
    put(tier, "c", 3)
    assert "b" not in tier and "a" in tier and "c" in tier


def test_a_hit_moves_an_entry_only_once_it_is_past_the_newest_quarter() -> None:
    tier = MemoryTier(max_entries=8)  # the newest quarter: 2 entries
    for ident in "abcdefgh":
        put(tier, ident, 1)
    assert tier.get("g") is not None  # second newest: stays where it is, ahead of h
    assert tier.get("f") is not None  # third newest: moved to the recent end, behind h
    for ident in "ijklmn":  # six more: a to e go, and then g, before h and f
        put(tier, ident, 1)
    assert "g" not in tier._data and "h" in tier._data and "f" in tier._data
    assert tier.get("h") is not None  # now the oldest: moved to the recent end
    put(tier, "o", 1)
    assert "h" in tier._data and "f" not in tier._data


def test_an_entry_that_keeps_being_hit_is_never_evicted() -> None:
    tier = MemoryTier(max_entries=100)
    put(tier, "hot", 1)
    for i in range(1_000):
        put(tier, f"cold{i}", 1)
        assert tier.get("hot") is not None
    assert len(tier) == 100


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 15)), max_size=200), st.integers(1, 12))
def test_what_was_used_lately_is_kept(ops: list[tuple[bool, int]], max_entries: int) -> None:
    """Against a model: a key stored or hit before fewer than ``max_entries - max_entries // 4``
    other keys were stored or hit is still there (an exact LRU keeps it for ``max_entries``), and
    the bound holds."""
    tier = MemoryTier(max_entries=max_entries)
    keep = max_entries - max_entries // 4
    used: list[str] = []  # keys by their last use, oldest first (an exact LRU's order)
    for is_store, n in ops:
        ident = f"k{n}"
        if is_store:
            put(tier, ident, n)
        elif tier.get(ident) is None:
            continue
        if ident in used:
            used.remove(ident)
        used.append(ident)
        assert len(tier) <= max_entries
        for since, other in enumerate(reversed(used)):  # ``since``: other keys used after it
            if since < keep:
                assert other in tier._data, (other, since, keep)  # looked at without a hit


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


def test_evict_scope_makes_exactly_its_entries_invalid() -> None:
    tier = MemoryTier()
    put(tier, "a", 1, scopes=(("t",), ("t", "coll", "c1")))
    put(tier, "b", 1, scopes=(("t",), ("t", "coll", "c2")))
    put(tier, "c", 1, scopes=(("u",), ("u", "coll", "c1")))
    tier.evict_scope(("t", "coll", "c1"))
    assert "a" not in tier and "b" in tier and "c" in tier
    tier.evict_scope(("t",))
    assert "b" not in tier and "c" in tier
    put(tier, "a", 2, scopes=(("t",), ("t", "coll", "c1")))  # stored after the evictions: valid
    assert "a" in tier


def test_an_entry_fetched_before_an_eviction_is_never_kept() -> None:
    tier = MemoryTier()
    seq = tier.seq  # read before the lookup began
    tier.evict_scope(("t", "res", "document", "d"))  # lands while the value is being fetched
    assert put(tier, "d", 1, scopes=(("t",), ("t", "res", "document", "d")), seq=seq) is False
    assert "d" not in tier
    # an eviction of another scope meanwhile does not keep this one out
    seq = tier.seq
    tier.evict_scope(("t", "res", "document", "other"))
    assert put(tier, "d", 1, scopes=(("t",), ("t", "res", "document", "d")), seq=seq) is True
    assert "d" in tier


def embeddings(tier: MemoryTier, names: list[str], ttls: list[float] | None = None, seq: int | None = None) -> None:
    """Store one embedding per name at once, as a batch does (scopes: tenant, type, the name's own)."""
    payloads = [encode_embedding([float(i), 0.5]) for i in range(len(names))]
    tier.set_embeddings(
        names,
        payloads,
        ttls if ttls is not None else [0.0] * len(names),
        [f"key:{n}" for n in names],
        [(("t",), ("t", "type", "embedding"), ("t", "res", "embedding", n)) for n in names],
        tier.seq if seq is None else seq,
        new_memory_cell(),
    )


def test_embeddings_stored_at_once_are_each_served_counted_and_bounded() -> None:
    tier = MemoryTier(max_entries=50)
    embeddings(tier, [f"e{i:02}" for i in range(40)])
    assert len(tier) == 40
    one = len(encode_embedding([0.0, 0.5])) + 64 + len("key:e00")
    assert tier.bytes == 40 * one
    embeddings(tier, [f"e{i:02}" for i in range(30, 40)])  # stored again: counted once, now the newest
    assert len(tier) == 40 and tier.bytes == 40 * one
    embeddings(tier, [f"n{i:02}" for i in range(20)])  # past the bound: the oldest go, not the ones stored again
    assert len(tier) == 50 and tier.bytes == 50 * one
    assert all(f"e{i:02}" not in tier for i in range(10)) and all(f"e{i:02}" in tier for i in range(30, 40))
    assert [entry_value(tier.get(name)) for name in ("e10", "e39", "n19")] == [  # type: ignore[arg-type]
        [10.0, 0.5],
        [9.0, 0.5],  # the value it was stored with again (the 10th of that call)
        [19.0, 0.5],
    ]


def test_embeddings_stored_at_once_keep_each_its_own_ttl() -> None:
    clock = Clock()
    tier = MemoryTier(ttl_cap=10, timer=clock)
    embeddings(tier, ["short", "capped", "no expiry"], ttls=[2.0, 3600.0, 0.0])
    clock.now += 3
    assert "short" not in tier and "capped" in tier and "no expiry" in tier
    clock.now += 8
    assert "capped" not in tier and "no expiry" not in tier


def test_embeddings_looked_up_before_an_eviction_of_their_scope_are_not_kept() -> None:
    tier = MemoryTier()
    seq = tier.seq  # read before the batch's lookup began
    tier.evict_scope(("t", "res", "embedding", "b"))  # lands while the batch runs
    embeddings(tier, ["a", "b", "c"], seq=seq)
    assert len(tier) == 2  # left out, not stored to be dropped later
    assert "a" in tier and "b" not in tier and "c" in tier
    seq = tier.seq
    tier.evict_scope(("t", "type", "embedding"))
    embeddings(tier, ["a", "d"], seq=seq)
    assert "a" not in tier and "d" not in tier and "c" not in tier  # the old "a" is not left behind either


def test_embeddings_too_big_for_the_tier_are_skipped_and_lists_must_match() -> None:
    tier = MemoryTier(max_bytes=100)
    embeddings(tier, ["x" * 200, "small"])
    assert len(tier) == 1 and "small" in tier
    with pytest.raises(ValueError, match="one length"):
        tier.set_embeddings(["a"], [], [0.0], ["k"], [(("t",),)], tier.seq, new_memory_cell())


def test_evicting_a_scope_costs_the_same_for_ten_or_a_hundred_thousand_entries() -> None:
    """Counted in work, not time: the eviction touches no entry; each entry is checked once, lazily."""
    small, large = MemoryTier(max_entries=200_000), MemoryTier(max_entries=200_000)
    for tier, n in ((small, 10), (large, 100_000)):
        for i in range(n):
            put(tier, f"k{i}", i, scopes=(("t",), ("t", "type", "document")))
        before = len(tier)
        tier.evict_scope(("t", "type", "document"))
        assert len(tier) == before  # nothing was walked or dropped by the eviction itself
        assert tier.get("k0") is None and len(tier) == before - 1  # dropped when met
    assert len(small._evicted) == len(large._evicted) == 1


def test_old_eviction_records_are_forgotten_after_the_ttl_cap() -> None:
    tier = MemoryTier(ttl_cap=0.05)
    for i in range(100):
        tier.evict_scope(("t", "res", "document", f"d{i}"))
    time.sleep(1.1)
    tier.evict_scope(("t", "res", "document", "last"))
    assert list(tier._evicted) == [("t", "res", "document", "last")]


def test_a_flush_drops_everything_and_what_was_being_fetched() -> None:
    tier = MemoryTier()
    seq = tier.seq
    put(tier, "a", 1)
    tier.clear()
    assert len(tier) == 0 and tier.bytes == 0
    assert put(tier, "b", 1, seq=seq) is False  # fetched before the flush


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


class _Level(enum.IntEnum):
    HIGH = 1


def test_only_flat_values_of_plain_scalars_are_kept_as_copies() -> None:
    """A dict or list of plain scalars is kept decoded (a shallow copy is a full copy); anything else
    keeps its JSON body, decoded on each hit, so a hit returns what a Redis hit would."""
    flat = {"id": "d", "pages": 12, "ratio": 0.5, "public": True, "note": None}
    kind, data = hold(serialize_for_cache(flat), flat)
    assert kind == HOLD_FLAT and data == flat and data is not flat
    assert hold(serialize_for_cache([1, "a", None]))[0] == HOLD_FLAT
    for other in ({"tags": ["a"]}, [{"a": 1}], list(range(65)), {"level": _Level.HIGH}):
        kind, data = hold(b"j" + b"{}", other)  # the decoded value is what is judged
        assert kind == HOLD_JSON, other

"""Keys, hierarchy and tenant isolation: pure code, no server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared_cache import InvalidKeyError, _keys
from shared_cache._entry import parse_lookup
from shared_cache._keys import build_plan, encode_id, gen_key

hostile = st.one_of(
    st.sampled_from(["a:*", "}{", "\n", "*", "doc*", "{t2}", "t2}:x", "a:b:c", " ", "\x00", "é", "x" * 5000]),
    st.text(min_size=1, max_size=300),
)


def test_hierarchy_order_follows_the_standard() -> None:
    plan = build_plan("sc:", "embedding", "tenant_abc", "doc_456", "agent_123", "conv_789", "coll_101112")
    assert plan.entry_keys == (
        "sc:{tenant_abc}:embedding:agent:agent_123:conv:conv_789:coll:coll_101112:doc_456",
        "sc:{tenant_abc}:embedding:agent:agent_123:conv:conv_789:doc_456",
        "sc:{tenant_abc}:embedding:agent:agent_123:coll:coll_101112:doc_456",
        "sc:{tenant_abc}:embedding:coll:coll_101112:doc_456",
        "sc:{tenant_abc}:embedding:agent:agent_123:doc_456",
        "sc:{tenant_abc}:embedding:doc_456",
    )
    assert plan.level_names == ("agent+conv+coll", "agent+conv", "agent+coll", "coll", "agent", "tenant")
    # level 1 is tagged with all six scopes; the basic key with tenant, type and resource only
    assert plan.level_gens[0] == (0, 1, 2, 3, 4, 5) and plan.level_gens[-1] == (0, 1, 2)
    assert plan.level_gens[3] == (0, 1, 2, 5)  # coll only
    assert plan.gen_keys[:3] == (
        "sc:{tenant_abc}:#gen",
        "sc:{tenant_abc}:#gen:type:embedding",
        "sc:{tenant_abc}:#gen:res:embedding:doc_456",
    )


def test_only_given_parts_make_levels() -> None:
    assert build_plan("", "document", "t", "d").entry_keys == ("{t}:document:d",)
    plan = build_plan("", "document", "t", "d", agent_id="a")
    assert plan.entry_keys == ("{t}:document:agent:a:d", "{t}:document:d")
    # a conversation without an agent is not in the standard's list: full key first, then basic
    plan = build_plan("", "document", "t", "d", conversation_id="c")
    assert plan.entry_keys == ("{t}:document:conv:c:d", "{t}:document:d")


@pytest.mark.parametrize("bad", ["", "a:b", "a*", "{t}", "t\n", None, 5, "x" * 65, "-lead"])
def test_bad_tenant_is_a_clear_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match=r"invalid tenant_id .* expected a string matching"):
        build_plan("", "document", bad, "d")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "Doc", "a:b", "#gen", "1x", None])
def test_bad_data_type_is_a_clear_value_error(bad: object) -> None:
    with pytest.raises(InvalidKeyError, match="invalid data_type"):
        build_plan("", bad, "t", "d")  # type: ignore[arg-type]


def test_bad_resource_types_are_refused() -> None:
    for bad in (None, "", 1.5, True, b"x", ["x"], {"a": 1}):
        with pytest.raises(InvalidKeyError, match="invalid resource_id"):
            build_plan("", "document", "t", bad)


@given(resource=hostile, agent=hostile, coll=hostile, conv=hostile)
def test_hostile_ids_stay_inside_their_tenant(resource: str, agent: str, coll: str, conv: str) -> None:
    plan = build_plan("sc:", "document", "t1", resource, agent, conv, coll)
    for key in (*plan.entry_keys, *plan.gen_keys, plan.lease_key):
        assert key.startswith("sc:{t1}:")
        assert key.count("{") == 1 and key.count("}") == 1  # one hash tag: the tenant's
        assert "*" not in key and "\n" not in key
        assert len(key) < 600
    # the number of ':'-separated parts is fixed by the structure, never by the ids
    assert plan.entry_keys[0].count(":") == 9
    for scope in plan.scopes:
        assert scope[0] == "t1"


@given(a=hostile, b=hostile)
def test_encoding_is_injective(a: str, b: str) -> None:
    if a != b:
        assert encode_id(a) != encode_id(b)


@given(resource=hostile)
def test_resource_ids_cannot_reach_bookkeeping_keys(resource: str) -> None:
    plan = build_plan("", "document", "t", resource)
    assert ":#" not in plan.entry_keys[0]
    assert plan.entry_keys[0] != gen_key("", ("t",))


optional = st.one_of(st.none(), hostile)


tenants = st.sampled_from(["t1", "t2"])


@given(resource=hostile, other=hostile, agent=optional, conv=optional, coll=optional, tenant=tenants)
def test_plans_built_from_a_shared_context_are_the_plans_built_afresh(
    resource: str, other: str, agent: str | None, conv: str | None, coll: str | None, tenant: str
) -> None:
    """The plans of one context share what they have in common (built once); a plan built that way
    is exactly the plan built from nothing, whichever plans of this or a neighbouring context were
    built before it."""
    requests = [
        ("document", tenant, resource, agent, conv, coll),
        ("document", tenant, other, agent, conv, coll),  # the same context, another resource
        ("document", tenant, resource, agent, conv, None),  # neighbours: one part fewer, another type,
        ("query_result", tenant, resource, agent, conv, coll),  # another tenant
        ("document", "t3", resource, agent, conv, coll),
        ("document", tenant, resource, agent, conv, coll),  # and the first again
    ]
    fresh = []
    for request in requests:
        _keys._contexts.clear()
        fresh.append(build_plan("sc:", *request))
    _keys._contexts.clear()
    assert [build_plan("sc:", *request) for request in requests] == fresh
    plan = fresh[0]
    assert all(key.endswith(encode_id(resource)) for key in plan.entry_keys)
    assert plan.gen_keys[2] == gen_key("sc:", (tenant, "res", "document", encode_id(resource)))
    assert plan.lease_key == f"sc:{{{tenant}}}:#lease:" + plan.entry_keys[0][len(f"sc:{{{tenant}}}:") :]


def test_a_known_context_still_validates_every_id() -> None:
    """Contexts are found by the encoded ids: ``True`` never finds the context of ``1``."""
    build_plan("sc:", "document", "t1", "d", agent_id=1, collection_id=1)
    for bad in (True, 1.0):
        with pytest.raises(InvalidKeyError, match="invalid agent_id"):
            build_plan("sc:", "document", "t1", "d", agent_id=bad, collection_id=1)
        with pytest.raises(InvalidKeyError, match="invalid resource_id"):
            build_plan("sc:", "document", "t1", bad, agent_id=1, collection_id=1)


def test_the_contexts_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_keys, "_CONTEXTS_MAX", 5)
    _keys._contexts.clear()
    for i in range(12):
        plan = build_plan("sc:", "document", f"t{i}", "d", agent_id="a")
        assert plan.entry_keys == (f"sc:{{t{i}}}:document:agent:a:d", f"sc:{{t{i}}}:document:d")
        assert len(_keys._contexts) <= 5


def test_long_ids_are_hashed_and_bounded() -> None:
    plan = build_plan("", "query_result", "t", "q" * 100_000)
    assert len(plan.entry_keys[0]) < 80


def test_lookup_replies_parse() -> None:
    """lookup.lua answers a hit with its level and raw entry, a miss with the tag and the lease."""
    found = parse_lookup([2, b"1,0,3|1790000000000|j2"])
    assert (found.level, found.payload, found.expires_at) == (2, b"j2", 1790000000.0)
    assert parse_lookup([1, b"1,0,3,7|soon|j1"]).payload == b""  # a corrupt entry: nothing to decode
    miss = parse_lookup([0, b"1,0,3,7", 0, b"holder-1"])
    assert (miss.level, miss.tag, miss.leased, miss.holder) == (0, b"1,0,3,7", False, b"holder-1")
    ours = parse_lookup([0, b"1,0,3,7", 1, None])
    assert ours.leased and ours.holder is None
    plan = build_plan("", "document", "t", "d", agent_id="a")
    assert plan.mget_keys == (*plan.entry_keys, *plan.gen_keys, plan.lease_key)
    assert plan.lookup_args == (2, "123400123000")  # agent level: t, type, res, agent; basic: t, type, res


def test_ids_that_compare_equal_to_another_are_refused() -> None:
    """``True`` and ``1.0`` equal ``1`` (and hash alike): they must never find what ``1`` cached."""
    for bad in (True, False, 1.0, ["x"], {"a": 1}, b"x", None):
        with pytest.raises(InvalidKeyError, match="expected a non-empty str, int or UUID"):
            encode_id(bad)
    assert encode_id(1) == "1" and encode_id("1") == "1"


# Any text a str can hold, lone surrogates included (hypothesis leaves them out by default).
_any_text = st.text(alphabet=st.characters(blacklist_categories=()), max_size=40)


@given(texts=st.lists(_any_text, max_size=8), model=_any_text.filter(bool))
def test_embedding_ids_are_the_published_digest_batch_or_single(texts: list[str], model: str) -> None:
    """An embedding's id is a stable function of (model, text): entries written by one version (or
    one process) are found by another. The batch and the single-text paths agree."""
    import hashlib

    from shared_cache._embedding_ids import embedding_resource_id, embedding_resource_ids

    def reference(text: str) -> str:
        data = f"{len(model)}:{model}{text}".encode("utf-8", "surrogatepass")
        return "emb_" + hashlib.blake2b(data, digest_size=16).hexdigest()

    expected = [reference(t) for t in texts]
    assert embedding_resource_ids(texts, model) == expected  # computed
    assert embedding_resource_ids(texts, model) == expected  # kept
    assert [embedding_resource_id(t, model) for t in texts] == expected
    assert embedding_resource_ids(texts, model + "x") != expected or not texts


def test_embedding_ids_kept_are_bounded_over_all_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most ``_RIDS_KEPT`` ids for at most ``_CHARS_KEPT`` characters of text, all models together;
    the oldest go first, one at a time, those of the model being asked before other models'."""
    from shared_cache import _embedding_ids as ids

    monkeypatch.setattr(ids, "_RIDS_KEPT", 50)
    monkeypatch.setattr(ids, "_CHARS_KEPT", 1_000)
    monkeypatch.setattr(ids, "_embedding_rids", {})
    monkeypatch.setattr(ids, "_kept", [0, 0])

    def kept() -> dict[str, list[str]]:
        return {m: list(k) for m, k in ids._embedding_rids.items()}

    first = ids.embedding_resource_ids([f"a{i}" for i in range(30)], "m1")
    ids.embedding_resource_ids([f"b{i}" for i in range(15)] + ["b0"], "m2")  # a repeated text counts once
    assert sum(map(len, kept().values())) == 45 == ids._kept[0]
    ids.embedding_resource_ids([f"c{i}" for i in range(10)], "m3")  # 55 > 50: the 5 oldest of m1 go
    assert kept()["m1"] == [f"a{i}" for i in range(5, 30)] and len(kept()["m3"]) == 10
    for i in range(40):  # then the rest of m1's, then m2's, then m3's own oldest
        ids.embedding_resource_id(f"d{i}", "m3")
    assert kept()["m1"] == [] and kept()["m2"] == []
    assert kept()["m3"] == [f"c{i}" for i in range(10)] + [f"d{i}" for i in range(40)]
    ids.embedding_resource_id("d40", "m3")
    assert kept()["m3"] == [f"c{i}" for i in range(1, 10)] + [f"d{i}" for i in range(41)]
    assert sum(map(len, kept().values())) == 50 == ids._kept[0]
    ids.embedding_resource_ids(["x" * 300, "y" * 300, "z" * 300], "m3")  # the characters' bound
    assert ids._kept[1] <= 1_000 and kept()["m3"][-3:] == ["x" * 300, "y" * 300, "z" * 300]
    assert ids._kept == [sum(map(len, kept().values())), sum(len(t) for k in kept().values() for t in k)]
    assert ids.embedding_resource_ids([f"a{i}" for i in range(30)], "m1") == first  # recomputed alike

"""Keys, hierarchy and tenant isolation: pure code, no server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared_cache import InvalidKeyError, build_plan
from shared_cache._keys import encode_id, gen_key

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
    for bad in (None, "", 1.5, True, b"x", ["x"]):
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


def test_long_ids_are_hashed_and_bounded() -> None:
    plan = build_plan("", "query_result", "t", "q" * 100_000)
    assert len(plan.entry_keys[0]) < 80


def test_parse_lookup_picks_the_first_current_level() -> None:
    from shared_cache._manager import parse_lookup

    plan = build_plan("", "document", "t", "d", agent_id="a")  # levels: agent, basic; gens t,type,res,agent
    gens = [b"1", None, b"3", b"7"]  # a missing counter reads as 0
    stale_top = b"1,0,3,6|0|j1"  # tagged before the agent's generation moved to 7
    current_basic = b"1,0,3|1790000000000|j2"
    found = parse_lookup(plan, [stale_top, current_basic, *gens])
    assert (found.level, found.payload, found.expires_at) == (2, b"j2", 1790000000.0)
    assert found.stale == ((plan.entry_keys[0], b"1,0,3,6"),)

    miss = parse_lookup(plan, [None, b"garbage without separators", *gens])
    assert miss.level == 0 and miss.tag == b"1,0,3,7"  # what a write must be tagged with
    assert miss.stale == ((plan.entry_keys[1], b"garbage without separators"),)
    assert parse_lookup(plan, [b"1,0,3,7|soon|j1", None, *gens]).level == 0  # a bad expiry is not served

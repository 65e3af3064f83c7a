"""Planning and coalescing: pure code, no servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tasks.contracts import InvalidateCall
from worker.coalesce import Window
from worker.events import ChangeEvent, commit_seconds
from worker.rules import DEFAULT_RULES, Invalidate, PlanError, Planner, Warm, load_rules


def event(table: str, type_: str = "UPDATE", record: Any = None, old: Any = None) -> ChangeEvent:
    return ChangeEvent.model_validate(
        {"schema": "public", "table": table, "type": type_, "record": record, "old_record": old, "source": "test"}
    )


planner = Planner(DEFAULT_RULES)


def test_document_update_plans_the_coordinated_invalidation() -> None:
    actions = planner.plan(event("documents", record={"id": "d1", "tenant_id": "t1", "collection_id": "c1"}))
    assert actions == [
        Invalidate(
            "t1",
            (("t1", "res", "document", "d1"), ("t1", "res", "embedding", "d1"), ("t1", "res", "vector_store", "c1"),
             ("t1", "coll", "c1")),
            "documents UPDATE",
        )
    ]  # fmt: skip


def test_update_that_moves_a_row_invalidates_both_sides() -> None:
    actions = planner.plan(event("agents", record={"id": "a1", "tenant_id": "t1"}, old={"id": "a1", "tenant_id": "t0"}))
    assert {a.tenant_id for a in actions} == {"t0", "t1"}


def test_chunks_invalidate_their_document_embeddings_and_warm_new_text() -> None:
    row = {"id": 7, "tenant_id": "t1", "document_id": "d1", "collection_id": "c1", "content": "hello"}
    actions = planner.plan(event("document_chunks", "INSERT", record=row))
    assert actions[0] == Invalidate(
        "t1", (("t1", "res", "embedding", "d1"), ("t1", "coll", "c1")), "document_chunks INSERT"
    )
    assert actions[1] == Warm("t1", ("hello",))
    deleted = planner.plan(event("document_chunks", "DELETE", old=row))
    assert not any(isinstance(a, Warm) for a in deleted)


def test_agents_and_collections() -> None:
    (agent,) = planner.plan(event("agents", "DELETE", old={"id": "a9", "tenant_id": "t1"}))
    assert agent.scopes == (("t1", "agent", "a9"), ("t1", "res", "agent_config", "a9"))  # type: ignore[union-attr]
    (coll,) = planner.plan(event("collections", "INSERT", record={"id": 5, "tenant_id": "t1"}))
    assert coll.scopes == (("t1", "coll", "5"), ("t1", "res", "vector_store", "5"))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("ev", "reason"),
    [
        (event("unknown_table", record={"id": 1, "tenant_id": "t"}), "no rule for table public.unknown_table"),
        (event("documents", record={"id": "d1"}), "has no 'tenant_id' column value"),
        (event("documents", record={"id": "d1", "tenant_id": 5}), "must be a string tenant id"),
        (event("documents", record={"id": ["x"], "tenant_id": "t"}), "must be a string or an integer"),
        (event("documents", record={"id": "d", "tenant_id": "bad tenant"}), "invalid tenant_id"),
        (event("documents", "DELETE"), "carries no row"),
    ],
)
def test_bad_events_raise_plan_errors(ev: ChangeEvent, reason: str) -> None:
    with pytest.raises(PlanError, match=reason):
        planner.plan(ev)


def test_burst_of_chunk_updates_coalesces_to_one_call_per_tenant() -> None:
    window = Window()
    for i in range(10_000):
        row = {"id": i, "tenant_id": "t1", "document_id": "d1", "collection_id": "c1", "content": f"chunk {i % 50}"}
        window.add(planner.plan(event("document_chunks", record=row)))
    (call,) = window.invalidate_calls()
    assert call == InvalidateCall(
        "t1", (("t1", "coll", "c1"), ("t1", "res", "embedding", "d1")), "document_chunks UPDATE", None, None
    )
    warm = window.warm_calls(texts_per_call=64)
    assert [len(c.texts) for c in warm] == [50]  # 50 distinct texts, one call
    assert [len(c.texts) for c in window.warm_calls(texts_per_call=20)] == [20, 20, 10]


def test_an_update_whose_old_row_lacks_its_tenant_still_invalidates_the_new_row() -> None:
    ev = event("agents", record={"id": "a1", "tenant_id": "t1"}, old={"id": "a1"})
    planned = planner.plan_parts(ev)
    scopes = (("t1", "agent", "a1"), ("t1", "res", "agent_config", "a1"))
    assert planned.actions == [Invalidate("t1", scopes, "agents UPDATE")]
    assert planned.problems == ["old_record: agents row has no 'tenant_id' column value"]
    assert planner.plan(ev) == planned.actions  # plan() raises only when nothing can be planned
    nothing = planner.plan_parts(event("agents", record={"id": "a1"}, old={"id": "a1"}))
    assert nothing.actions == [] and len(nothing.problems) == 2


def test_plan_parts_never_raises_and_names_the_tenant_it_can() -> None:
    assert planner.plan_parts(event("nope", record={"id": 1})).problems == ["no rule for table public.nope"]
    assert planner.tenant_of(event("agents", record={"id": "a1", "tenant_id": "t1"}, old={"id": "a1"})) == "t1"
    assert planner.tenant_of(event("agents", record={"id": "a1", "tenant_id": "t1"}, old={"tenant_id": "t2"})) is None
    assert planner.tenant_of(event("agents", record={"id": "a1", "tenant_id": "bad tenant"})) is None


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2024-01-02T03:04:05+00:00", 1704164645.0),
        ("2024-01-02T03:04:05", 1704164645.0),  # no zone: UTC, whatever the machine's zone
        ("0001-01-01T00:00:00", None),  # datetime.timestamp() raises "year 0 is out of range"
        ("9999-12-31T23:59:59", None),  # far in the future
        ("9999-12-31T23:59:59-14:00", None),  # past year 9999 in UTC
        (None, None),
    ],
)
def test_commit_seconds_never_raises(stamp: str | None, expected: float | None) -> None:
    ev = ChangeEvent.model_validate({"table": "agents", "type": "INSERT", "commit_timestamp": stamp})
    assert commit_seconds(ev.commit_timestamp) == expected


def test_rules_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        '[[rule]]\ntable = "kb_docs"\nkind = "document"\ntenant_column = "org"\nid_column = "doc_id"\n'
        '[[rule]]\ntable = "prompts"\nkind = "resource"\ndata_type = "prompt"\n'
    )
    custom = Planner(load_rules(path))
    (action,) = custom.plan(event("kb_docs", record={"doc_id": "x", "org": "acme", "collection_id": None}))
    assert action.scopes[0] == ("acme", "res", "document", "x")  # type: ignore[union-attr]
    (action,) = custom.plan(event("prompts", record={"id": "p1", "tenant_id": "acme"}))
    assert action.scopes == (("acme", "res", "prompt", "p1"),)  # type: ignore[union-attr]
    path.write_text('[[rule]]\ntable = "x"\nkind = "resource"\n')
    with pytest.raises(ValueError, match="needs data_type"):
        load_rules(path)
    path.write_text('[[rule]]\ntable = "x"\nkind = "nonsense"\n')
    with pytest.raises(ValueError):
        load_rules(path)


def test_change_event_validation() -> None:
    with pytest.raises(ValueError):
        ChangeEvent.model_validate({"table": "t", "type": "UPSERT"})
    with pytest.raises(ValueError):
        ChangeEvent.model_validate({"table": "", "type": "INSERT"})

"""Task contracts, dispatch and counters: pure code, no servers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tasks.contracts import (
    INVALIDATE,
    TASK_ROUTES,
    WARM_TEXTS,
    ContractError,
    InvalidateCall,
    ReclaimCall,
    WarmCall,
)
from worker.acks import ReceiptIssuer
from worker.coalesce import Window
from worker.counters import ListenerCounters, counter_fields
from worker.dispatch import queue_counts, window_calls
from worker.rules import Invalidate, Warm


def test_an_invalidate_call_survives_its_wire_form() -> None:
    call = InvalidateCall("t1", (("t1", "res", "document", "d1"), ("t1",)), "documents UPDATE", 1.5, "scl.ab.1")
    wire = orjson.loads(orjson.dumps(call.to_wire()))  # what a task receives: JSON
    assert wire["scopes"] == [["t1", "res", "document", "d1"], ["t1"]]
    assert InvalidateCall.from_wire(**wire) == call
    assert InvalidateCall.from_wire("t1", [["t1"]]) == InvalidateCall("t1", (("t1",),))  # older senders
    assert call.task == INVALIDATE and TASK_ROUTES[INVALIDATE] == {"queue": "invalidation"}


@pytest.mark.parametrize(
    ("args", "names"),
    [
        ({"tenant_id": "t1", "scopes": [["t2", "res", "document", "d"]]}, "outside tenant 't1'"),
        ({"tenant_id": "t1", "scopes": [["t1", "res", "document"]]}, "unknown kind or length"),
        ({"tenant_id": "t1", "scopes": "t1"}, "scopes must be a list"),
        ({"tenant_id": "t1", "scopes": []}, "no scopes given"),
        ({"tenant_id": "bad tenant", "scopes": [["bad tenant"]]}, "bad tenant"),
        ({"tenant_id": "t1", "scopes": [["t1"]], "caused_at": float("nan")}, "caused_at"),
        ({"tenant_id": "t1", "scopes": [["t1"]], "caused_at": True}, "caused_at"),
        ({"tenant_id": "t1", "scopes": [["t1"]], "receipt": "a b"}, "receipt must match"),
        ({"tenant_id": "t1", "scopes": [["t1"]], "reason": 7}, "reason must be a str"),
    ],
)
def test_a_call_that_breaks_the_contract_is_refused_naming_the_value(args: dict[str, Any], names: str) -> None:
    with pytest.raises(ContractError, match=names):
        InvalidateCall.from_wire(**args)


def test_warm_and_reclaim_calls() -> None:
    assert WarmCall.from_wire("t1", ["a", "b"]) == WarmCall("t1", ("a", "b"))
    assert WarmCall("t1", ("a",)).to_wire() == {"tenant_id": "t1", "texts": ["a"]}
    with pytest.raises(ContractError, match="texts must be a list of str"):
        WarmCall.from_wire("t1", ["a", 2])
    assert ReclaimCall.from_wire(None) == ReclaimCall() == ReclaimCall.from_wire([])
    with pytest.raises(ContractError, match="tenant_ids must be a list"):
        ReclaimCall.from_wire("t1")


def test_window_calls_give_each_invalidation_a_receipt_and_warm_only_when_asked() -> None:
    window = Window()
    window.add([Invalidate("t2", (("t2", "agent", "a"),), "agents UPDATE"), Warm("t2", ("x", "y"))], 100.0)
    window.add([Invalidate("t1", (("t1",),), "tenant")])
    receipts = ReceiptIssuer()
    calls = window_calls(window, warming=True, receipts=receipts)
    assert [c.task for c in calls] == [INVALIDATE, INVALIDATE, WARM_TEXTS]
    first, second = calls[0], calls[1]
    assert isinstance(first, InvalidateCall) and isinstance(second, InvalidateCall)
    assert (first.tenant_id, first.caused_at) == ("t1", None) and (second.tenant_id, second.caused_at) == ("t2", 100.0)
    assert first.receipt == f"scl.{receipts.run}.1" and second.receipt == f"scl.{receipts.run}.2"
    assert queue_counts(calls) == {"invalidation": 2, "warming": 1}
    assert queue_counts(window_calls(window, warming=False)) == {"invalidation": 2, "warming": 0}
    assert all(c.receipt is None for c in window_calls(window, warming=False) if isinstance(c, InvalidateCall))


def test_every_counter_has_help_and_the_snapshot_is_flat() -> None:
    counters = ListenerCounters()
    assert all(f.metadata["help"].endswith(".") for f in counter_fields())
    counters.events += 2
    counters.count_scopes([("t1",), ("t1", "res", "document", "d"), ("t1", "res", "embedding", "d")])
    snapshot = counters.snapshot()
    assert snapshot["events"] == 2 and snapshot["scopes:tenant"] == 1 and snapshot["scopes:res"] == 2
    assert all(isinstance(v, int) for v in snapshot.values())

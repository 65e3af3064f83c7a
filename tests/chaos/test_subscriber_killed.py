"""Fault 5: Redis drops one reader's eviction subscriber (CLIENT KILL) while evictions flow; the
reader must flush its memory tier and subscribe again."""

from __future__ import annotations

from collections.abc import Callable

from tests.chaos.report import ScenarioReport


def test_a_reader_whose_subscription_drops_serves_nothing_stale(run_fault: Callable[[str], ScenarioReport]) -> None:
    report = run_fault("subscriber-killed")
    assert report.ok, report.explain()

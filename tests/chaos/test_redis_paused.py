"""Fault 6: Redis stops answering for 3 s (DEBUG SLEEP) under reads: reads go on (memory tier, or
the database once the breaker opens), and nothing is lost once Redis answers again."""

from __future__ import annotations

from collections.abc import Callable

from tests.chaos.report import ScenarioReport


def test_reads_survive_a_paused_redis(run_fault: Callable[[str], ScenarioReport]) -> None:
    report = run_fault("redis-paused")
    assert report.ok, report.explain()

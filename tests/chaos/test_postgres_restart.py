"""Fault 3: Postgres restarts (fast shutdown) in a burst: the writer, the readers' fetches and the
listener's slot all lose their connections."""

from __future__ import annotations

from collections.abc import Callable

from tests.chaos.report import ScenarioReport


def test_a_postgres_restart_loses_nothing(run_fault: Callable[[str], ScenarioReport]) -> None:
    report = run_fault("postgres-restart")
    assert report.ok, report.explain()

"""Fault 1: the Celery invalidation worker dies (SIGKILL of its process group), also at the worst
moment: hung while Redis hands it a task. No invalidation may be lost."""

from __future__ import annotations

from collections.abc import Callable

from tests.chaos.report import ScenarioReport


def test_a_celery_worker_killed_in_a_burst_loses_no_invalidation(run_fault: Callable[[str], ScenarioReport]) -> None:
    report = run_fault("celery-killed-in-burst")
    assert report.ok, report.explain()


def test_a_celery_worker_killed_while_redis_hands_it_a_task_loses_no_invalidation(
    run_fault: Callable[[str], ScenarioReport],
) -> None:
    report = run_fault("celery-hung-then-killed")
    assert report.ok, report.explain()

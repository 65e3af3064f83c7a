"""Fault 4: Redis restarts empty. It is the cache and the broker: entries, generations, queued and
unacknowledged tasks and the listener's known tenants are gone. Memory tiers must flush, the
Celery worker must come back to work, and an invalidation in flight must be sent again."""

from __future__ import annotations

from collections.abc import Callable

from tests.chaos.report import ScenarioReport


def test_a_redis_restart_while_the_worker_executes_a_task_loses_nothing(
    run_fault: Callable[[str], ScenarioReport],
) -> None:
    report = run_fault("redis-restart")
    assert report.ok, report.explain()


def test_a_redis_restart_flushes_memory_tiers_and_sends_the_window_in_flight_again(
    run_fault: Callable[[str], ScenarioReport],
) -> None:
    report = run_fault("redis-restart-task-in-flight")
    assert report.ok, report.explain()

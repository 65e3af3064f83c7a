"""Fault 2: the listener is killed (SIGKILL) in a burst and started again 2 s later; the slot
replays what it had not confirmed."""

from __future__ import annotations

from collections.abc import Callable

from tests.chaos.report import ScenarioReport


def test_a_killed_listener_resumes_from_the_slot_and_loses_nothing(run_fault: Callable[[str], ScenarioReport]) -> None:
    report = run_fault("listener-killed")
    assert report.ok, report.explain()

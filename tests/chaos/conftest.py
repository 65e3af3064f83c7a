"""Fixtures of the chaos suite: one Postgres for every scenario, the mode, and a scenario runner
that keeps each scenario's logs in the run's directory (``tests.chaos.logs``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.embedded import EmbeddedPostgres
from tests.chaos.logs import new_run_dir
from tests.chaos.mode import ChaosMode, current_mode
from tests.chaos.report import ScenarioReport
from tests.chaos.scenarios import run_scenario


@pytest.fixture(scope="session")
def chaos_postgres() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def chaos_mode() -> ChaosMode:
    return current_mode()


@pytest.fixture(scope="session")
def chaos_logs() -> Path:
    return new_run_dir()


@pytest.fixture
def run_fault(
    chaos_postgres: EmbeddedPostgres, chaos_mode: ChaosMode, chaos_logs: Path
) -> Callable[[str], ScenarioReport]:
    """Run a scenario (see ``tests.chaos.scenarios.SCENARIOS``) and return its report, figures printed."""

    def run(key: str) -> ScenarioReport:
        report = run_scenario(key, chaos_postgres, chaos_mode, chaos_logs / key)
        print(f"\n{report.figures()}\n{report.table_row()}")
        return report

    return run

"""Fixtures of the chaos suite: one Postgres for every scenario, the mode, and a scenario runner
that keeps each scenario's logs in the test's temporary directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from devtools.embedded import EmbeddedPostgres
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


@pytest.fixture
def run_fault(
    chaos_postgres: EmbeddedPostgres, chaos_mode: ChaosMode, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], ScenarioReport]:
    """Run a scenario (see ``tests.chaos.scenarios.SCENARIOS``) and return its report, figures printed."""

    def run(key: str) -> ScenarioReport:
        report = run_scenario(key, chaos_postgres, chaos_mode, tmp_path_factory.mktemp(key))
        print(f"\n{report.figures()}\n{report.table_row()}")
        return report

    return run

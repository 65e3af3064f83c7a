"""The suite's checks on hand-made records: they must find what they are meant to find."""

from __future__ import annotations

import pytest

from tests.chaos.checks import FaultWindow, compare, reads_within, staleness
from tests.chaos.reader import SOURCE_CODE, Record
from tests.chaos.report import ScenarioReport
from tests.chaos.writer import Commit

MEMORY, DB = SOURCE_CODE["memory"], SOURCE_CODE["db"]


def read(started: float, row: int, version: int, source: int = MEMORY) -> Record:
    return (started, started + 0.001, row, version, source)


COMMITS = [Commit(10.0, 1, 1, "0/1"), Commit(20.0, 1, 2, "0/2"), Commit(20.0, 2, 5, "0/3")]


def test_a_read_older_than_a_commit_past_the_bound_is_stale_and_one_within_it_is_not() -> None:
    reads = {
        "r": [
            read(10.5, 1, 0),  # 0.5 s after v1: within a 1 s bound
            read(11.2, 1, 0),  # 1.2 s after v1: stale
            read(11.3, 1, 1),  # fresh
            read(25.0, 1, 1),  # 5 s after v2: stale
            read(25.0, 2, 5),
            read(9.0, 1, 0),  # before any commit: not judged
            read(30.0, 1, -1, SOURCE_CODE["db_error"]),  # a failed read: not judged
        ]
    }
    found = staleness(reads, COMMITS, [], bound_s=1.0)
    assert (found.judged, found.stale) == (4, 2)
    assert found.worst_late_s == pytest.approx(5.0)
    assert "read row 1 v1; v2 was committed" in found.examples[1]
    assert staleness(reads, COMMITS, [], bound_s=0.1).stale == 3


def test_commits_whose_bound_overlaps_a_fault_window_are_not_judged_but_earlier_ones_are() -> None:
    window = FaultWindow("fault", start=20.5, resumed=22.0, recovered=23.0, end=24.0)
    reads = {"r": [read(25.0, 1, 1), read(25.0, 1, 0), read(30.0, 2, 4)]}
    found = staleness(reads, COMMITS, [window], bound_s=1.0)
    # v2 of row 1 (20.0) had until 21.0, which the window overlaps: v1 (10.0) is what counts
    assert (found.judged, found.stale) == (2, 1)
    assert "read row 1 v0; v1 was committed" in found.examples[0]


def test_a_window_that_never_recovered_ends_at_its_restart_so_what_follows_is_judged() -> None:
    window = FaultWindow("fault", start=15.0, resumed=16.0, recovered=None, end=16.0)
    assert window.recovery_s is None
    found = staleness({"r": [read(25.0, 1, 1)]}, COMMITS, [window], bound_s=1.0)
    assert (found.judged, found.stale) == (1, 1)


def test_compare_lists_every_process_and_row_that_differs_from_postgres() -> None:
    seen = {"reader 0": [(3, "memory"), (7, "db")], "fresh process": [(3, "redis"), (6, "redis")]}
    compared, mismatches = compare(seen, {0: 3, 1: 7})
    assert compared == 4
    assert [(m.process, m.row, m.read, m.truth) for m in mismatches] == [("fresh process", 1, 6, 7)]


def test_reads_within_counts_by_source() -> None:
    reads = {"a": [read(1.0, 0, 1), read(2.0, 0, 1, DB)], "b": [read(2.5, 0, 1, DB), read(9.0, 0, 1)]}
    assert reads_within(reads, 1.5, 3.0) == {"db": 2}


def test_a_report_fails_on_stale_reads_lost_rows_cache_errors_and_no_recovery() -> None:
    report = ScenarioReport("k", "title", "short")
    report.staleness = {1.0: staleness({"r": [read(25.0, 1, 1)]}, COMMITS, [], 1.0)}
    report.cache_errors = ["boom"]
    report.windows = [FaultWindow("fault", 1.0, 2.0, None, 2.0)]
    report.judge()
    assert len(report.failures) == 3 and not report.ok
    assert "| title | 1 | 1 of 0 | -1 / -1 / 1 | 0 of 0 | never (1 of 1) | **FAIL** |" == report.table_row()

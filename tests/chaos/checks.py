"""The suite's three checks, as pure functions of what was recorded (no I/O, tested on their own).

- **Bounded staleness outside faults**: a read that starts more than ``bound`` seconds after a
  commit of its row must return that commit's version or a newer one, unless a fault window
  overlaps the commit's first ``bound`` seconds (the time the system had to apply it).
- **Nothing lost**: once the system is quiet, what each process reads equals what Postgres holds.
- **Recovery time**: from a restart to the first change processed again (see ``FaultWindow``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tests.chaos.reader import SOURCES, Record
from tests.chaos.timeline import stamp
from tests.chaos.writer import Commit

BOUNDS_S = (0.1, 0.5, 1.0)
ASSERTED_BOUND_S = 1.0


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """From a fault's injection until the system has caught up with what the fault held back.

    ``resumed``: when the faulty part ran again (restarted, or the fault itself ended);
    ``recovered``: the first change committed after ``start`` that was processed after ``resumed``
    (None: none was, within the wait); ``end``: the backlog drained (every change committed before
    ``resumed`` confirmed and no task waiting), or ``resumed`` itself when the system never recovered,
    so that what follows is judged.
    """

    fault: str
    start: float
    resumed: float
    recovered: float | None
    end: float

    @property
    def recovery_s(self) -> float | None:
        return None if self.recovered is None else self.recovered - self.resumed

    def overlaps(self, start: float, end: float) -> bool:
        return self.start <= end and self.end >= start


@dataclass(frozen=True, slots=True)
class Staleness:
    bound_s: float
    judged: int  # reads that had a commit of their row to honour
    stale: int  # ... and returned an older version
    worst_late_s: float  # how long after that commit the latest such read started
    examples: tuple[str, ...]


def staleness(
    reads: Mapping[str, Sequence[Record]],
    commits: Sequence[Commit],
    windows: Sequence[FaultWindow],
    bound_s: float,
    examples: int = 5,
) -> Staleness:
    """Stale reads at ``bound_s``: see the module docstring. Failed reads (no version) are not judged."""
    honoured: dict[int, tuple[list[float], list[int]]] = {}  # row -> commit times, running max version
    for commit in sorted(commits, key=lambda c: c.at):
        if any(w.overlaps(commit.at, commit.at + bound_s) for w in windows):
            continue
        times, versions = honoured.setdefault(commit.row, ([], []))
        times.append(commit.at)
        versions.append(max(commit.version, versions[-1] if versions else commit.version))
    judged = stale = 0
    worst = 0.0
    found: list[str] = []
    for name, records in reads.items():
        for started, _ended, row, version, _source in records:
            if version < 0 or row not in honoured:
                continue
            times, versions = honoured[row]
            k = bisect.bisect_right(times, started - bound_s)
            if k == 0:
                continue
            judged += 1
            if version < versions[k - 1]:
                stale += 1
                late = started - times[k - 1]
                worst = max(worst, late)
                if len(found) < examples:
                    found.append(
                        f"{name} at {stamp(started)} read row {row} v{version}; v{versions[k - 1]} was"
                        f" committed at {stamp(times[k - 1])} ({late:.2f} s before)"
                    )
    return Staleness(bound_s, judged, stale, worst, tuple(found))


def reads_within(reads: Mapping[str, Sequence[Record]], start: float, end: float) -> dict[str, int]:
    """Reads that started within [start, end], by where they were served from (and failures)."""
    counts: dict[str, int] = {}
    for records in reads.values():
        for started, _ended, _row, _version, source in records:
            if start <= started <= end:
                counts[SOURCES[source]] = counts.get(SOURCES[source], 0) + 1
    return counts


@dataclass(frozen=True, slots=True)
class Mismatch:
    process: str
    row: int
    read: int  # the version the process returned (-1: none, or the read failed)
    source: str
    truth: int  # the version in Postgres


@dataclass(slots=True)
class LostCheck:
    """One "nothing lost" check: every row through every process, against Postgres."""

    label: str
    at: float
    compared: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    first_pass: int = 0  # mismatches before the re-check (a pub/sub message still on its way)


def compare(seen: Mapping[str, Sequence[tuple[int, str]]], truth: Mapping[int, int]) -> tuple[int, list[Mismatch]]:
    """(pairs compared, mismatches): what each process read for each row against Postgres."""
    compared = 0
    mismatches = []
    for process, versions in seen.items():
        for row, (version, source) in enumerate(versions):
            compared += 1
            if version != truth.get(row):
                mismatches.append(Mismatch(process, row, version, source, truth.get(row, -1)))
    return compared, mismatches


def rows_of(mismatches: Iterable[Mismatch]) -> list[int]:
    return sorted({m.row for m in mismatches})

"""What a scenario found: its figures, what failed and the evidence, as text and as a README row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.chaos.checks import ASSERTED_BOUND_S, BOUNDS_S, FaultWindow, LostCheck, Staleness


@dataclass
class ScenarioReport:
    fault: str  # the scenario's key, e.g. "celery-killed-in-burst"
    title: str  # what was done, for the README
    mode: str
    windows: list[FaultWindow] = field(default_factory=list)
    reads: int = 0
    staleness: dict[float, Staleness] = field(default_factory=dict)
    lost_checks: list[LostCheck] = field(default_factory=list)
    quiet: list[str] = field(default_factory=list)  # how each wait for quiet ended
    cache_errors: list[str] = field(default_factory=list)
    db_errors: int = 0
    failures: list[str] = field(default_factory=list)  # what breaks a promise; the test asserts none
    evidence: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # figures of this fault
    timeline: list[str] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)  # the end of each process's log
    log_dir: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def lost(self) -> int:
        return sum(len(check.mismatches) for check in self.lost_checks)

    @property
    def recoveries_s(self) -> list[float | None]:
        return [w.recovery_s for w in self.windows]

    def stale_at(self, bound: float) -> int:
        found = self.staleness.get(bound)
        return -1 if found is None else found.stale

    def judge(self) -> None:
        """Add the failures every scenario shares to those the scenario found itself."""
        if self.cache_errors:
            self.failures.append(f"{len(self.cache_errors)} reads broken by the cache: {self.cache_errors[:3]}")
        late = self.staleness.get(ASSERTED_BOUND_S)
        if late is not None and late.stale:
            self.failures.append(
                f"{late.stale} reads outside fault windows returned a version older than one committed more than"
                f" {ASSERTED_BOUND_S:g} s before they started: {list(late.examples)}"
            )
        for check in self.lost_checks:
            if check.mismatches:
                shown = [
                    f"{m.process} row {m.row}: v{m.read} ({m.source}), Postgres v{m.truth}"
                    for m in check.mismatches[:8]
                ]
                self.failures.append(
                    f"{check.label}: {len(check.mismatches)} of {check.compared} reads differ from Postgres"
                    f" (rows {sorted({m.row for m in check.mismatches})[:20]}): {shown}"
                )
        for window in self.windows:
            if window.recovered is None:
                self.failures.append(f"{window.fault}: the system did not recover (nothing processed after it)")

    def figures(self) -> str:
        stale = " / ".join(f"{self.stale_at(b)}" for b in BOUNDS_S)
        judged = self.staleness[ASSERTED_BOUND_S].judged if ASSERTED_BOUND_S in self.staleness else 0
        recoveries = ", ".join("never" if r is None else f"{r:.2f} s" for r in self.recoveries_s) or "-"
        return (
            f"{self.fault} ({self.mode}): {len(self.windows)} injection(s); {self.reads} reads, {judged} judged"
            f" outside faults; stale at {'/'.join(f'{b:g}' for b in BOUNDS_S)} s: {stale}; lost {self.lost} in"
            f" {sum(c.compared for c in self.lost_checks)} compared; recovery {recoveries}"
        )

    def explain(self) -> str:
        """Everything someone needs to see why it failed, for the assertion message."""
        parts = ["", self.figures(), "", "FAILURES:", *[f"- {f}" for f in self.failures]]
        if self.evidence:
            parts += ["", "EVIDENCE:", *[f"  {e}" for e in self.evidence]]
        parts += ["", f"FACTS: {self.facts}", "", "QUIET: " + " | ".join(self.quiet)]
        parts += ["", "TIMELINE:", *[f"  {line}" for line in self.timeline]]
        for name, tail in self.logs.items():
            parts += ["", f"LOG {name} (last lines):", tail]
        parts += ["", f"all logs: {self.log_dir}"]
        return "\n".join(parts)

    def table_row(self) -> str:
        """A row of the README's reliability table."""
        judged = self.staleness[ASSERTED_BOUND_S].judged if ASSERTED_BOUND_S in self.staleness else 0
        stale = " / ".join(f"{self.stale_at(b):,}" for b in BOUNDS_S)
        known = [r for r in self.recoveries_s if r is not None]
        if not self.windows:
            recovery = "-"
        elif len(known) < len(self.windows):
            recovery = f"never ({len(self.windows) - len(known)} of {len(self.windows)})"
        else:
            recovery = f"{min(known):.2f}-{max(known):.2f} s" if len(known) > 1 else f"{known[0]:.2f} s"
        compared = sum(c.compared for c in self.lost_checks)
        result = "pass" if self.ok else "**FAIL**"
        return (
            f"| {self.title} | {len(self.windows)} | {judged:,} of {self.reads:,} | {stale} |"
            f" {self.lost:,} of {compared:,} | {recovery} | {result} |"
        )


TABLE_HEADER = (
    "| fault (while readers read and a writer commits) | injections | reads judged outside faults |"
    " stale at 0.1 / 0.5 / 1 s | lost (reads differing from Postgres once quiet) | recovery | result |\n"
    "|---|---|---|---|---|---|---|"
)

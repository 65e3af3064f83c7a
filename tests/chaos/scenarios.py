"""The scenarios: a running system, a fault injected (and repeated in the long mode), the checks.

A scenario warms the system up, injects its fault, lets the workload run on, and checks that
nothing was lost once the system is quiet (after each injection but the last with the writer
paused, then after the workload stopped). Its report holds the figures and, when a promise broke,
what broke and the evidence.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devtools.embedded import EmbeddedPostgres
from tests.chaos import faults
from tests.chaos.checks import BOUNDS_S, reads_within, rows_of, staleness
from tests.chaos.mode import ChaosMode
from tests.chaos.reader import SOURCE_CODE
from tests.chaos.report import ScenarioReport
from tests.chaos.system import CATCH_UP_WITHIN_S, ChaosSystem
from tests.chaos.table import covering_scopes
from tests.chaos.timeline import stamp

Inject = Callable[[ChaosSystem, ScenarioReport, random.Random], faults.Followup | None]


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str  # for the README's table
    inject: Inject


SCENARIOS = {
    s.key: s
    for s in (
        Scenario(
            "celery-killed-in-burst",
            "1. Celery worker: SIGKILL of its process group in a burst of 200 updates, restart 2 s later",
            faults.kill_celery_in_burst,
        ),
        Scenario(
            "celery-hung-then-killed",
            "1. Celery worker hung (SIGSTOP) while Redis hands it a task, then SIGKILL, restart 2 s later",
            faults.kill_hung_celery_after_push,
        ),
        Scenario(
            "listener-killed",
            "2. Listener: SIGKILL in a burst, restart 2 s later",
            faults.kill_listener_in_burst,
        ),
        Scenario(
            "postgres-restart",
            "3. Postgres: restart (fast shutdown) in a burst",
            faults.restart_postgres_in_burst,
        ),
        Scenario(
            "redis-restart",
            "4. Redis (cache and broker): restart, empty, while the worker executes a task (5 in a row)",
            faults.restart_redis_while_a_task_runs,
        ),
        Scenario(
            "redis-restart-task-in-flight",
            "4. Redis: restart while a task waits in the broker and readers hold the old row in memory",
            faults.restart_redis_with_a_task_in_flight,
        ),
        Scenario(
            "subscriber-killed",
            "5. CLIENT KILL of one reader's eviction subscriber in a burst",
            faults.kill_subscriber_connection,
        ),
        Scenario(
            "redis-paused",
            "6. Redis paused 3 s (DEBUG SLEEP) under reads",
            faults.pause_redis,
        ),
    )
}


def run_scenario(key: str, pg: EmbeddedPostgres, mode: ChaosMode, log_dir: Path, seed: int = 1) -> ScenarioReport:
    scenario = SCENARIOS[key]
    report = ScenarioReport(key, scenario.title, mode.name, log_dir=str(log_dir))
    rng = random.Random(seed)
    followups: list[faults.Followup] = []
    with ChaosSystem(key, pg, mode, log_dir, seed) as system:
        system.writer.start()
        system.run_for(mode.warm_s)
        for n in range(1, mode.repeats + 1):
            try:
                followup = scenario.inject(system, report, rng)
            except Exception:
                report.failures.append(f"injection {n} could not complete:\n{traceback.format_exc()}")
                break
            if followup is not None:
                followups.append(followup)
            system.run_for(mode.between_s)
            if n < mode.repeats:
                system.writer.pause()
                system.check_nothing_lost(f"after injection {n}")
                system.writer.resume()
        system.writer.stop()
        system.check_nothing_lost("after the workload stopped")
        finish(system, report, followups)
    return report


def finish(system: ChaosSystem, report: ScenarioReport, followups: list[faults.Followup]) -> None:
    """Gather what every process recorded, run the checks, and judge."""
    for name, alive in (("Celery worker", system.celery.alive), ("listener", system.listener.alive)):
        if not alive:
            child = system.celery if name == "Celery worker" else system.listener
            report.failures.append(f"the {name} exited (code {child.returncode}); its last lines:\n{child.tail(15)}")
    reads = system.collect_reads()
    system.dump(reads)
    commits = system.writer.snapshot()
    report.windows = list(system.windows)
    report.reads = sum(len(records) for records in reads.values())
    report.staleness = {bound: staleness(reads, commits, report.windows, bound) for bound in BOUNDS_S}
    report.lost_checks = list(system.lost_checks)
    report.quiet = list(system.quiet)
    report.cache_errors = [e for r in system.readers for e in r.cache_errors]
    report.db_errors = sum(1 for rs in reads.values() for r in rs if r[4] == SOURCE_CODE["db_error"])
    report.facts.update(
        commits=len(commits),
        writer_failures=len(system.writer.failures),
        listener=system.listener_counts(),
        celery=system.celery_counts(),
        db_errors=report.db_errors,
        reads_in_windows=[reads_within(reads, w.start, w.end) for w in report.windows],
    )
    never = [q for q in report.quiet if q.startswith("NOT")]
    if never:
        report.failures.append(f"work was left undone: {never}")
    for fault in system.caught_up_late:
        report.failures.append(f"{fault}: the backlog it held back did not drain within {CATCH_UP_WITHIN_S:.0f} s")
    for followup in followups:
        followup(system, report)
    explain_lost(system, report)
    report.judge()
    report.timeline = system.timeline.lines()
    report.logs = system.log_tails(25)


def explain_lost(system: ChaosSystem, report: ScenarioReport) -> None:
    """For each row that stayed stale: its last commit, and the invalidations seen after it."""
    assert system.observer is not None
    commits = system.writer.snapshot()
    for check in report.lost_checks:
        for row in rows_of(check.mismatches)[:10]:
            last = max((c for c in commits if c.row == row and c.at < check.at), key=lambda c: c.at, default=None)
            if last is None:
                continue
            inside = [w.fault for w in report.windows if w.start <= last.at <= w.end]
            seen = system.observer.covering(covering_scopes(row, system.mode.tenants), last.at)
            report.evidence.append(
                f"{check.label}: row {row} last committed v{last.version} at {stamp(last.at)}"
                f" ({'in fault window: ' + inside[0] if inside else 'outside fault windows'});"
                f" invalidations covering it since: {[stamp(at) for at, _ in seen] or 'none'}"
            )

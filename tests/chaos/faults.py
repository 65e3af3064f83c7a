"""The faults, each injected once into a running system (the scenario repeats them).

Each injection records its fault window (``ChaosSystem.recovery``) and may leave the scenario a
check of its own for the end of the run (``Followup``), with what it saw on the way in the timeline.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from collections import Counter
from collections.abc import Callable
from functools import partial

import redis

from tests.chaos import probes
from tests.chaos.reader import SOURCES, ReaderProcess
from tests.chaos.report import ScenarioReport
from tests.chaos.system import ChaosSystem, wait_broker_idle
from tests.chaos.table import covering_scopes
from tests.chaos.timeline import sleep_until, stamp, wait_for
from tests.chaos.writer import Commit

RESTART_AFTER_S = 2.0  # a killed process is started again this long after its kill
WORST_MOMENT_ATTEMPTS = 5
REDIS_RESTARTS = 5  # per injection of the Redis restart while a task runs
# Called once the workload stopped and every reader reported: adds failures and evidence.
Followup = Callable[[ChaosSystem, ScenarioReport], None]


def fault_rows(system: ChaosSystem, rng: random.Random, count: int) -> list[int]:
    """``count`` rows that the background updates never touch, so that only the fault's own
    commits change them and nothing later hides an invalidation that was lost."""
    candidates = list(range(system.mode.background_rows, system.mode.rows))
    return rng.sample(candidates, min(count, len(candidates)))


def start_burst(system: ChaosSystem, rng: random.Random) -> float:
    """Start a burst of updates of distinct rows; return when it began, once half of it is committed.

    The burst belongs to the fault (its window starts with the burst): a burst on a small machine
    can hold changes back longer than the staleness bound by itself."""
    rows = fault_rows(system, rng, system.mode.burst)
    began = system.timeline.mark(f"burst of {len(rows)} updates begins")
    system.writer.burst(rows)
    wait_for(lambda: system.writer.burst_left <= len(rows) // 2, 60, "half the burst committed", every=0.005)
    return began


# -- 1. the Celery invalidation worker ------------------------------------------------------------
def kill_celery_in_burst(system: ChaosSystem, report: ScenarioReport, rng: random.Random) -> Followup | None:
    began = start_burst(system, rng)
    killed = system.kill(system.celery)
    sleep_until(killed + RESTART_AFTER_S)
    system.recovery("SIGKILL of the Celery worker in a burst", began, killed, system.start_celery())
    return None


def kill_hung_celery_after_push(system: ChaosSystem, report: ScenarioReport, rng: random.Random) -> Followup | None:
    """The worst moment on purpose: the worker's consumer waits in BRPOP, the worker hangs
    (SIGSTOP), the listener pushes a task, Redis hands it to the hung consumer, and the worker is
    killed before it could record it as unacknowledged."""
    writer = system.writer
    writer.pause()
    hung_at: float | None = None
    handed: tuple[int, Commit] | None = None
    for attempt in range(1, WORST_MOMENT_ATTEMPTS + 1):
        wait_broker_idle(system)
        (row,) = fault_rows(system, rng, 1)  # a row of its own each time: an earlier task may have run
        for reader in system.readers:
            reader.check()  # every reader now holds every row in its memory tier, this one included
        wait_for(lambda: probes.consumer_blocked(system.broker_url), 30, "the worker's consumer waits in BRPOP")
        stopped = system.kill(system.celery, signal.SIGSTOP)
        hung_at = hung_at or stopped
        states = system.celery.group_states()
        commit = writer.commit_one(row)
        system.timeline.mark(f"committed row {row} v{commit.version} (attempt {attempt}); worker: {states}", commit.at)
        # Redis serves the hung consumer's BRPOP with the task the listener pushes: the connection
        # is no longer blocked (its process cannot send anything else while stopped).
        pushed = wait_for(
            lambda: not probes.consumer_blocked(system.broker_url),
            30,
            "the listener pushes the commit's task and Redis hands it to the hung consumer",
        )
        queued, unacked = probes.broker_backlog(system.broker_url)
        system.timeline.mark(
            f"the hung consumer's BRPOP was served; broker: {queued} queued, {unacked} unacked"
            f" {probes.unacked_tasks(system.broker_url) if unacked else ''}",
            pushed,
        )
        if (queued, unacked) == (0, 0):
            system.timeline.mark("the task was handed to the hung consumer (nothing queued, nothing unacked)")
            handed = (row, commit)
            break
        system.timeline.mark("the task did not reach the hung consumer; the worker goes on, and again")
        system.celery.signal_group(signal.SIGCONT)
    killed = system.kill(system.celery)
    sleep_until(killed + RESTART_AFTER_S)
    restarted = system.start_celery()
    writer.resume()
    assert hung_at is not None
    system.recovery("Celery worker hung, handed a task, then SIGKILL", hung_at, hung_at, restarted)
    if handed is None:
        report.failures.append(f"harness: the task never reached the hung consumer in {WORST_MOMENT_ATTEMPTS} tries")
        return None
    return expect_invalidation(*handed, killed, "the task handed to the hung worker")


def expect_invalidation(row: int, commit: Commit, after: float, what: str) -> Followup:
    """A follow-up: an invalidation covering ``row`` must arrive after ``after``."""

    def followup(system: ChaosSystem, report: ScenarioReport) -> None:
        assert system.observer is not None
        seen = system.observer.covering(covering_scopes(row, system.mode.tenants), after)
        if seen:
            report.evidence.append(f"row {row} (v{commit.version}): {what} was applied ({len(seen)} covering events)")
        else:
            report.failures.append(
                f"{what} (row {row} v{commit.version}, committed {stamp(commit.at)}) was never applied:"
                " no invalidation covering the row arrived after it"
            )

    return followup


# -- 2. the listener ------------------------------------------------------------------------------
def kill_listener_in_burst(system: ChaosSystem, report: ScenarioReport, rng: random.Random) -> Followup | None:
    began = start_burst(system, rng)
    killed = system.kill(system.listener)
    sleep_until(killed + RESTART_AFTER_S)
    system.recovery("SIGKILL of the listener in a burst", began, killed, system.start_listener())
    return None


# -- 3. Postgres ----------------------------------------------------------------------------------
def restart_postgres_in_burst(system: ChaosSystem, report: ScenarioReport, rng: random.Random) -> Followup | None:
    began = start_burst(system, rng)
    stopped = system.timeline.mark("Postgres: fast shutdown")
    system.pg.stop()
    restarted = system.timeline.mark("Postgres is down; starting it again")
    system.pg.start()
    system.timeline.mark("Postgres accepts connections again")
    system.recovery("Postgres restarted (fast shutdown) in a burst", began, stopped, restarted)
    return None


# -- 4. Redis (the cache and the broker) ------------------------------------------------------------
def restart_redis(system: ChaosSystem) -> tuple[float, float]:
    stopped = system.timeline.mark("Redis: shutdown (no persistence: it comes back empty)")
    system.redis.stop()
    restarted = system.timeline.mark("Redis is down; starting it again on the same port")
    system.redis.start()
    return stopped, restarted


def restart_redis_while_a_task_runs(system: ChaosSystem, report: ScenarioReport, rng: random.Random) -> Followup | None:
    """Redis restarts while the worker executes a task and waits in BRPOP for the next, several
    times in a row (a lost broker shows on whichever of the worker's connections it reads first,
    and the paths differ). Its pool processes are held (SIGSTOP, as a slow task would hold them),
    one update is committed, and once the worker holds its task Redis restarts; then the pool
    goes on."""
    first_stop = 0.0
    for n in range(1, REDIS_RESTARTS + 1):
        system.writer.pause()
        wait_broker_idle(system)
        pool = [pid for pid in system.celery.group_states() if pid != system.celery.pid]
        for pid in pool:
            os.kill(pid, signal.SIGSTOP)
        held_at = system.timeline.mark(f"SIGSTOP to the Celery pool processes {pool}: a task stays in execution")
        (row,) = fault_rows(system, rng, 1)
        commit = system.writer.commit_one(row)
        system.timeline.mark(f"committed row {row} v{commit.version}", at=commit.at)
        held = wait_for(lambda: probes.broker_backlog(system.broker_url) == (0, 1), 30, "the worker holds the task")
        system.timeline.mark(f"the worker holds {probes.unacked_tasks(system.broker_url)}", at=held)
        stopped, restarted = restart_redis(system)
        first_stop = first_stop or stopped
        for pid in pool:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        system.timeline.mark("SIGCONT to the Celery pool processes")
        system.writer.resume()
        window = system.recovery(f"Redis restart {n} while a task runs", held_at, stopped, restarted)
        if window.recovered is None:
            break  # no worker left to try again with
    return every_reader_resubscribed(first_stop)


def restart_redis_with_a_task_in_flight(
    system: ChaosSystem, report: ScenarioReport, rng: random.Random
) -> Followup | None:
    """A window in flight when Redis restarts: its task waits in the broker (no worker consumes),
    every reader holds the row's old version in its memory tier, then Redis restarts empty. The
    memory tiers must drop what they hold, and the lost invalidation must be sent again."""
    writer = system.writer
    writer.pause()
    wait_broker_idle(system)
    (row,) = fault_rows(system, rng, 1)
    stopped_worker = system.timeline.mark("Celery worker: graceful stop (nothing consumes the queue)")
    system.celery.stop()
    before = [reader.check()[row] for reader in system.readers]
    commit = writer.commit_one(row)
    system.timeline.mark(f"committed row {row} v{commit.version}", at=commit.at)
    # the listener pushed the task; it is not confirmed (nothing applies it), it waits in the queue
    wait_for(lambda: probes.broker_backlog(system.broker_url)[0] >= 1, 30, "the listener pushes its task")
    queued, _ = probes.broker_backlog(system.broker_url)
    held = [reader.check()[row] for reader in system.readers]
    system.timeline.mark(f"its task waits in the broker ({queued} queued); readers serve {held} (before: {before})")
    if any(version != commit.version - 1 or source != "memory" for version, source in held):
        report.failures.append(f"harness: readers did not all hold row {row} v{commit.version - 1} in memory: {held}")
    stopped, restarted = restart_redis(system)
    for reader in system.readers:
        wait_for(partial(subscribed, reader), 30, f"{reader.config.name} subscribes again")
    after = [reader.check()[row] for reader in system.readers]
    system.timeline.mark(f"after the restart, readers serve row {row} as {after}")
    for reader, (version, source) in zip(system.readers, after, strict=True):
        if version != commit.version:
            report.failures.append(
                f"{reader.config.name} still served row {row} v{version} ({source}) after Redis restarted:"
                f" its memory tier was not flushed (Postgres has v{commit.version})"
            )
    system.start_celery()
    writer.resume()
    system.recovery("Redis restarted with a task in flight", stopped_worker, stopped, restarted)
    return expect_invalidation(row, commit, restarted, "the invalidation in flight when Redis restarted")


def subscribed(reader: ReaderProcess) -> bool:
    return bool(reader.stats()["subscribed"])


def every_reader_resubscribed(since: float) -> Followup:
    def followup(system: ChaosSystem, report: ScenarioReport) -> None:
        for reader in system.readers:
            drops = [t for t in reader.transitions if t[0] >= since and not t[1]]
            back = [t for t in reader.transitions if t[0] >= since and t[1]]
            report.evidence.append(
                f"{reader.config.name}: subscription lost at {[round(t[0] - since, 2) for t in drops]} s"
                f" (memory entries then {[t[3] for t in drops]}), back at {[round(t[0] - since, 2) for t in back]} s"
            )
            if not back:
                report.failures.append(f"{reader.config.name} never subscribed again after Redis restarted")

    return followup


# -- 5. one reader's eviction subscriber ------------------------------------------------------------
def kill_subscriber_connection(system: ChaosSystem, report: ScenarioReport, rng: random.Random) -> Followup | None:
    reader = system.readers[0]
    connects = reader.stats()["connects"]
    found = probes.subscriber_connections(system.redis.url, reader.pid)
    if len(found) != 1:
        report.failures.append(f"harness: expected one subscriber connection of {reader.config.name}, found {found}")
        return None
    began = start_burst(system, rng)  # evictions are flowing when the connection goes
    with redis.Redis.from_url(system.redis.url) as client:
        killed = system.timeline.mark(f"CLIENT KILL ID {found[0]['id']} ({reader.config.name}'s subscriber)")
        client.client_kill_filter(_id=found[0]["id"])
    back = wait_for(lambda: reader.stats()["connects"] > connects, 30, f"{reader.config.name} subscribes again")
    system.timeline.mark(f"{reader.config.name} subscribed again", at=back)
    system.recovery("CLIENT KILL of a reader's subscriber in a burst", began, killed, killed, recovered=back)
    return None


# -- 6. Redis paused ----------------------------------------------------------------------------------
def pause_redis(system: ChaosSystem, report: ScenarioReport, rng: random.Random) -> Followup | None:
    seconds = 3
    done = threading.Event()

    def sleep_redis() -> None:
        with redis.Redis.from_url(system.redis.url, socket_timeout=seconds + 30) as client:
            client.execute_command("DEBUG", "SLEEP", seconds)
        done.set()

    paused = system.timeline.mark(f"DEBUG SLEEP {seconds}")
    threading.Thread(target=sleep_redis, daemon=True).start()
    resumed = wait_for(done.is_set, seconds + 30, "Redis answers again")
    system.timeline.mark("Redis answers again", at=resumed)
    system.recovery(f"Redis paused {seconds} s", paused, paused, resumed)
    return reads_went_on(paused, resumed)


def reads_went_on(paused: float, resumed: float) -> Followup:
    """Every reader answered reads while Redis did not (from its memory tier, or the database)."""

    def followup(system: ChaosSystem, report: ScenarioReport) -> None:
        for reader in system.readers:
            during = [r for r in reader.records if paused <= r[0] <= resumed]
            answered = Counter(SOURCES[r[4]] for r in during if r[1] <= resumed and r[3] >= 0)
            slowest = max((r[1] - r[0] for r in during), default=0.0)
            report.evidence.append(
                f"{reader.config.name}: {sum(answered.values())} reads answered while Redis was paused"
                f" {dict(answered)}; the slowest read that started then took {slowest * 1000:.0f} ms"
            )
            if not answered:
                report.failures.append(f"{reader.config.name} answered no read while Redis was paused")

    return followup

"""The whole system under test, started and stopped as one: Redis (cache and broker), the listener,
a Celery invalidation worker, reader processes, the writer and the eviction observer.

Postgres is given (one server for the suite: starting it is the slow part); everything else is
started per scenario and always stopped, whatever happened. Each process logs to its own file in
``log_dir`` next to the harness's timeline.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from devtools.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.chaos import probes
from tests.chaos.checks import FaultWindow, LostCheck, compare
from tests.chaos.children import Child
from tests.chaos.mode import ChaosMode
from tests.chaos.observer import EvictionObserver
from tests.chaos.reader import ReaderConfig, ReaderProcess, read_once
from tests.chaos.table import create_table, current_versions
from tests.chaos.timeline import Timeline, WaitTimeout, sleep_until, wait_for
from tests.chaos.writer import Commit, Writer

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "chaos:"
CHANNEL = "chaos:evictions"
# Seconds before a task held by a dead worker is delivered again (the default is 300).
VISIBILITY_TIMEOUT_S = 5
QUIET_WITHIN_S = 40.0  # a visibility timeout plus kombu's first sweep for orphans (10 s), with room
RECOVERY_WITHIN_S = 30.0
CATCH_UP_WITHIN_S = 60.0


class ChaosSystem:
    def __init__(self, name: str, pg: EmbeddedPostgres, mode: ChaosMode, log_dir: Path, seed: int = 1) -> None:
        self.name, self.pg, self.mode, self.log_dir, self.seed = name, pg, mode, log_dir, seed
        log_dir.mkdir(parents=True, exist_ok=True)
        self.slot = "chaos_" + re.sub(r"[^a-z0-9_]", "_", name.lower())
        self.timeline = Timeline(log_dir / "timeline.log")
        self.redis = EmbeddedRedis(extra=["--enable-debug-command", "yes"])
        self.observer: EvictionObserver | None = None
        self.celery_runs: list[Child] = []
        self.listener_runs: list[Child] = []
        self.readers: list[ReaderProcess] = []
        self.writer = Writer(
            pg.dsn, list(range(mode.background_rows)), mode.tenants, mode.write_gap_s, seed=seed * 7919
        )
        self.windows: list[FaultWindow] = []
        self.lost_checks: list[LostCheck] = []
        self.quiet: list[str] = []
        self.caught_up_late: list[str] = []  # faults whose backlog did not drain within the bound

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> ChaosSystem:
        try:
            self.start()
        except BaseException:
            self.close(failed=True)
            raise
        return self

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        self.close(failed=error is not None)

    def start(self) -> None:
        create_table(self.pg.dsn, self.mode.rows, self.mode.tenants)
        probes.drop_slot(self.pg.dsn, self.slot)  # left by an earlier run that could not clean up
        self.redis.start()
        self.observer = EvictionObserver(self.redis.url, CHANNEL).start()
        # every process starts at once (importing is the slow part), then each is waited for
        self.readers = [ReaderProcess(self.reader_config(i)) for i in range(self.mode.readers)]
        self.start_celery(wait=False)
        self.start_listener()
        self.celery.wait_for_output(" ready.", 90)
        wait_for(self.slot_ready, 60, f"the listener creates slot {self.slot}", every=0.1)
        for reader in self.readers:
            reader.wait_ready()
        self.timeline.mark(
            f"up: Redis :{self.redis.port}, Postgres :{self.pg.port}, slot {self.slot}, listener pid"
            f" {self.listener.pid}, celery pid {self.celery.pid}, readers {[r.pid for r in self.readers]}"
        )

    def close(self, failed: bool = False) -> None:
        """Stop everything, in an order where nothing waits for what is already gone; never raises."""
        steps = [
            ("writer", self.writer.stop),
            *[(r.config.name, r.stop) for r in self.readers],
            *[(c.name, c.stop) for c in self.listener_runs + self.celery_runs],
            ("observer", self.observer.stop if self.observer else lambda: None),
            ("slot", lambda: probes.drop_slot(self.pg.dsn, self.slot)),
            ("redis", self.redis.cleanup),
        ]
        for name, step in steps:
            try:
                step()
            except Exception:
                print(f"chaos harness: stopping {name} failed:\n{traceback.format_exc()}", file=sys.stderr)
        if failed:
            print(self.diagnostics())

    def diagnostics(self) -> str:
        parts = ["TIMELINE:", *self.timeline.lines()]
        for name, tail in self.log_tails().items():
            parts += ["", f"LOG {name}:", tail]
        return "\n".join([*parts, "", f"all logs: {self.log_dir}"])

    def log_tails(self, lines: int = 40) -> dict[str, str]:
        """The end of the listener's and Celery's logs, without their routine lines (status reports,
        tasks received and succeeded) but for the last few of them."""
        tails = {}
        for child in (self.listener_runs[-1:] or []) + (self.celery_runs[-1:] or []):
            tails[child.log.name] = "\n".join(without_routine(child.tail(100_000).splitlines())[-lines:])
        return tails

    # -- configuration --------------------------------------------------------------------------
    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/1"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARED_CACHE_")}
        return env | {
            "PYTHONUNBUFFERED": "1",
            "SHARED_CACHE_REDIS_URL": self.redis.url,
            "SHARED_CACHE_KEY_PREFIX": PREFIX,
            "SHARED_CACHE_EVICTION_CHANNEL": CHANNEL,
            "SHARED_CACHE_WORKER_BROKER_URL": self.broker_url,
            "SHARED_CACHE_WORKER_DATABASE_URL": self.pg.dsn,
            "SHARED_CACHE_WORKER_SLOT_NAME": self.slot,
            "SHARED_CACHE_WORKER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
            "SHARED_CACHE_WORKER_EMBEDDING_PROVIDER": "none",
        }

    def reader_config(self, index: int, once: bool = False) -> ReaderConfig:
        name = "fresh process" if once else f"reader {index}"
        return ReaderConfig(
            name=name,
            redis_url=self.redis.url,
            dsn=self.pg.dsn,
            prefix=PREFIX,
            channel=CHANNEL,
            rows=self.mode.rows,
            hot_rows=self.mode.background_rows,
            tenants=self.mode.tenants,
            read_gap_s=self.mode.read_gap_s,
            seed=self.seed * 1000 + index,
            log=str(self.log_dir / ("fresh.log" if once else f"reader{index}.log")),
            once=once,
        )

    # -- the listener and the Celery worker ---------------------------------------------------------
    @property
    def celery(self) -> Child:
        return self.celery_runs[-1]

    @property
    def listener(self) -> Child:
        return self.listener_runs[-1]

    def start_celery(self, wait: bool = True) -> float:
        """Start a Celery worker (prefork, two pool processes); wait until it is ready."""
        n = len(self.celery_runs) + 1
        argv = [
            sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "invalidation",
            "-c", "2", "--pool", "prefork", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-l", "info", "-n", f"chaos{n}@%h",
        ]  # fmt: skip
        child = Child(f"celery worker #{n}", argv, self.env, self.log_dir / "celery.log", ROOT).start()
        self.celery_runs.append(child)
        if wait:
            child.wait_for_output(" ready.", 90)
        self.timeline.mark(f"{child.name} started (pid {child.pid})", at=child.started_at)
        return child.started_at

    def start_listener(self) -> float:
        n = len(self.listener_runs) + 1
        argv = [sys.executable, "-m", "worker", "--status-every", "1", "--log-level", "INFO"]
        child = Child(f"listener #{n}", argv, self.env, self.log_dir / "listener.log", ROOT).start()
        self.listener_runs.append(child)
        self.timeline.mark(f"{child.name} started (pid {child.pid})", at=child.started_at)
        return child.started_at

    def slot_ready(self) -> bool:
        if not self.listener.alive:
            raise AssertionError(f"the listener exited ({self.listener.returncode}):\n{self.listener.tail()}")
        return probes.slot_exists(self.pg.dsn, self.slot)

    def kill(self, child: Child, sig: int = signal.SIGKILL) -> float:
        at = self.timeline.mark(f"{signal.Signals(sig).name} to the process group of {child.name} (pid {child.pid})")
        child.signal_group(sig)
        if sig == signal.SIGKILL:
            child.kill()  # reaps it
        return at

    # -- the workload ---------------------------------------------------------------------------------
    def run_for(self, seconds: float) -> None:
        """Let the workload run (readers read, the writer writes) for ``seconds``."""
        time.sleep(seconds)

    def recovery(
        self, fault: str, start: float, injected: float, resumed: float, recovered: float | None = None
    ) -> FaultWindow:
        """Record the fault's window, from ``start`` (the fault's burst, or the fault itself): wait
        (bounded) for the first change committed after ``injected`` to be processed after ``resumed``
        (unless the fault knows its own ``recovered``), then for the backlog it held back to drain."""
        observer = self.observer
        assert observer is not None
        if recovered is not None:
            return self.catch_up(fault, start, resumed, recovered)

        def recovered_yet() -> bool:
            return observer.first_change_after(resumed, injected) is not None or not self.working()

        wait_for(recovered_yet, RECOVERY_WITHIN_S, f"recovery: {fault}", fail=False)
        if observer.first_change_after(resumed, injected) is None:
            why = "" if self.working() else f" ({self.not_working()})"
            self.timeline.mark(f"no change processed after: {fault}{why}")
            window = FaultWindow(fault, start, resumed, None, resumed)
            self.windows.append(window)
            return window
        recovered = observer.first_change_after(resumed, injected) or resumed
        self.timeline.mark(f"first change processed again after: {fault} ({recovered - resumed:.2f} s)", at=recovered)
        return self.catch_up(fault, start, resumed, recovered)

    def catch_up(self, fault: str, start: float, resumed: float, recovered: float) -> FaultWindow:
        """Wait (bounded) until the changes committed before ``resumed`` went through; record the window."""
        before = [c for c in self.writer.snapshot() if c.at < resumed]
        try:
            end = wait_for(lambda: self.caught_up(before[-1] if before else None), CATCH_UP_WITHIN_S, "catching up")
            self.timeline.mark(f"caught up with the backlog of: {fault}", at=end)
        except WaitTimeout:
            end = time.time()
            self.timeline.mark(f"NOT caught up within {CATCH_UP_WITHIN_S:.0f} s with the backlog of: {fault}")
            self.caught_up_late.append(fault)
        window = FaultWindow(fault, start, resumed, recovered, end)
        self.windows.append(window)
        return window

    def working(self) -> bool:
        return self.celery.alive and self.listener.alive

    def not_working(self) -> str:
        dead = [c for c in (self.celery, self.listener) if not c.alive]
        return ", ".join(f"{c.name} exited with code {c.returncode}" for c in dead)

    def caught_up(self, last: Commit | None) -> bool:
        """The listener confirmed ``last`` and no task waits in the broker."""
        try:
            confirmed = last is None or probes.slot_confirmed_past(self.pg.dsn, self.slot, last.lsn)
            return confirmed and probes.broker_backlog(self.broker_url)[0] == 0
        except Exception:
            return False  # Postgres or Redis still away

    def wait_quiet(self) -> float | None:
        """Wait until every commit went through: the slot confirmed past the last one, no task waiting
        in the broker and none delivered and unacknowledged. Returns when, or None (bounded)."""
        last = self.writer.last_commit()
        state = ["not looked yet"]

        def quiet() -> bool:
            try:
                confirmed = last is None or probes.slot_confirmed_past(self.pg.dsn, self.slot, last.lsn)
                queued, unacked = probes.broker_backlog(self.broker_url)
            except Exception as exc:
                state[0] = f"cannot look: {exc!r}"
                return False
            state[0] = f"slot confirmed past the last commit: {confirmed}; tasks queued {queued}, unacked {unacked}"
            if unacked:
                state[0] += f" {probes.unacked_tasks(self.broker_url)}"
            return confirmed and queued == 0 and unacked == 0

        began = time.time()
        at: float | None = None
        if not self.working():
            quiet()  # for the state it reports
            self.quiet.append(f"NOT quiet: {self.not_working()} ({state[0]})")
        else:
            try:
                at = wait_for(quiet, QUIET_WITHIN_S, "quiet", every=0.1)
                self.quiet.append(f"quiet after {at - began:.2f} s")
            except WaitTimeout:
                self.quiet.append(f"NOT quiet after {QUIET_WITHIN_S:.0f} s ({state[0]})")
        self.timeline.mark(self.quiet[-1])
        return at

    def check_nothing_lost(self, label: str) -> LostCheck:
        """Every row through every running reader and a fresh process, against Postgres. Rows that
        differ are read again once a second has passed since quiet (an eviction may still be on its
        way); what still differs then is lost."""
        quiet_at = self.wait_quiet() or time.time()
        check = LostCheck(label, time.time())
        truth = current_versions(self.pg.dsn)
        seen = self.read_everywhere()
        check.compared, first = compare(seen, truth)
        check.first_pass = len(first)
        if first:
            sleep_until(quiet_at + 1.0)
            again = self.read_everywhere({m.process for m in first})
            _, check.mismatches = compare(again, truth)
        self.lost_checks.append(check)
        self.timeline.mark(
            f"{label}: {len(check.mismatches)} of {check.compared} reads differ from Postgres"
            f" ({check.first_pass} before the re-check)"
        )
        return check

    def read_everywhere(self, only: set[str] | None = None) -> dict[str, list[tuple[int, str]]]:
        seen = {r.config.name: r.check() for r in self.readers if only is None or r.config.name in only}
        if only is None or "fresh process" in only:
            seen["fresh process"] = read_once(self.reader_config(len(self.readers), once=True))
        return seen

    def collect_reads(self) -> dict[str, list[Any]]:
        for reader in self.readers:
            reader.stop()
        return {r.config.name: r.records for r in self.readers}

    def dump(self, reads: dict[str, list[Any]]) -> None:
        """Everything recorded, as JSON lines next to the logs, for a look after the fact."""
        import orjson

        def write(name: str, rows: Any) -> None:
            with (self.log_dir / name).open("wb") as out:
                for row in rows:
                    out.write(orjson.dumps(row) + b"\n")

        write("commits.jsonl", ([c.at, c.row, c.version, c.lsn] for c in self.writer.snapshot()))
        write("windows.jsonl", ([w.fault, w.start, w.resumed, w.recovered, w.end] for w in self.windows))
        events = self.observer.snapshot() if self.observer else []
        write("evictions.jsonl", ([at, e.tenant_id, e.scopes, e.caused_at, e.reason, e.origin] for at, e in events))
        write("reads.jsonl", ([name, *record] for name, records in reads.items() for record in records))
        write("subscriptions.jsonl", ([r.config.name, *t] for r in self.readers for t in r.transitions))

    # -- what the logs say ----------------------------------------------------------------------------
    def listener_counts(self) -> dict[str, int]:
        """Totals over the listener's incarnations, from the last status line of each."""
        totals: dict[str, int] = {}
        for child in self.listener_runs:
            lines = [line for line in child.output().splitlines() if " status {" in line]
            if not lines:
                continue
            for key in ("invalidation_tasks", "events", "delivery_retries", "redis_restarts"):
                found = re.search(rf"'{key}': (\d+)", lines[-1])
                totals[key] = totals.get(key, 0) + (int(found.group(1)) if found else 0)
        return totals

    def celery_counts(self) -> dict[str, int]:
        text = "\n".join(child.output() for child in self.celery_runs)
        received = set(re.findall(r"Task shared_cache\.invalidate\[([0-9a-f-]+)\] received", text))
        succeeded = set(re.findall(r"Task shared_cache\.invalidate\[([0-9a-f-]+)\] succeeded", text))
        return {"received": len(received), "succeeded": len(succeeded)}

    def log_lines(self, child: Child, pattern: str) -> list[str]:
        return [line for line in child.output().splitlines() if re.search(pattern, line)]


ROUTINE = re.compile(r" status \{|\] (received|succeeded in)")


def without_routine(lines: list[str], keep: int = 3) -> list[str]:
    routine = [i for i, line in enumerate(lines) if ROUTINE.search(line)]
    dropped = set(routine[:-keep]) if keep else set(routine)
    return [line for i, line in enumerate(lines) if i not in dropped]


def wait_broker_idle(system: ChaosSystem, within: float = 30.0) -> None:
    wait_for(lambda: probes.broker_backlog(system.broker_url) == (0, 0), within, "the broker is idle", every=0.05)

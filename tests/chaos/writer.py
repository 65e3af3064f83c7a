"""The writer: commits updates to the table and never invalidates anything (the worker must).

It runs in a thread of the harness: background updates of random rows, bursts of updates of
distinct rows as fast as Postgres takes them, and single updates the harness commits itself at a
chosen moment (while the background is paused). Each commit is recorded with the wall clock after
Postgres acknowledged it, and with the WAL insert position seen inside it: a slot confirmed past
that position has been confirmed past this commit.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import psycopg

from tests.chaos.table import row_ids
from tests.chaos.timeline import wait_for


@dataclass(frozen=True, slots=True)
class Commit:
    at: float  # wall clock once the commit was acknowledged
    row: int
    version: int
    lsn: str  # WAL insert position inside the transaction, before its commit record


class Writer:
    def __init__(self, dsn: str, rows: list[int], tenants: int, gap_s: tuple[float, float], seed: int) -> None:
        """``rows``: the rows background updates pick from (bursts and single updates take any row)."""
        self.dsn, self.rows, self.tenants, self.gap_s = dsn, rows, tenants, gap_s
        self.rng = random.Random(seed)
        self.commits: list[Commit] = []
        self.failures: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._burst: deque[int] = deque()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    # -- the background thread ------------------------------------------------------------------
    def start(self) -> Writer:
        self._thread.start()
        return self

    def _run(self) -> None:
        conn: Any = None
        backoff = 0.05
        while not self._stop.is_set():
            if self._paused.is_set() and not self._burst:
                self._idle.set()
                time.sleep(0.01)
                continue
            self._idle.clear()
            bursting = bool(self._burst)
            row = self._burst[0] if bursting else self.rng.choice(self.rows)
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
                self.update(conn, row)
                backoff = 0.05
            except psycopg.Error as exc:  # Postgres restarting: the commit did not happen, or not for sure
                self.failures.append((time.time(), f"{type(exc).__name__}: {exc}".strip()))
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            if bursting:
                self._burst.popleft()
            else:
                time.sleep(self.rng.uniform(*self.gap_s))
        self._idle.set()
        if conn is not None:
            conn.close()

    def update(self, conn: Any, row: int) -> Commit:
        tenant, doc = row_ids(row, self.tenants)
        cursor = conn.execute(
            "UPDATE documents SET version = version + 1 WHERE tenant_id = %s AND id = %s"
            " RETURNING version, pg_current_wal_insert_lsn()::text",
            (tenant, doc),
        )
        version, lsn = cursor.fetchone()
        commit = Commit(time.time(), row, int(version), str(lsn))
        with self._lock:
            self.commits.append(commit)
        return commit

    # -- what the harness asks for ----------------------------------------------------------------
    def burst(self, rows: list[int]) -> None:
        """Update these rows one after the other, as fast as possible, before anything else."""
        self._burst.extend(rows)

    @property
    def burst_left(self) -> int:
        return len(self._burst)

    def pause(self, within: float = 30.0) -> None:
        """Stop the background updates (a burst in progress finishes first)."""
        self._idle.clear()  # set again by the thread once it saw the pause (not a stale "idle")
        self._paused.set()
        wait_for(self._idle.is_set, within, "the writer pauses")

    def resume(self) -> None:
        self._paused.clear()

    def commit_one(self, row: int) -> Commit:
        """One update, committed now by the caller's thread (pause the background first)."""
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            return self.update(conn, row)

    def stop(self, within: float = 30.0) -> None:
        self._burst.clear()
        self._stop.set()
        if self._thread.is_alive():  # (never started when the system failed to come up)
            self._thread.join(within)

    def last_commit(self) -> Commit | None:
        with self._lock:
            return self.commits[-1] if self.commits else None

    def snapshot(self) -> list[Commit]:
        with self._lock:
            return list(self.commits)

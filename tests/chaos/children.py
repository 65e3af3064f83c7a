"""Child processes (the listener, Celery workers) in process groups of their own, logging to files.

Each child starts a new session, so a fault can signal its whole group (a Celery worker and its
pool processes) without touching the test runner. No child outlives the harness: ``stop`` ends the
group, an ``atexit`` hook ends whatever is left, and on Linux each child is also told by the kernel
to die with the thread that started it (``PR_SET_PDEATHSIG``), which covers a harness that is itself
killed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.chaos.timeline import stamp, wait_for

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1
_live: set[Child] = set()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Child:
    """One incarnation of a process; its output is appended to ``log`` (shared by incarnations)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
        self.name, self.argv, self.env, self.log, self.cwd = name, argv, env, log, cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.log_offset = 0  # where this incarnation's output starts in the log

    def start(self) -> Child:
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        self.started_at = time.time()
        with self.log.open("ab") as out:
            out.write(f"==== {stamp(self.started_at)} harness: starting {self.name}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # one C call between fork and exec: takes no Python lock
            )
        _live.add(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group (its session leader's pid)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def group_states(self) -> dict[int, str]:
        """State letter of each process in the child's group (``T``: stopped), from /proc."""
        states = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.pid:  # fields: state, ppid, pgrp, ...
                    states[int(stat.parent.name)] = fields[0]
        return states

    def output(self) -> str:
        """This incarnation's output so far."""
        with self.log.open("rb") as handle:
            handle.seek(self.log_offset)
            return handle.read().decode(errors="replace")

    def wait_for_output(self, text: str, within: float) -> float:
        """Wait until this incarnation printed ``text``; fail at once if it exited before."""

        def printed() -> bool:
            if text in self.output():
                return True
            if not self.alive:
                raise AssertionError(f"{self.name} exited ({self.returncode}) before printing {text!r}")
            return False

        return wait_for(printed, within, f"{self.name} prints {text!r}")

    def kill(self) -> None:
        """SIGKILL the whole group and reap the leader."""
        if self.proc is None:
            return
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        _live.discard(self)

    def stop(self, within: float = 20.0) -> None:
        """SIGTERM the group (a graceful stop), SIGKILL whatever is left after ``within`` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal_group(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(within)
        self.kill()  # the leader is gone; pool processes it left behind are not

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@atexit.register
def _end_everything() -> None:
    for child in list(_live):
        child.kill()

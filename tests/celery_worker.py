"""Run a real ``celery worker`` process for the integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class CeleryWorker:
    """``celery -A worker.app worker`` on the given broker, with the library pointed at Redis."""

    def __init__(self, env: dict[str, str], concurrency: int = 1, queues: str = "invalidation,warming") -> None:
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.concurrency = concurrency
        self.queues = queues
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._ready = threading.Event()

    def start(self, timeout: float = 60) -> CeleryWorker:
        args = [
            sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", self.queues,
            "-c", str(self.concurrency), "--pool", "prefork", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-l", "info", "-I", "tests.celery_test_tasks", "-n", f"test{os.getpid()}@%h",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError("celery worker did not start:\n" + "".join(self.lines[-30:]))
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if " ready." in line:
                self._ready.set()

    def child_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def wait_for_line(self, text: str, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

"""The README's first command, for real: ./run starts everything, serves reads, propagates
invalidations, prints its summary, and leaves no process or temp directory behind."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_run_command_end_to_end() -> None:
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARED_CACHE_")}
    proc = subprocess.run(
        [str(ROOT / "run"), "--duration", "8", "--readers", "2"],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=ROOT,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for line in ("redis      : started", "postgres   : started", "celery     : worker ready", "listener   :",
                 "readers    : 2 processes", "summary", "stopped: every child process ended"):  # fmt: skip
        assert line in out, f"missing {line!r} in:\n{out}"

    def summary_number(pattern: str) -> int:
        found = re.search(pattern, out, re.M)
        assert found is not None, f"no {pattern!r} in the summary:\n{out}"
        return int(found.group(1).replace(",", ""))

    reads = summary_number(r"^  reads\s+([\d,]+) by")
    invalidations = summary_number(r"^  invalidations\s+([\d,]+) tasks")
    evictions = summary_number(r"^  evictions\s+([\d,]+) memory-tier")
    assert reads > 100 and invalidations >= 1 and evictions >= 1, out
    assert "commit->evict    p50" in out

    ports = re.findall(r"started on port (\d+)", out)
    assert len(ports) == 2
    leftover = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for marker in (*ports, "devtools.demo", "-m worker --status-every", "celery -A worker.app"):
        assert marker not in leftover, f"{marker} still running:\n{leftover}"
    dirs = re.findall(r"started on port \d+ \(.*?, (/[^)]+)\)", out)
    assert len(dirs) == 2 and not any(os.path.exists(d) for d in dirs), dirs  # its temp directories are gone
    print(f"\n./run took {time.monotonic() - started:.0f}s in all\n{out}")

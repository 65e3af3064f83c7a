"""The README's first command, for real: ./run installs what it needs (the local embedding model
included), starts everything, serves reads, propagates invalidations, warms embeddings, checks its
reads for staleness, prints its summary, and leaves no process or temp directory behind."""

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
        # a wide propagation bound: CI machines are shared, and commit->evict stretches under load
        [str(ROOT / "run"), "--duration", "15", "--readers", "2", "--bound-ms", "3000"],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
        cwd=ROOT,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for line in ("redis      : started", "postgres   : started", "celery     : invalidation worker ready",
                 "celery     : warming worker ready", "listener   :", "warming    : model loaded",
                 "readers    : 2 processes", "query svc  : 1 process", "summary",
                 "stopped: every child process ended"):  # fmt: skip
        assert line in out, f"missing {line!r} in:\n{out}"
    assert "warming    : off" not in out, out

    def summary_number(pattern: str) -> int:
        found = re.search(pattern, out, re.M)
        assert found is not None, f"no {pattern!r} in the summary:\n{out}"
        return int(found.group(1).replace(",", ""))

    stale = summary_number(r"^  stale reads\s+([\d,]+) of")
    checked = summary_number(r"^  stale reads\s+[\d,]+ of ([\d,]+) checked")
    reads = summary_number(r"^  reads\s+([\d,]+) by")
    invalidations = summary_number(r"^  invalidations\s+([\d,]+) tasks")
    evictions = summary_number(r"^  evictions\s+([\d,]+) memory-tier")
    assert stale == 0 and checked >= 50, out
    assert reads > 100 and invalidations >= 1 and evictions >= 1, out
    assert "commit->evict    p50" in out
    warm_tasks = summary_number(r"^  warming\s+([\d,]+) tasks")
    by_warming = summary_number(r"texts embedded: ([\d,]+) by warming")
    on_demand = summary_number(r"([\d,]+) on demand by readers")
    batch_texts = summary_number(r"^  batch lookups\s+[\d,]+ batches of recent chunks, ([\d,]+) texts")
    assert warm_tasks >= 1 and by_warming >= 1 and batch_texts >= 1, out
    assert on_demand <= batch_texts, out
    # the status line shows the stale check first, and the warming figures
    assert re.search(r"\| stale 0 of [\d,]+ checked \(bound 3,000 ms\) \| reads/s", out), out
    warming_line = r"warm tasks [\d,]+ \| texts embedded [\d,]+ \(\d+/s\) \| on demand [\d,]+ \| batch hits"
    assert re.search(warming_line, out), out

    ports = re.findall(r"started on port (\d+)", out)
    assert len(ports) == 2
    pids = [int(p) for p in re.findall(r"\(pid (\d+)", out)]
    assert len(pids) >= 4, out  # redis, two Celery workers, the listener
    leftover = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for port in ports:  # Redis and Postgres name their port on their command line
        assert f" {port}" not in leftover, f"a server on port {port} is still running:\n{leftover}"
    alive = {int(line.split()[0]) for line in leftover.splitlines()[1:] if line.split()}
    assert not alive & set(pids), f"still running: {alive & set(pids)}\n{leftover}"
    dirs = re.findall(r"started on port \d+ \(.*?, (/[^)]+)\)", out)
    assert len(dirs) == 2 and not any(os.path.exists(d) for d in dirs), dirs  # its temp directories are gone
    print(f"\n./run took {time.monotonic() - started:.0f}s in all\n{out}")

"""Where the suite keeps each run's logs and records: a directory of its own per run, so that other
test runs on the machine cannot rotate them away, and the last few runs only."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

LOGS_VARIABLE = "SHARED_CACHE_CHAOS_LOGS"
KEEP_RUNS = 5


def new_run_dir() -> Path:
    """A fresh directory under ``$SHARED_CACHE_CHAOS_LOGS`` (default: ``<tmp>/shared-cache-chaos``);
    older runs beyond the last ``KEEP_RUNS`` are removed."""
    base = Path(os.environ.get(LOGS_VARIABLE) or Path(tempfile.gettempdir()) / "shared-cache-chaos")
    base.mkdir(parents=True, exist_ok=True)
    runs = sorted(p for p in base.iterdir() if p.is_dir())
    for old in runs[: max(0, len(runs) - KEEP_RUNS + 1)]:
        shutil.rmtree(old, ignore_errors=True)
    run = base / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run.mkdir()
    return run

"""The demo's stale-read check can fail: with a part of the invalidation path broken on purpose,
``python -m devtools.demo`` counts stale reads, says so and exits 1 (with every part working,
tests/test_run_command.py shows 0)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("no-subscriber", "WITHOUT the eviction subscriber"),  # memory tiers never hear an invalidation
        ("no-listener", "listener   : NOT started"),  # writes bypass the listener: no cache is invalidated
    ],
)
def test_stale_check_catches_a_broken_invalidation_path(fault: str, says: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARED_CACHE_")}
    args = ["--duration", "10", "--readers", "1", "--no-warming", "--write-interval", "0.1", "--fault", fault]
    proc = subprocess.run(
        [sys.executable, "-m", "devtools.demo", *args], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT
    )
    out = proc.stdout
    assert says in out, out + proc.stderr
    found = re.search(r"^  stale reads\s+([\d,]+) of ([\d,]+) checked reads", out, re.M)
    assert found is not None, out + proc.stderr
    stale, checked = (int(g.replace(",", "")) for g in found.groups())
    assert checked >= 50 and stale >= 1, out
    assert f"FAILED: {stale:,} stale reads" in out
    assert proc.returncode == 1, out
    assert "stopped: every child process ended" in out

"""Periodic maintenance under Celery beat: a real ``celery beat`` process sends the reclaim sweep, a
real worker runs it, on a real Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from devtools.embedded import end_process
from shared_cache import TTL_PERMANENT, CacheManager
from tasks.contracts import RECLAIM_PERMANENT
from tasks.settings import TaskSettings
from tests.celery_worker import CeleryWorker
from tests.waiting import wait_until
from worker.app import beat_schedule

ROOT = Path(__file__).resolve().parent.parent
PREFIX, CHANNEL = "mt:", "mt:evictions"


@pytest.fixture
async def cache(redis_url: str) -> AsyncIterator[CacheManager]:
    mgr = CacheManager.configure(redis_url=redis_url, key_prefix=PREFIX, eviction_channel=CHANNEL)
    yield mgr
    await mgr.close()


def test_the_beat_schedule_sends_the_reclaim_sweep_every_interval() -> None:
    schedule = beat_schedule(TaskSettings(reclaim_interval_s=600))
    entry = {"task": RECLAIM_PERMANENT, "schedule": 600.0, "options": {"expires": 600.0}}
    assert schedule == {"reclaim-permanent": entry}
    assert beat_schedule(TaskSettings(reclaim_interval_s=0)) == {}


def start_beat(env: dict[str, str], schedule: Path) -> subprocess.Popen[str]:
    """``celery -A worker.app beat`` (the documented way to run it), its output drained."""
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.app", "beat", "-s", str(schedule), "-l", "info"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    threading.Thread(target=lambda: list(beat.stdout or []), daemon=True).start()
    return beat


async def test_beat_reclaims_invalidated_permanent_entries_of_the_known_tenants(
    redis_url: str, cache: CacheManager, tmp_path: Path
) -> None:
    env = {
        "SHARED_CACHE_REDIS_URL": redis_url,
        "SHARED_CACHE_KEY_PREFIX": PREFIX,
        "SHARED_CACHE_EVICTION_CHANNEL": CHANNEL,
        "SHARED_CACHE_WORKER_BROKER_URL": redis_url.rsplit("/", 1)[0] + "/7",
        "SHARED_CACHE_WORKER_RECLAIM_INTERVAL_S": "1",
    }
    sync = redis.Redis.from_url(redis_url)
    for tenant in ("p1", "p2"):
        for i in range(3):
            await cache.set("document", f"doc{i}", {"v": i}, tenant, ttl=TTL_PERMANENT)
    await cache.set("document", "kept", {"v": 1}, "p1", ttl=TTL_PERMANENT)
    await cache.invalidate_scopes("p1", [("p1", "res", "document", f"doc{i}") for i in range(3)], "test")
    await cache.invalidate_scopes("p2", [("p2", "res", "document", "doc0")], "test")
    sync.sadd(cache.keys.worker_tenants, "p1", "p2")  # what the listener records
    assert sync.scard(cache.keys.permanent("p1")) == 4 and sync.scard(cache.keys.permanent("p2")) == 3

    worker = CeleryWorker(env, concurrency=1, queues="warming").start()
    beat = start_beat(env, tmp_path / "schedule")
    try:
        await wait_until(lambda: sync.scard(cache.keys.permanent("p1")) == 1, within=60)
        await wait_until(lambda: sync.scard(cache.keys.permanent("p2")) == 2, within=30)
        assert await cache.get("document", "kept", "p1") == {"v": 1}  # current entries stay
        assert await cache.get("document", "doc1", "p2") == {"v": 1}
        assert worker.wait_for_line(f"Task {RECLAIM_PERMANENT}")
    finally:
        end_process(beat, 10)
        worker.stop()
        sync.close()

"""A slow variant of the invalidation task for the worker-killed-mid-task test.

Loaded into the test worker with ``celery worker -I tests.celery_test_tasks``; it has the same
delivery options as the real tasks and ends by running the real invalidation.
"""

from __future__ import annotations

import os
import time

import redis
from celery import shared_task

from tasks.invalidation import TASK_OPTIONS, invalidate


@shared_task(name="tests.slow_invalidate", **TASK_OPTIONS)
def slow_invalidate(tenant_id: str, scopes: list[list[str]], reason: str, marker: str, sleep_s: float) -> int:
    client = redis.Redis.from_url(os.environ["SHARED_CACHE_REDIS_URL"])
    client.rpush(marker, os.getpid())  # one entry per attempt, with the process that ran it
    client.close()
    time.sleep(sleep_s)
    return int(invalidate.run(tenant_id, scopes, reason))

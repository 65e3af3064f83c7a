"""A real ``celery worker`` process for the integration tests, with the test-only tasks loaded."""

from __future__ import annotations

from pathlib import Path

from devtools.embedded import EmbeddedCeleryWorker, broker_url

ROOT = Path(__file__).resolve().parent.parent


class CeleryWorker(EmbeddedCeleryWorker):
    def __init__(self, env: dict[str, str], concurrency: int = 1, queues: str = "invalidation,warming") -> None:
        super().__init__(env, concurrency, queues, include="tests.celery_test_tasks", cwd=ROOT)


def worker_env(redis_url: str, prefix: str, channel: str) -> dict[str, str]:
    """The settings a test's library processes, listener and Celery worker share: the cache's Redis,
    its key prefix and eviction channel, and the broker in database 1 of the same server."""
    return {
        "SHARED_CACHE_REDIS_URL": redis_url,
        "SHARED_CACHE_KEY_PREFIX": prefix,
        "SHARED_CACHE_EVICTION_CHANNEL": channel,
        "SHARED_CACHE_WORKER_BROKER_URL": broker_url(redis_url),
    }

"""A real ``celery worker`` process for the integration tests, with the test-only tasks loaded."""

from __future__ import annotations

from pathlib import Path

from devtools.embedded import EmbeddedCeleryWorker

ROOT = Path(__file__).resolve().parent.parent


class CeleryWorker(EmbeddedCeleryWorker):
    def __init__(self, env: dict[str, str], concurrency: int = 1, queues: str = "invalidation,warming") -> None:
        super().__init__(env, concurrency, queues, include="tests.celery_test_tasks", cwd=ROOT)

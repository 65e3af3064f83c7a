"""The Celery app: ``celery -A worker.app worker -Q invalidation,warming``.

Two queues: ``invalidation`` (latency: small, fast tasks) and ``warming`` (bulk: embedding
batches), so a warming backlog never delays an invalidation. JSON only (no pickle), late
acknowledgement, tasks rejected back to the queue when their worker dies, one message prefetched
per process, and a visibility timeout after which a message held by a dead worker is redelivered.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue  # type: ignore[attr-defined]

from tasks.settings import TaskSettings
from worker.sentry import init_sentry


def make_app(settings: TaskSettings | None = None) -> Celery:
    settings = settings or TaskSettings()
    celery = Celery("shared_cache_worker", broker=settings.broker_url.get_secret_value())
    celery.conf.update(
        include=["tasks.invalidation", "tasks.warming"],
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(1, settings.task_time_limit_s - 5),
        worker_prefetch_multiplier=1,
        task_queues=(Queue("invalidation"), Queue("warming")),
        task_default_queue="invalidation",
        task_routes={"shared_cache.warm_*": {"queue": "warming"}},
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    init_sentry(settings)
    return celery


app = make_app()

"""The Celery app: ``celery -A worker.app worker -Q invalidation,warming`` (and ``beat``).

Two queues: ``invalidation`` (latency: small, fast tasks) and ``warming`` (bulk: embedding batches,
the reclaim sweep), so a warming backlog never delays an invalidation; tasks are routed by name
(``tasks.contracts.TASK_ROUTES``). JSON only (no pickle), late acknowledgement, tasks rejected back
to the queue when their worker dies, one message prefetched per process, and a visibility timeout
after which a message held by a dead worker is redelivered.

Periodic work runs under Celery beat, one beat process per deployment:
``celery -A worker.app beat`` (or ``worker -B`` on exactly one worker). It sends
``shared_cache.reclaim_permanent`` every ``SHARED_CACHE_WORKER_RECLAIM_INTERVAL_S`` seconds.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]

from tasks.contracts import INVALIDATION_QUEUE, QUEUES, RECLAIM_PERMANENT, TASK_ROUTES
from tasks.settings import TaskSettings
from worker.sentry import init_sentry


def beat_schedule(settings: TaskSettings) -> dict[str, dict[str, Any]]:
    if not settings.reclaim_interval_s:
        return {}
    every = float(settings.reclaim_interval_s)
    # A sweep not started within one interval is dropped: the next one is on its way.
    return {"reclaim-permanent": {"task": RECLAIM_PERMANENT, "schedule": every, "options": {"expires": every}}}


def transport_options(settings: TaskSettings) -> dict[str, int]:
    """kombu's Redis transport options. A task whose worker died stays in kombu's unacknowledged set
    until a sweep finds it older than the visibility timeout; kombu sweeps every
    ``unacked_restore_interval * unacked_restore_throttle`` seconds (100 by default), so a short
    visibility timeout alone would still leave such a task waiting well over a minute. One sweep (one
    ZRANGE) per worker every few seconds, at most half the timeout, brings it back soon after."""
    visibility = settings.visibility_timeout_s
    return {
        "visibility_timeout": visibility,
        "unacked_restore_interval": max(1, min(10, visibility // 2)),
        "unacked_restore_throttle": 1,
    }


def make_app(settings: TaskSettings | None = None) -> Celery:
    settings = settings or TaskSettings()
    celery = Celery("shared_cache_worker", broker=settings.broker_url.get_secret_value())
    celery.conf.update(
        include=["tasks.invalidation", "tasks.warming", "tasks.maintenance"],
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(1, settings.task_time_limit_s - 5),
        worker_prefetch_multiplier=1,
        # each queue on an exchange of its own: a message routed to one is never copied to the other
        task_queues=tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES),
        task_default_queue=INVALIDATION_QUEUE,
        task_default_exchange=INVALIDATION_QUEUE,
        task_default_routing_key=INVALIDATION_QUEUE,
        task_routes=TASK_ROUTES,
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        # A task running when the broker connection drops goes on and does its work (Celery 6 will
        # cancel it instead, and its message is lost when Redis restarted empty: the listener would
        # send an invalidation again, but not a warming or reclaim call). Celery logs a pending
        # deprecation notice about this choice on each connection loss.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        beat_schedule=beat_schedule(settings),
    )
    init_sentry(settings)
    return celery


app = make_app()

"""Dispatch: a coalesced window becomes typed task calls, and calls are sent to the broker.

The one place where the worker sends tasks: the listener (which gives each invalidation a receipt and
tracks it, see ``worker.acks``) and the dead-letter replay of the ``shared-cache`` command both go
through it. Sending is blocking (kombu's producer): async code calls it from a thread
(``asyncio.to_thread`` or an executor).

For a one-off window, as the dead-letter replay has::

    counts = dispatch_window(celery_app, window, TaskSettings(), reason_prefix="replay: ")
    # {"invalidation": 3, "warming": 1}
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from tasks.contracts import INVALIDATION_QUEUE, WARMING_QUEUE, InvalidateCall, TaskCall, WarmCall
from tasks.settings import TaskSettings
from worker.coalesce import Window

# Texts per warming call the listener sends: enough for the model to sort a task's texts by length
# and fill its batches with texts of similar length, few enough to spread over several workers.
WARM_TEXTS_PER_CALL = 1024


class DispatchError(RuntimeError):
    """Sending stopped after ``sent`` calls (the broker went away); the cause is chained."""

    def __init__(self, sent: int, cause: BaseException) -> None:
        super().__init__(f"sent {sent} task call(s), then: {cause}")
        self.sent = sent


def window_calls(
    window: Window,
    *,
    warming: bool,
    warm_texts_per_call: int = WARM_TEXTS_PER_CALL,
    reason_prefix: str = "",
    receipts: Iterator[str] | None = None,
) -> list[TaskCall]:
    """The window's invalidation calls (each with the next receipt, if ``receipts`` is given), then
    its warming calls when ``warming`` is on (pure)."""
    calls: list[TaskCall] = []
    for call in window.invalidate_calls(reason_prefix):
        if receipts is not None:
            call = InvalidateCall(call.tenant_id, call.scopes, call.reason, call.caused_at, next(receipts))
        calls.append(call)
    if warming:
        calls += window.warm_calls(warm_texts_per_call)
    return calls


def send_call(celery_app: Any, call: TaskCall) -> None:
    """Publish one call (blocking). An invalidation with a receipt uses it as its task id, so every
    copy of the call is recognisable in the broker's queue and in the workers' logs."""
    options: dict[str, Any] = {}
    if isinstance(call, InvalidateCall) and call.receipt is not None:
        options["task_id"] = call.receipt
    celery_app.send_task(call.task, kwargs=call.to_wire(), **options)


def send_calls(celery_app: Any, calls: Sequence[TaskCall]) -> None:
    """Publish ``calls`` in order (blocking); raises :class:`DispatchError` saying how many went out."""
    for sent, call in enumerate(calls):
        try:
            send_call(celery_app, call)
        except Exception as exc:
            raise DispatchError(sent, exc) from exc


def queue_counts(calls: Sequence[TaskCall]) -> dict[str, int]:
    invalidations = sum(1 for call in calls if isinstance(call, InvalidateCall))
    warmings = sum(1 for call in calls if isinstance(call, WarmCall))
    return {INVALIDATION_QUEUE: invalidations, WARMING_QUEUE: warmings}


def dispatch_window(celery_app: Any, window: Window, tasks: TaskSettings, *, reason_prefix: str = "") -> dict[str, int]:
    """Send a window's calls without tracking them (blocking): one invalidation per tenant, and
    warming calls when a provider is configured. Returns the calls sent per queue."""
    calls = window_calls(window, warming=tasks.embedding_provider != "none", reason_prefix=reason_prefix)
    send_calls(celery_app, calls)
    return queue_counts(calls)

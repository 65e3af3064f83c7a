"""Sentry, when a DSN is set: Celery and Redis integrations, and nothing cached in any event.

Cached values and row contents must never leave the process: local variables, request bodies and
Redis command arguments are not sent, and every event passes through ``scrub`` first.
"""

from __future__ import annotations

from typing import Any

from tasks.settings import TaskSettings
from worker.settings import ListenerSettings

_SENSITIVE_KEYS = ("record", "old_record", "value", "payload", "texts", "data", "args", "kwargs")


def scrub(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Drop anything that may hold cached values or row contents from a Sentry event."""
    for exception in (event.get("exception") or {}).get("values", []):
        for frame in (exception.get("stacktrace") or {}).get("frames", []):
            frame.pop("vars", None)
    for key in ("extra", "request"):
        event.pop(key, None)
    for crumb in (event.get("breadcrumbs") or {}).get("values", []):
        crumb.pop("data", None)
        if crumb.get("category") == "redis":
            crumb["message"] = (crumb.get("message") or "").split(" ", 1)[0]  # command name only
    contexts = event.get("contexts") or {}
    for key in list(contexts):
        if key in _SENSITIVE_KEYS or key == "celery":
            contexts.pop(key)
    return event


def init_sentry(settings: TaskSettings | ListenerSettings) -> bool:
    dsn = settings.sentry_dsn.get_secret_value()
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.redis import RedisIntegration

    sentry_sdk.init(
        dsn=dsn,
        integrations=[CeleryIntegration(), RedisIntegration()],
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        before_send=scrub,  # type: ignore[arg-type]
        before_breadcrumb=lambda crumb, hint: scrub({"breadcrumbs": {"values": [crumb]}})["breadcrumbs"]["values"][0],
    )
    return True

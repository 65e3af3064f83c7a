"""Sentry, when a DSN is set: Celery and Redis integrations, and nothing cached in any event.

Cached values and row contents must never leave the process, and neither must secrets. Every event
and breadcrumb passes through ``scrub`` first:

- local variables, request bodies, ``extra``, Celery task arguments and Redis command arguments
  are dropped;
- exception messages keep their text, with every quoted literal (``'...'``, ``"..."``: the values a
  message names, such as an id or a row's field) replaced by ``'…'`` and every configured secret
  (passwords of the Redis, broker and database URLs, API keys) masked;
- log records keep their message template (``"could not send %d task calls (%s)"``), never the
  parameters formatted into it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import partial
from typing import Any

from pydantic import SecretStr

from tasks.settings import TaskSettings
from tasks.support import mask_secrets, secrets_of
from worker.settings import ListenerSettings

_SENSITIVE_KEYS = ("record", "old_record", "value", "payload", "texts", "data", "args", "kwargs")
_QUOTED = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\"""")
_MAX_TEXT = 500
REDACTED = "'…'"


def scrub_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the values it quotes and without secrets, at most 500 characters."""
    return _QUOTED.sub(REDACTED, mask_secrets(text, secrets))[:_MAX_TEXT]


def scrub(event: dict[str, Any], hint: dict[str, Any] | None = None, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """Drop anything that may hold cached values, row contents or secrets from a Sentry event."""
    secrets = list(secrets)
    for exception in (event.get("exception") or {}).get("values", []):
        for frame in (exception.get("stacktrace") or {}).get("frames", []):
            frame.pop("vars", None)
        if isinstance(exception.get("value"), str):
            exception["value"] = scrub_text(exception["value"], secrets)
    logentry = event.get("logentry")
    if isinstance(logentry, dict):
        template = scrub_text(str(logentry.get("message") or ""), secrets)
        event["logentry"] = {"message": template, "formatted": template}
    if isinstance(event.get("message"), str):
        event["message"] = scrub_text(event["message"], secrets)
    for key in ("extra", "request"):
        event.pop(key, None)
    breadcrumbs = (event.get("breadcrumbs") or {}).get("values", [])
    event_crumbs = [scrub_breadcrumb(crumb, None, secrets) for crumb in breadcrumbs]
    if breadcrumbs:
        event["breadcrumbs"]["values"] = event_crumbs
    contexts = event.get("contexts") or {}
    for key in list(contexts):
        if key in _SENSITIVE_KEYS or key == "celery":
            contexts.pop(key)
    return event


def scrub_breadcrumb(
    crumb: dict[str, Any], hint: dict[str, Any] | None = None, secrets: Iterable[str] = ()
) -> dict[str, Any]:
    """A breadcrumb without data; a log line's template; a Redis command's name only."""
    crumb.pop("data", None)
    record = (hint or {}).get("log_record")
    if record is not None:  # a log line: its template, not the values formatted into it
        crumb["message"] = scrub_text(str(record.msg), secrets)
    elif crumb.get("category") == "redis":
        crumb["message"] = (crumb.get("message") or "").split(" ", 1)[0]  # command name only
    elif isinstance(crumb.get("message"), str):
        crumb["message"] = scrub_text(crumb["message"], secrets)
    return crumb


def configured_secrets(settings: TaskSettings | ListenerSettings) -> list[str]:
    """Every secret the process was configured with: URL passwords and keys."""
    from shared_cache import CacheSettings

    found: list[str] = []
    values = [getattr(settings, name) for name in type(settings).model_fields]
    values.append(CacheSettings().redis_url)
    for value in values:
        if isinstance(value, SecretStr) and (raw := value.get_secret_value()):
            found += secrets_of(raw) if "://" in raw or "password=" in raw else [raw]
    return found


def init_sentry(settings: TaskSettings | ListenerSettings) -> bool:
    dsn = settings.sentry_dsn.get_secret_value()
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.redis import RedisIntegration

    secrets = configured_secrets(settings)
    sentry_sdk.init(
        dsn=dsn,
        integrations=[CeleryIntegration(), RedisIntegration()],
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        before_send=partial(scrub, secrets=secrets),  # type: ignore[arg-type]
        before_breadcrumb=partial(scrub_breadcrumb, secrets=secrets),
    )
    return True

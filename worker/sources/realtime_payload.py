"""Reading Supabase Realtime ``postgres_changes`` payloads (pure code, no I/O).

The server's wire names are used (``record``, ``old_record``, ``commit_timestamp``, ``errors``, as
``realtime.apply_rls`` builds them); realtime-js's renamed fields (``new``, ``old``, ``eventType``)
are accepted too. Anything that cannot become a trustworthy ``ChangeEvent`` raises ``ValueError``:
better a dead letter and a gap than an event that invalidates the wrong keys.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from typing import Any, Final

from pydantic import ValidationError

from worker.events import ChangeEvent

SOURCE_NAME: Final = "supabase"
MAX_REASON_CHARS: Final = 500
# realtime-py logs, then drops, a frame it cannot validate (a change whose commit_timestamp is null,
# as the server sends for the error rows of tables without a primary key) with this prefix
REJECTED_PREFIX: Final = "Unrecognized message format "


def _row(data: Mapping[str, Any], wire_name: str, js_name: str) -> dict[str, Any] | None:
    """A record of the change: the server's wire name, else realtime-js's; absent or empty -> None."""
    value = data.get(wire_name, data.get(js_name))
    if value is None or value == {}:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{wire_name} is not an object")
    return dict(value)


def change_event_from_payload(payload: Mapping[str, Any]) -> ChangeEvent:
    """Turn a ``postgres_changes`` payload (``{"ids", "data"}``) into a ``ChangeEvent``.

    Raises ``ValueError`` (pydantic's ``ValidationError`` included) for anything that cannot be one,
    among them the rows the server flags in ``errors`` (``Error 413: Payload Too Large``: values
    over 64 bytes were left out, so the row may lack the very ids the rules need).
    """
    data = payload.get("data")
    if not isinstance(data, Mapping):
        raise ValueError("payload has no data object")
    if data.get("errors"):
        raise ValueError(f"server reported errors: {data['errors']}")
    kind = data.get("type", data.get("eventType"))
    kind = getattr(kind, "value", kind)  # the client hands over its own enum
    stamp = data.get("commit_timestamp")
    if not isinstance(stamp, str) or not stamp:
        raise ValueError("commit_timestamp missing")
    record, old_record = _row(data, "record", "new"), _row(data, "old_record", "old")
    if kind in ("INSERT", "UPDATE") and record is None:
        raise ValueError(f"{kind} without record")
    if kind == "DELETE" and old_record is None:
        raise ValueError("DELETE without old_record")
    fields = {"schema": data.get("schema"), "table": data.get("table"), "type": kind, "commit_timestamp": stamp}
    rows = {"record": record, "old_record": old_record}
    return ChangeEvent.model_validate({**fields, **rows, "source": SOURCE_NAME, "position": stamp})


def qualified_table(payload: Mapping[str, Any]) -> str | None:
    """``schema.table`` of a payload's change, if it names one."""
    data = payload.get("data")
    if not isinstance(data, Mapping):
        return None
    schema, table = data.get("schema"), data.get("table")
    return f"{schema}.{table}" if isinstance(schema, str) and isinstance(table, str) else None


def describe_error(exc: BaseException) -> str:
    """A short reason for a dead letter: what was wrong, never the offending values themselves."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors())
        text = f"invalid change: {problems}"
    else:
        text = f"invalid change: {exc}"
    return text[:MAX_REASON_CHARS]


def rejected_change(log_message: str, topic: str) -> tuple[str, str] | None:
    """The raw frame and the server's errors of a ``postgres_changes`` frame for ``topic`` that the
    realtime client rejected, read from the client's log message; ``None`` for anything else."""
    if not log_message.startswith(REJECTED_PREFIX):
        return None
    quoted = log_message.removeprefix(REJECTED_PREFIX).split("\n", 1)[0]
    try:
        raw = ast.literal_eval(quoted)
        frame = json.loads(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(frame, dict) or frame.get("topic") != topic or frame.get("event") != "postgres_changes":
        return None
    payload = frame.get("payload")
    data = payload.get("data") if isinstance(payload, dict) else None
    errors = data.get("errors") if isinstance(data, dict) else None
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return text, str(errors or "unreadable change")

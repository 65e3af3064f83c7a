"""Lenient readers of what other processes leave in Redis (reports, counters, INFO fields).

A report written by another version, a value someone set by hand or a field that is missing must not
stop an operator's command: each reader returns a neutral value (``None``, ``0``, ``""``) instead of
raising.
"""

from __future__ import annotations

import math
from typing import Any

import orjson


def json_object(raw: Any) -> dict[str, Any] | None:
    """``raw`` decoded, if it is a JSON object."""
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def mapping(raw: Any) -> dict[str, Any]:
    """``raw`` if it is a dict, else an empty one."""
    return raw if isinstance(raw, dict) else {}


def text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def number(raw: Any) -> float:
    """A finite float, or 0.0."""
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def integer(raw: Any) -> int:
    """An int (``b"12"``, ``"12"``, ``12.0``), or 0."""
    if isinstance(raw, int):
        return raw
    try:
        return int(text(raw))
    except (TypeError, ValueError):
        return int(number(text(raw)))


def count(raw: Any) -> int:
    """A counter: an int that is never negative."""
    return max(0, integer(raw))

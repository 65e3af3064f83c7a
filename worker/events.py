"""``ChangeEvent``: the one model every change source yields."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ChangeType = Literal["INSERT", "UPDATE", "DELETE"]


class ChangeEvent(BaseModel):
    """One row change. ``position`` is the source's resume point (an LSN for Postgres, a
    message id for Redis, a commit timestamp for realtime); ``source`` names the adapter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_: str = Field("public", alias="schema")
    table: str = Field(min_length=1, max_length=128)
    type: ChangeType
    record: dict[str, Any] | None = None
    old_record: dict[str, Any] | None = None
    commit_timestamp: datetime | None = None
    source: str = "unknown"
    position: str | None = None

    @property
    def row(self) -> dict[str, Any]:
        """The row's values: the new record, or the old one for a DELETE."""
        return (self.record if self.type != "DELETE" else self.old_record) or self.record or self.old_record or {}


# Commit times further ahead than this are not believed (a clock or a payload gone wrong).
_MAX_AHEAD_S = 86_400.0


def commit_seconds(stamp: datetime | None) -> float | None:
    """A commit time as Unix seconds, or None when it is missing or makes no sense.

    Only used to measure commit-to-eviction latency, so a strange value must never stop an event:
    a stamp without a zone is UTC (as realtime and wal2json write them), and a stamp out of range
    (year 1, year 9999 past a zone offset, far in the future) is dropped.
    """
    if stamp is None:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    try:
        seconds = stamp.timestamp()
    except (OverflowError, ValueError, OSError):
        return None
    return seconds if 0.0 < seconds <= time.time() + _MAX_AHEAD_S else None

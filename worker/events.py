"""``ChangeEvent``: the one model every change source yields."""

from __future__ import annotations

from datetime import datetime
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

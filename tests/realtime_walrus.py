"""What the Realtime server's database side does to a change before it reaches a channel.

The server's ``postgres_changes`` extension reads a wal2json slot through ``realtime.list_changes``
and ``realtime.apply_rls`` (supabase/realtime, ``lib/extensions/postgres_cdc_rls``). This module
does the same to the stand-in's wal2json rows, on the real Postgres behind it:

- only tables of the ``supabase_realtime`` publication are decoded (``list_changes`` passes them to
  wal2json as ``add-tables``), and a subscription to a table outside it cannot be created (the
  ``realtime.subscription`` insert finds no row and the whole channel's subscription is rolled
  back: ``Subscriptions.create``);
- with row level security on the table, a DELETE's ``old_record`` keeps only the primary key
  columns, whatever the replica identity (``apply_rls``: "we can't secure deletes");
- an INSERT or UPDATE of a table without a primary key becomes an error row: ``schema``, ``table``,
  ``type``, ``errors: ["Error 400: Bad Request, no primary key"]`` and no ``commit_timestamp``;
- a change larger than ``max_record_bytes`` keeps only the values of at most 64 bytes, with
  ``errors: ["Error 413: Payload Too Large"]``;
- ``commit_timestamp`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC), column types as ``pg_type.typname``,
  values as ``realtime.cast`` gives them (json parsed).

Subscribers connect with a service-role key here, whose role bypasses RLS for INSERT and UPDATE:
the visibility check of other roles is not emulated.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg

ACTIONS = {"I": "INSERT", "U": "UPDATE", "D": "DELETE"}
JSON_TYPES = {"json", "jsonb"}
NO_PRIMARY_KEY = "Error 400: Bad Request, no primary key"
PAYLOAD_TOO_LARGE = "Error 413: Payload Too Large"
SLOT_OPTIONS = (
    "'format-version', '2', 'include-timestamp', 'true', 'include-type-oids', 'true', 'include-pk', 'true', "
    "'include-transaction', 'false', 'actions', 'insert,update,delete'"
)


def commit_timestamp(text: str) -> str:
    """wal2json's ``2024-05-01 10:00:00.123456+00`` as the server formats it: ``2024-05-01T10:00:00.123Z``."""
    stamp = datetime.fromisoformat(text).astimezone(UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _value(column: Mapping[str, Any], typname: str) -> Any:
    value = column.get("value")
    if isinstance(value, str) and typname in JSON_TYPES:
        return json.loads(value)
    if isinstance(value, str) and typname in ("timestamptz", "timestamp"):
        return datetime.fromisoformat(value).isoformat()
    return value


class Walrus:
    """Turns wal2json rows into the ``data`` objects the server pushes, as ``apply_rls`` does."""

    def __init__(self, publication: str | None, max_record_bytes: int = 1024 * 1024) -> None:
        self.publication = publication
        self.max_record_bytes = max_record_bytes
        self.published: set[tuple[str, str]] = set()
        self._typnames: dict[int, str] = {}
        self._rls: dict[tuple[str, str], bool] = {}
        self._refreshed = -math.inf

    async def refresh(self, db: psycopg.AsyncConnection[Any], every: float = 0.0) -> None:
        """Read what the server reads on every poll: the publication's tables, RLS flags, type names
        (at most once per ``every`` seconds: the stand-in polls often, and shares the machine)."""
        if time.monotonic() - self._refreshed < every:
            return
        self._refreshed = time.monotonic()
        if not self._typnames:
            rows = await (await db.execute("SELECT oid::int, typname FROM pg_type")).fetchall()
            self._typnames = {int(oid): str(name) for oid, name in rows}
        if self.publication is not None:
            sql = "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s"
            rows = await (await db.execute(sql, (self.publication,))).fetchall()
            self.published = {(str(s), str(t)) for s, t in rows}
        sql = (
            "SELECT n.nspname, c.relname, c.relrowsecurity FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace"
        )
        rows = await (await db.execute(sql + " WHERE c.relkind = 'r'")).fetchall()
        self._rls = {(str(s), str(t)): bool(on) for s, t, on in rows}

    def subscribable(self, schema: str, table: str | None) -> bool:
        """Whether a binding finds a table of the publication (``*`` matches any)."""
        if self.publication is None:
            return True
        return any(schema in ("*", s) and table in (None, "*", t) for s, t in self.published)

    def change(self, wal: Mapping[str, Any]) -> dict[str, Any] | None:
        """A wal2json v2 row change as the server's ``data`` object, or None if it is not decoded."""
        action = ACTIONS.get(wal.get("action", ""))
        if action is None:
            return None
        entity = (str(wal["schema"]), str(wal["table"]))
        if self.publication is not None and entity not in self.published:
            return None
        base = {"schema": entity[0], "table": entity[1], "type": action}
        if action != "DELETE" and not wal.get("pk"):
            return {**base, "columns": [], "commit_timestamp": None, "errors": [NO_PRIMARY_KEY], "record": {}}
        columns = wal.get("columns") or wal.get("identity") or []
        too_large = len(json.dumps(wal)) > self.max_record_bytes
        data: dict[str, Any] = {
            **base,
            "commit_timestamp": commit_timestamp(wal["timestamp"]),
            "columns": [{"name": c["name"], "type": self._typname(c)} for c in columns],
            "errors": [PAYLOAD_TOO_LARGE] if too_large else None,
        }
        if action in ("INSERT", "UPDATE"):
            data["record"] = self._row(wal.get("columns"), too_large)
        if action in ("UPDATE", "DELETE"):
            identity = wal.get("identity")
            if action == "DELETE" and self._rls.get(entity):
                keys = {pk["name"] for pk in wal.get("pk") or []}
                identity = [c for c in identity or [] if c["name"] in keys]
            data["old_record"] = self._row(identity, too_large)
        return data

    def _typname(self, column: Mapping[str, Any]) -> str:
        return self._typnames.get(int(column.get("typeoid") or 0), str(column.get("type")))

    def _row(self, columns: list[dict[str, Any]] | None, too_large: bool) -> dict[str, Any] | None:
        if not columns:
            return None
        row = {c["name"]: _value(c, self._typname(c)) for c in columns}
        if too_large:
            row = {name: value for name, value in row.items() if len(json.dumps(value)) <= 64}
        return row

"""The realtime probe's heartbeat row, written through supabase-py (the project's REST API).

Each listener upserts a row of its own (``id`` = the source's probe id), so several listeners of
one project never read each other's heartbeats; the row is deleted when the source closes. The
table::

    create table shared_cache_heartbeat (
        id text primary key,
        beat bigint not null,
        touched_at timestamptz not null default now()
    );
    alter publication supabase_realtime add table shared_cache_heartbeat;
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from tasks.supabase_api import close_client, connect, describe_api_error, split_table

if TYPE_CHECKING:
    from supabase import AsyncClient

logger = logging.getLogger(__name__)


class Heartbeat(Protocol):
    """Writes the probe's heartbeat row; the source reads it back through the feed."""

    table: str  # schema.table

    async def touch(self, row_id: str, beat: int) -> None: ...

    async def forget(self, row_id: str) -> None: ...


class HeartbeatError(RuntimeError):
    """A heartbeat write the REST API refused (its code and message, never the key)."""


class SupabaseHeartbeat:
    """``Heartbeat`` through supabase-py's async client; the client is made on first use, on the
    event loop that uses it (and made again if a later call comes from another loop)."""

    def __init__(self, url: str, key: str, table: str = "shared_cache_heartbeat", *, timeout: float = 5.0) -> None:
        schema, name = split_table(table)
        self.table = f"{schema}.{name}"
        self._schema, self._name = schema, name
        self._url, self._key, self._timeout = url, key, timeout
        self._client: AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"SupabaseHeartbeat(table={self.table!r})"

    async def _table(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client, self._loop = await connect(self._url, self._key, request_timeout=self._timeout), loop
        return self._client.schema(self._schema).table(self._name)

    async def touch(self, row_id: str, beat: int) -> None:
        row = {"id": row_id, "beat": beat, "touched_at": datetime.now(UTC).isoformat()}
        table = await self._table()
        try:
            await table.upsert(row, returning="minimal").execute()
        except Exception as exc:
            raise HeartbeatError(f"heartbeat upsert into {self.table} failed: {self._describe(exc)}") from None

    async def forget(self, row_id: str) -> None:
        """Delete this listener's row (best effort: a killed listener leaves one small row behind)."""
        try:
            table = await self._table()
            await table.delete(returning="minimal").eq("id", row_id).execute()
        except Exception as exc:
            logger.warning("could not delete heartbeat row from %s: %s", self.table, self._describe(exc))
        finally:
            await self.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                await close_client(client)

    def _describe(self, exc: BaseException) -> str:
        return describe_api_error(exc, (self._key,))

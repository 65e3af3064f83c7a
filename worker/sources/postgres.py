"""``PostgresLogicalSource``: a durable source over a logical replication slot (wal2json).

It polls the slot with the SQL functions, the way Supabase Realtime itself does:
``pg_logical_slot_peek_changes`` reads whole committed transactions after the slot's confirmed
position without consuming them, and ``confirm(position)`` advances the slot with
``pg_replication_slot_advance`` only once the listener saw their invalidations applied in Redis.
A restart (of the worker or of Postgres) resumes from the confirmed position, so a change
committed while the worker was down is processed when it comes back: at-least-once, nothing lost.
Input that can neither be read nor parked as a dead letter stops the source before it (it is read
again later): nothing past it is confirmed until it is parked.

Positions are the end LSN of each transaction's commit record (``lsn`` of wal2json's ``C`` row).
Watched tables should have ``REPLICA IDENTITY FULL`` so DELETEs carry the tenant and id columns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from tasks.support import Backoff
from worker.events import ChangeEvent
from worker.sources.base import DeadLetterHandler

_ACTIONS = {"I": "INSERT", "U": "UPDATE", "D": "DELETE"}
log = logging.getLogger(__name__)
PLUGIN = "wal2json"


@dataclass(frozen=True, slots=True)
class _Unreadable:
    raw: str
    reason: str


class _ParkRefused(Exception):
    """Input that could not be parked: the source must not move past it, so it reads it again later."""


class ReplicationSetupError(RuntimeError):
    """Postgres refuses what the source needs; retrying cannot help until an operator changes a setting."""


def plugin_refused(exc: BaseException) -> bool:
    """True if Postgres refused wal2json because it is not in ``output_plugin_libraries`` (15.20+)."""
    diag = getattr(exc, "diag", None)
    text = f"{exc} {getattr(diag, 'message_hint', '') or ''}"
    return "output_plugin_libraries" in text or "may not be used as an output plugin" in text


def plugin_fix(current: str | None) -> str:
    """The one-line fix: the current list plus wal2json (``current`` from ``SHOW output_plugin_libraries``)."""
    names = [n.strip() for n in (current or "pgoutput, test_decoding").split(",") if n.strip()]
    if PLUGIN not in names:
        names.append(PLUGIN)
    listed = ", ".join(f"'{n}'" for n in names)
    return f"ALTER SYSTEM SET output_plugin_libraries = {listed}; SELECT pg_reload_conf();"


async def explain_refusal(conn: Any) -> ReplicationSetupError:
    """The error to raise when wal2json was refused, naming the setting and the fix."""
    current = None
    with contextlib.suppress(Exception):
        cursor = await conn.execute("SHOW output_plugin_libraries")
        row = await cursor.fetchone()
        current = row[0] if row else None
    return ReplicationSetupError(
        f"Postgres refuses the {PLUGIN} output plugin: it is not listed in output_plugin_libraries"
        f" (now {current!r}). As a superuser run: {plugin_fix(current)}"
        " On a managed service, add wal2json to output_plugin_libraries in the server's parameters."
    )


def lsn_to_int(lsn: str) -> int:
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def _row(columns: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if columns is None:
        return None
    return {col["name"]: col.get("value") for col in columns}


def _timestamp(raw: str | None) -> datetime | None:
    if not raw:
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(raw.replace(" ", "T", 1) + ("00" if raw[-3] in "+-" else ""))
    return None


def change_from_wal2json(data: dict[str, Any], position: str) -> ChangeEvent:
    """One wal2json (format-version 2) I/U/D row as a ChangeEvent."""
    return ChangeEvent.model_validate(
        {
            "schema": data["schema"],
            "table": data["table"],
            "type": _ACTIONS[data["action"]],
            "record": _row(data.get("columns")),
            "old_record": _row(data.get("identity")),
            "commit_timestamp": _timestamp(data.get("timestamp")),
            "source": "postgres",
            "position": position,
        }
    )


class PostgresLogicalSource:
    name = "postgres"
    durable = True

    def __init__(
        self,
        dsn: str,
        tables: tuple[str, ...],
        slot: str = "shared_cache",
        poll_interval: float = 0.02,
        batch: int = 5000,
        on_dead_letter: DeadLetterHandler | None = None,
    ) -> None:
        self.dsn = dsn
        self.tables = tables
        self.slot = slot
        self.poll_interval = poll_interval
        self.batch = batch
        self.on_dead_letter = on_dead_letter
        self._conn: Any = None
        self._seen = 0  # end LSN of the last transaction yielded (peek re-reads unconfirmed ones)
        self._confirmed = 0  # what the slot was advanced to
        self._target = 0  # what the listener confirmed: the slot is advanced to it between polls
        self._target_lsn = ""
        self._advanced_at = 0.0
        self.received = 0
        self.reconnects = 0
        self.malformed = 0
        self._closed = False

    async def _connect(self) -> Any:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        cursor = await conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self.slot,))
        if await cursor.fetchone() is None:
            try:
                await conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json')", (self.slot,))
            except psycopg.errors.DuplicateObject:
                pass  # another listener created it meanwhile
            except psycopg.Error as exc:
                if plugin_refused(exc):
                    error = await explain_refusal(conn)
                    await conn.close()
                    raise error from exc
                raise
        return conn

    async def prepare(self) -> None:
        """Connect and create the slot if needed: changes committed from now on are kept for us.

        Raises ``ReplicationSetupError`` at once when Postgres refuses the plugin, so a listener that
        cannot work says why when it starts rather than retrying in silence.
        """
        if self._conn is None:
            self._conn = await self._connect()
        await self._peek(limit=1)

    async def _peek(self, limit: int | None = None) -> list[tuple[str, str]]:
        if self._conn is None:
            self._conn = await self._connect()
        try:
            cursor = await self._conn.execute(
                "SELECT lsn::text, data FROM pg_logical_slot_peek_changes(%s, NULL, %s,"
                " 'format-version', '2', 'include-timestamp', '1', 'include-transaction', '1',"
                " 'add-tables', %s)",
                (self.slot, limit or self.batch, ",".join(self.tables)),
            )
        except Exception as exc:
            if plugin_refused(exc):
                raise await explain_refusal(self._conn) from exc
            raise
        return list(await cursor.fetchall())

    async def events(self) -> AsyncIterator[ChangeEvent]:
        """Changes of whole committed transactions, in commit order. Called again after a failure, it
        goes on after the last transaction it yielded (the slot keeps everything not confirmed)."""
        backoff = Backoff(first=0.1, cap=5.0)
        refused = Backoff(first=0.5, cap=30.0)
        while not self._closed:
            try:
                await self._advance(idle=False)
                rows = await self._peek()
                backoff.reset()
            except Exception as exc:
                # Postgres restarting, network cut: reconnect with backoff; nothing is lost since
                # unconfirmed changes stay in the slot. A refused plugin is logged with its fix: an
                # operator can change the setting while the listener keeps retrying.
                if isinstance(exc, ReplicationSetupError):
                    log.error("%s", exc)
                await self._drop_connection()
                self.reconnects += 1
                await asyncio.sleep(backoff.next())
                continue
            pending: list[ChangeEvent | _Unreadable] = []
            released = 0
            try:
                for lsn, data in rows:
                    for event in await self._handle(lsn, data, pending):
                        released += 1
                        yield event
                refused.reset()
            except _ParkRefused:
                # Neither readable nor parked: stop before it (later transactions must not be
                # confirmed past it) and read it again once Redis may take it.
                await asyncio.sleep(refused.next())
                continue
            if not released:  # nothing new (what was read is waiting for confirmation): poll later
                with contextlib.suppress(Exception):  # a failure shows in the next poll, which reconnects
                    await self._advance(idle=True)
                await asyncio.sleep(self.poll_interval)

    async def _handle(self, lsn: str, data: str, pending: list[ChangeEvent | _Unreadable]) -> list[ChangeEvent]:
        """Buffer a transaction's rows; at its commit, if it was not yielded before, park its
        unreadable rows and release its changes (a peek reads unconfirmed transactions again)."""
        try:
            parsed = orjson.loads(data)
            action = parsed["action"]
        except Exception:
            pending.append(_Unreadable(data, "unreadable wal2json row"))
            return []
        if action == "B":
            pending.clear()
            return []
        if action == "C":
            end = lsn_to_int(lsn)
            if end <= self._seen:
                pending.clear()
                return []  # yielded already, waiting for confirmation
            for row in pending:
                if isinstance(row, _Unreadable):
                    await self._dead_letter(row.raw, row.reason)  # raises if it cannot be parked
            self._seen = end
            released = [row.model_copy(update={"position": lsn}) for row in pending if isinstance(row, ChangeEvent)]
            pending.clear()
            self.received += len(released)
            return released
        if action in _ACTIONS:
            try:
                pending.append(change_from_wal2json(parsed, lsn))
            except Exception as exc:  # whatever is wrong with one row, it is parked, not fatal
                pending.append(_Unreadable(data, f"bad change: {type(exc).__name__}: {exc}"))
        return []  # truncates and messages are not row changes

    async def _dead_letter(self, raw: str, reason: str) -> None:
        if self.on_dead_letter is not None and not await self.on_dead_letter(self.name, raw, reason):
            raise _ParkRefused(reason)
        self.malformed += 1

    async def confirm(self, position: str) -> None:
        """The changes up to ``position`` (a commit's end LSN) are done: the polling loop advances the
        slot past it when a poll finds nothing new, or within 0.1 s under steady traffic, and
        ``close()`` does too. The advance decodes WAL on the connection the polls use, so it is kept
        off the moment a new change is being read; deferring it only means a crash in between
        replays changes already applied, which is harmless."""
        target = lsn_to_int(position)
        if target > self._target:
            self._target, self._target_lsn = target, position

    async def _advance(self, idle: bool) -> None:
        if self._target <= self._confirmed or (not idle and time.monotonic() - self._advanced_at < 0.1):
            return
        if self._conn is None:
            self._conn = await self._connect()
        target, position = self._target, self._target_lsn
        await self._conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, position))
        self._confirmed, self._advanced_at = target, time.monotonic()

    def counters(self) -> dict[str, int]:
        return {"received": self.received, "malformed": self.malformed, "reconnects": self.reconnects}

    async def lag_bytes(self) -> int | None:
        """How far the slot's confirmed position is behind the current WAL, in bytes."""
        if self._conn is None:
            self._conn = await self._connect()
        cursor = await self._conn.execute(
            "SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
            (self.slot,),
        )
        row = await cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):  # best effort: what is not advanced is replayed, harmlessly
            await self._advance(idle=True)
        await self._drop_connection()

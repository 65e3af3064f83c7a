"""``SupabaseRealtimeSource`` end to end: the REAL ``realtime`` client, a REAL Postgres, and the
protocol-faithful realtime server stand-in (``tests/realtime_standin.py``) fed by a wal2json slot.

Nothing of the source or of the client is mocked; only the server is a stand-in, because the real
one cannot run here. Probe intervals and timeouts are sub-second so the file runs in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest

from devtools.embedded import EmbeddedPostgres as PostgresServer
from tests.realtime_standin import RealtimeStandIn
from worker.events import ChangeEvent
from worker.settings import ListenerSettings
from worker.sources.base import ChangeSource
from worker.sources.supabase import (
    REASON_AFTER_PROBE,
    REASON_DEAD_LETTER,
    REASON_PROBE_TIMEOUT,
    REASON_RECONNECTED,
    REASON_SUBSCRIBED,
    SupabaseRealtimeSource,
    change_event_from_payload,
    realtime_url,
)

KEY = "test-service-key"
HEARTBEAT = "shared_cache_heartbeat"
SCHEMA_SQL = f"""
CREATE TABLE items (id int PRIMARY KEY, name text, qty int, meta jsonb);
ALTER TABLE items REPLICA IDENTITY FULL;
CREATE TABLE other (id int PRIMARY KEY, v text);
CREATE TABLE {HEARTBEAT} (id int PRIMARY KEY, beat bigint NOT NULL DEFAULT 0);
INSERT INTO {HEARTBEAT} (id) VALUES (1);
"""
WAIT = 10.0
# realtime's own reconnect path reads ConnectionClosed.code/.reason, deprecated in websockets 13.1: not ours
pytestmark = pytest.mark.filterwarnings("ignore:ConnectionClosed.*is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
    yield server
    server.cleanup()


@pytest.fixture
async def db(pg: PostgresServer) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """The test's own writer connection; tables start empty (TRUNCATE is not replicated)."""
    conn = await psycopg.AsyncConnection.connect(pg.dsn, autocommit=True)
    await conn.execute("TRUNCATE items, other")
    yield conn
    await conn.close()


@pytest.fixture
async def standin(pg: PostgresServer) -> AsyncIterator[RealtimeStandIn]:
    server = await RealtimeStandIn(pg.dsn, api_key=KEY).start()
    yield server
    await server.stop()


async def wait_until(predicate: Callable[[], bool], what: str, within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Harness:
    """Runs a source, records what it yields and what its handlers were called with."""

    def __init__(self, pg: PostgresServer) -> None:
        self.dsn = pg.dsn
        self.events: list[ChangeEvent] = []
        self.gaps: list[tuple[str, str, float]] = []
        self.dead: list[tuple[str, str, str]] = []
        self.touches = 0
        self._hb: psycopg.AsyncConnection[Any] | None = None
        self._consumer: asyncio.Task[None] | None = None

    async def on_gap(self, source: str, reason: str) -> None:
        self.gaps.append((source, reason, time.monotonic()))

    async def on_dead_letter(self, source: str, raw: str, reason: str) -> None:
        self.dead.append((source, raw, reason))

    async def touch(self) -> None:
        """What the listener's probe does: UPDATE the heartbeat row (its own connection)."""
        if self._hb is None:
            self._hb = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        await self._hb.execute(f"UPDATE {HEARTBEAT} SET beat = beat + 1 WHERE id = 1")
        self.touches += 1

    def source(self, url: str, *, probe: bool = True, **kwargs: Any) -> SupabaseRealtimeSource:
        options: dict[str, Any] = {"probe_interval": 0.2, "probe_timeout": 0.8, "join_timeout": 2}
        options.update(kwargs)
        return SupabaseRealtimeSource(
            url,
            KEY,
            ["items"],
            on_gap=self.on_gap,
            on_dead_letter=self.on_dead_letter,
            touch_heartbeat=self.touch if probe else None,
            heartbeat_table=HEARTBEAT,
            reconnect_backoff=0.1,
            **options,
        )

    @contextlib.asynccontextmanager
    async def running(self, source: SupabaseRealtimeSource) -> AsyncIterator[SupabaseRealtimeSource]:
        async def consume() -> None:
            async for event in source.events():
                self.events.append(event)

        self._consumer = asyncio.create_task(consume())
        try:
            yield source
        finally:
            await source.close()
            await asyncio.wait_for(self._consumer, 5)  # close() ends the iteration
            if self._hb is not None:
                await self._hb.close()

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.gaps]

    def of(self, table: str) -> list[ChangeEvent]:
        return [e for e in self.events if e.table == table]

    def ids(self) -> list[int]:
        return [e.row["id"] for e in self.of("items")]


@pytest.fixture
def harness(pg: PostgresServer) -> Harness:
    return Harness(pg)


# -- pure parts -------------------------------------------------------------------------------------


def test_realtime_url_is_derived_like_supabase_py() -> None:
    assert realtime_url("https://abc.supabase.co") == "wss://abc.supabase.co/realtime/v1"
    assert realtime_url("https://abc.supabase.co/") == "wss://abc.supabase.co/realtime/v1"
    assert realtime_url("http://127.0.0.1:54321") == "ws://127.0.0.1:54321/realtime/v1"
    assert realtime_url("wss://abc.supabase.co/realtime/v1") == "wss://abc.supabase.co/realtime/v1"
    assert realtime_url("wss://abc.supabase.co/realtime/v1/websocket") == "wss://abc.supabase.co/realtime/v1"
    with pytest.raises(ValueError):
        realtime_url("postgresql://localhost/db")


def test_payload_conversion_uses_the_wire_names() -> None:
    data: dict[str, Any] = {"schema": "public", "table": "items", "commit_timestamp": "2024-05-01T10:00:00.123Z"}
    data["errors"] = None
    update: dict[str, Any] = {
        **data,
        "type": "UPDATE",
        "columns": [],
        "record": {"id": 1, "qty": 3},
        "old_record": {"id": 1, "qty": 2},
    }
    event = change_event_from_payload({"ids": [7], "data": update})
    assert (event.type, event.record, event.old_record) == ("UPDATE", {"id": 1, "qty": 3}, {"id": 1, "qty": 2})
    assert event.position == "2024-05-01T10:00:00.123Z" and event.commit_timestamp is not None
    with pytest.raises(ValueError):  # a DELETE without its old row cannot be keyed
        change_event_from_payload({"ids": [7], "data": {**data, "type": "DELETE", "record": {}}})


async def test_it_is_a_change_source(harness: Harness) -> None:
    source = harness.source("https://abc.supabase.co")
    assert isinstance(source, ChangeSource)
    assert (source.name, source.durable, source.tables) == ("supabase", False, ("items",))
    assert KEY not in repr(source)
    await source.confirm("anything")  # no-op, nothing to confirm
    await source.close()
    settings = ListenerSettings(supabase_url="https://abc.supabase.co", supabase_key=KEY, realtime_probe_interval_s=1)
    configured = SupabaseRealtimeSource.from_settings(
        settings, ["items"], on_gap=harness.on_gap, on_dead_letter=harness.on_dead_letter, touch_heartbeat=harness.touch
    )
    assert "wss://abc.supabase.co/realtime/v1" in repr(configured) and KEY not in repr(configured)
    await configured.close()


# -- (a) changes arrive as ChangeEvents -------------------------------------------------------------


async def test_insert_update_delete_arrive_as_change_events(
    harness: Harness, standin: RealtimeStandIn, db: psycopg.AsyncConnection[Any]
) -> None:
    async with harness.running(harness.source(standin.url)) as source:  # the project URL, as configured
        await wait_until(lambda: REASON_SUBSCRIBED in harness.reasons(), "the first gap signal")
        await db.execute("""INSERT INTO items VALUES (1, 'a', 2, '{"k": [1, 2]}')""")
        await db.execute("UPDATE items SET qty = 3 WHERE id = 1")
        await db.execute("DELETE FROM items WHERE id = 1")
        await db.execute("INSERT INTO other VALUES (1, 'not watched')")
        await db.execute("INSERT INTO items VALUES (2, 'marker', 0, NULL)")
        await wait_until(lambda: len(harness.of("items")) >= 4, "four item events")

        inserted, updated, deleted, marker = harness.of("items")
        row = {"id": 1, "name": "a", "qty": 2, "meta": {"k": [1, 2]}}
        assert (inserted.type, inserted.record, inserted.old_record) == ("INSERT", row, None)
        assert (updated.type, updated.record, updated.old_record) == ("UPDATE", {**row, "qty": 3}, row)
        assert (deleted.type, deleted.record, deleted.old_record) == ("DELETE", None, {**row, "qty": 3})
        assert marker.record == {"id": 2, "name": "marker", "qty": 0, "meta": None}
        for event in (inserted, updated, deleted, marker):
            assert (event.schema_, event.source) == ("public", "supabase")
            assert event.position is not None and event.position.endswith("Z")
            assert event.commit_timestamp is not None
        assert harness.of("other") == []  # committed before the marker, so it would have come first
        assert standin.changes_seen >= 6  # the stand-in did read the non-watched change from the slot
        assert source.received == len(harness.events) + source.heartbeats  # nothing else was delivered
        assert source.malformed == 0 and harness.dead == []
        assert standin.heartbeats >= 1  # the client's own Phoenix heartbeat was sent and answered


# -- (b) gap after the first subscribe and after a reconnect ----------------------------------------


async def test_gap_after_subscribe_and_after_reconnect(
    harness: Harness, standin: RealtimeStandIn, db: psycopg.AsyncConnection[Any]
) -> None:
    async with harness.running(harness.source(standin.realtime_url)) as source:
        await wait_until(lambda: harness.reasons() == [REASON_SUBSCRIBED], "the first gap signal")
        await db.execute("INSERT INTO items VALUES (1, 'before', 1, NULL)")
        await wait_until(lambda: harness.ids() == [1], "the first event")

        assert await standin.drop_connections() == 1
        await wait_until(lambda: REASON_RECONNECTED in harness.reasons(), "a gap signal after the reconnect")
        await db.execute("INSERT INTO items VALUES (2, 'after', 1, NULL)")
        await wait_until(lambda: harness.ids() == [1, 2], "an event after the reconnect")

        assert harness.reasons() == [REASON_SUBSCRIBED, REASON_RECONNECTED]
        assert all(name == "supabase" for name, _, _ in harness.gaps)
        assert standin.connections_total == 2 and standin.joins == 2  # the client itself reconnected and rejoined
        assert source.resubscribes == 1 and source.probe_failures == 0


async def test_gap_comes_after_the_feed_really_flows(
    harness: Harness, standin: RealtimeStandIn, db: psycopg.AsyncConnection[Any]
) -> None:
    """realtime-js#525: SUBSCRIBED precedes the feed. A change in that window is lost, so the gap
    signal (the conservative invalidation) must come after it, not at SUBSCRIBED."""
    standin.subscribed_delay = 0.6
    async with harness.running(harness.source(standin.realtime_url, probe_timeout=1.5)) as source:
        await wait_until(lambda: standin.joins == 1, "the join")
        await db.execute("INSERT INTO items VALUES (1, 'in the window', 1, NULL)")
        lost_at = time.monotonic()
        await wait_until(lambda: len(harness.gaps) == 1, "the first gap signal")
        await db.execute("INSERT INTO items VALUES (2, 'after', 1, NULL)")
        await wait_until(lambda: 2 in harness.ids(), "an event once the feed flows")

        assert harness.gaps[0][2] > lost_at
        assert harness.ids() == [2]  # the change in the window really was lost (at most once)
        assert source.probe_failures == 0  # retouching while pending covers the window


async def test_without_probe_gap_on_each_subscribe(
    harness: Harness, standin: RealtimeStandIn, db: psycopg.AsyncConnection[Any]
) -> None:
    async with harness.running(harness.source(standin.realtime_url, probe=False)) as source:
        await wait_until(lambda: harness.reasons() == [REASON_SUBSCRIBED], "the first gap signal")
        await standin.drop_connections()
        await wait_until(lambda: harness.reasons() == [REASON_SUBSCRIBED, REASON_RECONNECTED], "a second gap")
        await db.execute("INSERT INTO items VALUES (1, 'x', 1, NULL)")
        await wait_until(lambda: harness.ids() == [1], "an event after the reconnect")
        assert harness.touches == 0 and source.heartbeats == 0


# -- (c) a silent feed trips the probe --------------------------------------------------------------


async def test_silent_feed_trips_the_probe_and_resubscribes(
    harness: Harness, standin: RealtimeStandIn, db: psycopg.AsyncConnection[Any]
) -> None:
    async with harness.running(harness.source(standin.realtime_url)) as source:
        await wait_until(lambda: harness.reasons() == [REASON_SUBSCRIBED], "the first gap signal")
        joins_before = standin.joins

        standin.silent = True
        await db.execute("INSERT INTO items VALUES (1, 'lost', 1, NULL)")
        await wait_until(lambda: source.probe_failures >= 1, "a probe failure")
        await wait_until(lambda: standin.joins > joins_before, "a fresh join")
        await wait_until(lambda: source.resubscribes >= 1, "a resubscribe")
        assert REASON_PROBE_TIMEOUT in harness.reasons()
        assert standin.connections_total >= 2  # torn down: a fresh client, not the same socket

        standin.silent = False
        await wait_until(lambda: REASON_AFTER_PROBE in harness.reasons(), "the gap once the feed flows again")
        await db.execute("INSERT INTO items VALUES (2, 'flows again', 1, NULL)")
        await wait_until(lambda: 2 in harness.ids(), "an event after leaving silent mode")
        assert harness.ids() == [2]
        failures = source.probe_failures
        await asyncio.sleep(1.2)  # longer than the probe timeout: a healthy feed trips nothing
        assert source.probe_failures == failures


async def test_lost_bindings_recover_without_help(
    harness: Harness, standin: RealtimeStandIn, db: psycopg.AsyncConnection[Any]
) -> None:
    """supabase/realtime-py#213/#258: joined but without bindings. Only the probe can tell."""
    async with harness.running(harness.source(standin.realtime_url)) as source:
        await wait_until(lambda: harness.reasons() == [REASON_SUBSCRIBED], "the first gap signal")
        assert standin.lose_bindings() == 1
        await wait_until(lambda: REASON_AFTER_PROBE in harness.reasons(), "recovery after the probe failure")
        await db.execute("INSERT INTO items VALUES (1, 'x', 1, NULL)")
        await wait_until(lambda: harness.ids() == [1], "an event on the fresh subscription")
        assert source.probe_failures == 1
        assert harness.reasons() == [REASON_SUBSCRIBED, REASON_PROBE_TIMEOUT, REASON_AFTER_PROBE]
        assert standin.connections_total == 2
        await wait_until(lambda: standin.connections == 1, "the dead subscription's socket to be closed")


# -- (d) malformed payloads are dead-lettered -------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason_part"),
    [
        ({"type": "INSERT", "commit_timestamp": "not a timestamp", "record": {"id": 9}}, "commit_timestamp"),
        ({"type": "*", "commit_timestamp": "2024-05-01T10:00:00.000Z", "record": {"id": 9}}, "type"),
        ({"type": "UPDATE", "commit_timestamp": "2024-05-01T10:00:00.000Z", "old_record": {"id": 9}}, "record"),
    ],
)
async def test_malformed_payload_is_dead_lettered(
    harness: Harness,
    standin: RealtimeStandIn,
    db: psycopg.AsyncConnection[Any],
    data: dict[str, Any],
    reason_part: str,
) -> None:
    async with harness.running(harness.source(standin.realtime_url)) as source:
        await wait_until(lambda: harness.reasons() == [REASON_SUBSCRIBED], "the first gap signal")
        await standin.send_raw("this is not a phoenix frame")  # the client drops it itself
        await standin.send_raw({"schema": "public", "table": "items", "columns": [], "errors": None, **data})
        await wait_until(lambda: len(harness.dead) == 1, "a dead letter")
        await db.execute("INSERT INTO items VALUES (1, 'still flowing', 1, NULL)")
        await wait_until(lambda: harness.ids() == [1], "a valid event after the malformed one")

        name, raw, reason = harness.dead[0]
        assert name == "supabase" and reason_part in reason
        assert json.loads(raw)["data"]["table"] == "items"
        assert source.malformed == 1 and len(harness.events) == 1
        assert REASON_DEAD_LETTER in harness.reasons()  # the change it stood for is lost: a gap


# -- (e) heartbeat changes belong to the probe ------------------------------------------------------


async def test_heartbeat_changes_are_not_yielded(
    harness: Harness, standin: RealtimeStandIn, db: psycopg.AsyncConnection[Any]
) -> None:
    async with harness.running(harness.source(standin.realtime_url)) as source:
        await wait_until(lambda: source.heartbeats >= 3, "three probe round trips")
        await db.execute(f"UPDATE {HEARTBEAT} SET beat = beat + 100 WHERE id = 1")  # not the probe's own
        await db.execute("INSERT INTO items VALUES (1, 'marker', 1, NULL)")
        await wait_until(lambda: harness.ids() == [1], "the marker")

        assert [e.table for e in harness.events] == ["items"]
        assert source.heartbeats >= 4 and harness.touches >= 3
        assert source.probe_failures == 0 and harness.reasons() == [REASON_SUBSCRIBED]


# -- close ------------------------------------------------------------------------------------------


async def test_close_stops_everything(
    harness: Harness, standin: RealtimeStandIn, db: psycopg.AsyncConnection[Any]
) -> None:
    before = asyncio.all_tasks()
    source = harness.source(standin.realtime_url)
    async with harness.running(source):
        await wait_until(lambda: source.heartbeats >= 1, "a probe round trip")
        await standin.drop_connections()  # leave a reconnect behind too
        await wait_until(lambda: REASON_RECONNECTED in harness.reasons(), "the reconnect")
    await source.close()  # idempotent
    await wait_until(lambda: standin.connections == 0, "the socket to close")
    await asyncio.sleep(0.05)
    leftover = [task.get_name() for task in asyncio.all_tasks() - before if not task.done()]
    assert leftover == []
    touches = harness.touches
    await asyncio.sleep(0.5)
    assert harness.touches == touches  # the probe is gone too

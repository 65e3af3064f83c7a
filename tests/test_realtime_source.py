"""``SupabaseRealtimeSource`` end to end: the REAL ``realtime`` client, REAL supabase-py for the
heartbeat, a REAL Postgres, REAL Redis, and a REAL ``Listener`` answering the gaps.

Only the servers are stand-ins (``tests/realtime_standin.py`` fed by a wal2json slot, and
``tests/postgrest_standin.py`` for the REST API and the gateway), because the real ones cannot run
here. The gap and dead-letter handlers are the listener's own: the harness records each call and
passes it on, so a gap really bumps generations in Redis and a dead letter is really parked.
Probe intervals and timeouts are sub-second so the file runs in seconds.
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
from shared_cache import CacheManager
from tests.supabase_project import HEARTBEAT, KEY, SCHEMA_SQL, TABLES, SupabaseProject, altered
from worker.events import ChangeEvent
from worker.listener import Listener
from worker.rules import DEFAULT_RULES, Planner
from worker.settings import ListenerSettings
from worker.sources.base import ChangeSource
from worker.sources.build import plan_check_for
from worker.sources.realtime_payload import change_event_from_payload
from worker.sources.realtime_probe import REASON_HEARTBEAT_LOST
from worker.sources.supabase import (
    REASON_AFTER_CLOSE,
    REASON_AFTER_PROBE,
    REASON_CHANNEL_CLOSED,
    REASON_CHANNEL_ERROR,
    REASON_DEAD_LETTER,
    REASON_PROBE_TIMEOUT,
    REASON_RECONNECTED,
    REASON_REJECTED,
    REASON_SUBSCRIBED,
    REASON_UNPLANNABLE,
    SupabaseRealtimeSource,
)
from worker.sources.supabase_heartbeat import SupabaseHeartbeat

WAIT = 10.0
TENANT = "t1"
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
    await conn.execute(f"TRUNCATE documents, document_chunks, agents, collections, notes_without_key, {HEARTBEAT}")
    yield conn
    await conn.close()


@pytest.fixture
async def project(pg: PostgresServer) -> AsyncIterator[SupabaseProject]:
    async with SupabaseProject(pg.dsn) as running:
        yield running


@pytest.fixture
async def listener(manager: CacheManager, redis_url: str) -> AsyncIterator[Listener]:
    """A real listener (not run: its gap and dead-letter handlers are what the source calls)."""
    worker = Listener(ListenerSettings(dead_letter_key=f"{manager.keys.prefix}dead"), Planner(DEFAULT_RULES), None,
                      manager, redis_url)  # fmt: skip
    await worker.redis.sadd(manager.keys.worker_tenants, TENANT)
    await worker.tenants.load()  # what a running listener does when it starts
    yield worker
    await worker.close()


async def wait_until(predicate: Callable[[], bool], what: str, within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Harness:
    """Runs a source into a real listener's handlers, recording each call on the way."""

    def __init__(self, project: SupabaseProject, listener: Listener) -> None:
        self.project, self.listener = project, listener
        self.events: list[ChangeEvent] = []
        self.gaps: list[tuple[str, str, float]] = []
        self.dead: list[tuple[str, str, str]] = []
        self._consumer: asyncio.Task[None] | None = None

    async def on_gap(self, source: str, reason: str) -> None:
        self.gaps.append((source, reason, time.monotonic()))
        await self.listener.on_gap(source, reason)

    async def on_dead_letter(self, source: str, raw: str, reason: str) -> None:
        self.dead.append((source, raw, reason))
        await self.listener.on_dead_letter(source, raw, reason)

    def source(self, url: str | None = None, *, probe: bool = True, **kwargs: Any) -> SupabaseRealtimeSource:
        # a timeout well above a round trip on a loaded machine, where a test needs the probe quiet
        options: dict[str, Any] = {"probe_interval": 0.2, "probe_timeout": 2.0, "join_timeout": 2}
        options.update(kwargs)
        tables = options.pop("tables", TABLES)
        url = url or self.project.url
        source = SupabaseRealtimeSource(
            url,
            KEY,
            tables,
            on_gap=self.on_gap,
            on_dead_letter=self.on_dead_letter,
            heartbeat=SupabaseHeartbeat(url, KEY, HEARTBEAT) if probe else None,
            plan_check=plan_check_for(self.listener.planner),
            reconnect_backoff=0.1,
            **options,
        )
        self.listener.add_source(source)  # the listener finds the tables a gap covers by source name
        return source

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

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.gaps]

    def of(self, table: str) -> list[ChangeEvent]:
        return [e for e in self.events if e.table == table]

    def ids(self) -> list[str]:
        return [e.row["id"] for e in self.of("documents")]


@pytest.fixture
def harness(project: SupabaseProject, listener: Listener) -> Harness:
    return Harness(project, listener)


async def cached(cache: CacheManager, doc: str) -> Any:
    return await cache.get("document", doc, TENANT)


async def insert_doc(db: psycopg.AsyncConnection[Any], doc: str, title: str = "x") -> None:
    await db.execute("INSERT INTO documents VALUES (%s, %s, 'c1', %s)", (doc, TENANT, title))


# -- pure parts -------------------------------------------------------------------------------------


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
    with pytest.raises(ValueError, match="old_record"):  # a DELETE without its old row cannot be keyed
        change_event_from_payload({"ids": [7], "data": {**data, "type": "DELETE", "record": {}}})
    with pytest.raises(ValueError, match="413"):
        change_event_from_payload({"ids": [7], "data": {**update, "errors": ["Error 413: Payload Too Large"]}})


async def test_it_is_a_change_source_over_qualified_tables(harness: Harness) -> None:
    source = harness.source("https://abc.supabase.co", tables=["documents", "public.agents", "other.items"])
    assert isinstance(source, ChangeSource)
    assert (source.name, source.durable) == ("supabase", False)
    assert source.tables == ("public.documents", "public.agents", "other.items")  # one form for every source
    assert KEY not in repr(source) and "wss://abc.supabase.co/realtime/v1" in repr(source)
    assert await source.lag_bytes() is None
    assert {"received", "probe_failures", "channel_errors", "heartbeats_lost", "gaps"} <= set(source.counters())
    await source.confirm("anything")  # no-op, nothing to confirm
    await source.close()
    with pytest.raises(ValueError, match="heartbeat table"):
        harness.source(tables=["documents", HEARTBEAT])


# -- changes arrive as ChangeEvents -----------------------------------------------------------------


async def test_insert_update_delete_arrive_as_change_events(
    harness: Harness, project: SupabaseProject, db: psycopg.AsyncConnection[Any]
) -> None:
    async with harness.running(harness.source()) as source:
        await wait_until(lambda: REASON_SUBSCRIBED in harness.reasons(), "the first gap signal")
        await insert_doc(db, "d1", "a")
        await db.execute("UPDATE documents SET title = 'b' WHERE id = 'd1'")
        await db.execute("DELETE FROM documents WHERE id = 'd1'")
        await db.execute("INSERT INTO notes_without_key VALUES ('t1', 'not watched')")
        await insert_doc(db, "d2", "marker")
        await wait_until(lambda: len(harness.of("documents")) >= 4, "four document events")

        inserted, updated, deleted, marker = harness.of("documents")
        row = {"id": "d1", "tenant_id": TENANT, "collection_id": "c1", "title": "a"}
        assert (inserted.type, inserted.record, inserted.old_record) == ("INSERT", row, None)
        assert (updated.type, updated.record, updated.old_record) == ("UPDATE", {**row, "title": "b"}, row)
        assert (deleted.type, deleted.record, deleted.old_record) == ("DELETE", None, {**row, "title": "b"})
        assert marker.record is not None and marker.record["title"] == "marker"
        for event in (inserted, updated, deleted, marker):
            assert (event.schema_, event.source) == ("public", "supabase")
            assert event.position is not None and event.position.endswith("Z")
        assert source.received == len(harness.events) + source.heartbeats  # nothing else was delivered
        assert source.malformed == source.unplannable == 0 and harness.dead == []
        assert project.realtime.heartbeats >= 1  # the client's own Phoenix heartbeat was sent and answered


# -- gaps really invalidate: after a subscribe and a reconnect ---------------------------------------


async def test_gap_after_subscribe_and_after_reconnect_invalidates_covered_types(
    harness: Harness, project: SupabaseProject, db: psycopg.AsyncConnection[Any], manager: CacheManager
) -> None:
    async with harness.running(harness.source()) as source:
        await wait_until(lambda: harness.reasons() == [REASON_SUBSCRIBED], "the first gap signal")
        await insert_doc(db, "d1")
        await wait_until(lambda: harness.ids() == ["d1"], "the first event")
        await manager.set("document", "d9", {"v": "cached"}, TENANT)
        await manager.set("agent_config", "a9", {"v": "cached"}, TENANT)

        assert await project.realtime.drop_connections() == 1
        await wait_until(lambda: REASON_RECONNECTED in harness.reasons(), "a gap signal after the reconnect")
        await insert_doc(db, "d2")
        await wait_until(lambda: harness.ids() == ["d1", "d2"], "an event after the reconnect")

        assert harness.reasons()[0] == REASON_SUBSCRIBED and harness.reasons()[-1] == REASON_RECONNECTED
        assert harness.reasons()[1].startswith(REASON_CHANNEL_ERROR)  # the dropped socket, at once
        assert source.resubscribes == 1 and source.channel_errors >= 1 and source.probe_failures == 0
        assert await cached(manager, "d9") is None  # the listener really invalidated what the source covers
        assert await manager.get("agent_config", "a9", TENANT) is None


async def test_gap_comes_after_the_feed_really_flows(
    harness: Harness, project: SupabaseProject, db: psycopg.AsyncConnection[Any]
) -> None:
    """realtime-js#525: SUBSCRIBED precedes the feed. A change in that window is lost, so the gap
    signal (the conservative invalidation) must come after it, not at SUBSCRIBED."""
    project.realtime.subscribed_delay = 0.6
    async with harness.running(harness.source()) as source:
        await wait_until(lambda: project.realtime.joins == 1, "the join")
        await insert_doc(db, "d1", "in the window")
        lost_at = time.monotonic()
        await wait_until(lambda: len(harness.gaps) == 1, "the first gap signal")
        await insert_doc(db, "d2", "after")
        await wait_until(lambda: "d2" in harness.ids(), "an event once the feed flows")

        assert harness.gaps[0][2] > lost_at
        assert harness.ids() == ["d2"]  # the change in the window really was lost (at most once)
        assert source.probe_failures == 0  # retouching while pending covers the window


async def test_without_probe_gap_on_each_subscribe(
    harness: Harness, project: SupabaseProject, db: psycopg.AsyncConnection[Any]
) -> None:
    async with harness.running(harness.source(probe=False)) as source:
        await wait_until(lambda: harness.reasons() == [REASON_SUBSCRIBED], "the first gap signal")
        await project.realtime.drop_connections()
        await wait_until(lambda: REASON_RECONNECTED in harness.reasons(), "a gap after the reconnect")
        await insert_doc(db, "d1")
        await wait_until(lambda: harness.ids() == ["d1"], "an event after the reconnect")
        assert source.heartbeats == 0


# -- a silent feed trips the probe ------------------------------------------------------------------


async def test_silent_feed_trips_the_probe_and_resubscribes(
    harness: Harness, project: SupabaseProject, db: psycopg.AsyncConnection[Any]
) -> None:
    async with harness.running(harness.source(probe_timeout=1.0)) as source:
        await wait_until(lambda: harness.reasons() == [REASON_SUBSCRIBED], "the first gap signal")
        joins_before = project.realtime.joins

        project.realtime.silent = True
        await insert_doc(db, "d1", "lost")
        await wait_until(lambda: source.probe_failures >= 1, "a probe failure")
        await wait_until(lambda: project.realtime.joins > joins_before, "a fresh join")
        assert REASON_PROBE_TIMEOUT in harness.reasons()
        assert project.realtime.connections_total >= 2  # torn down: a fresh client, not the same socket

        project.realtime.silent = False
        await wait_until(lambda: REASON_AFTER_PROBE in harness.reasons(), "the gap once the feed flows again")
        await insert_doc(db, "d2", "flows again")
        await wait_until(lambda: "d2" in harness.ids(), "an event after leaving silent mode")
        assert harness.ids() == ["d2"]
        failures = source.probe_failures
        await asyncio.sleep(1.5)  # longer than the probe timeout: a healthy feed trips nothing
        assert source.probe_failures == failures


async def test_lost_bindings_recover_without_help(
    harness: Harness, project: SupabaseProject, db: psycopg.AsyncConnection[Any]
) -> None:
    """supabase/realtime-py#213/#258: joined but without bindings. Only the probe can tell."""
    async with harness.running(harness.source(probe_timeout=1.0)) as source:
        await wait_until(lambda: harness.reasons() == [REASON_SUBSCRIBED], "the first gap signal")
        assert project.realtime.lose_bindings() == 1
        await wait_until(lambda: REASON_AFTER_PROBE in harness.reasons(), "recovery after the probe failure")
        await insert_doc(db, "d1")
        await wait_until(lambda: harness.ids() == ["d1"], "an event on the fresh subscription")
        assert source.probe_failures == 1
        assert harness.reasons() == [REASON_SUBSCRIBED, REASON_PROBE_TIMEOUT, REASON_AFTER_PROBE]
        await wait_until(lambda: project.realtime.connections == 1, "the dead subscription's socket to be closed")


# -- the server refuses or ends the subscription ----------------------------------------------------


async def test_table_missing_from_the_publication_is_a_gap_and_rejoins_do_not_hide_it(
    harness: Harness, project: SupabaseProject, pg: PostgresServer, db: psycopg.AsyncConnection[Any]
) -> None:
    """The server rolls back the channel's bindings and pushes a ``system`` error; the client says
    CHANNEL_ERROR and rejoins every second or so. Each rejoin's SUBSCRIBED must not restart the
    probe's clock, and the rejoins must not each cost a conservative invalidation."""
    async with altered(pg.dsn, f"ALTER PUBLICATION supabase_realtime DROP TABLE {HEARTBEAT}",
                       f"ALTER PUBLICATION supabase_realtime ADD TABLE {HEARTBEAT}"):  # fmt: skip
        async with harness.running(harness.source(probe_timeout=2.5)) as source:
            await wait_until(lambda: source.probe_failures >= 1, "a probe failure despite the rejoins")
            assert project.realtime.failed_subscriptions >= 2  # the client did rejoin within the timeout
            assert source.subscriptions >= 2 and source.channel_errors >= 2
            reasons = harness.reasons()
            assert reasons[0].startswith(REASON_CHANNEL_ERROR) and "Realtime is enabled" in reasons[0]
            assert REASON_PROBE_TIMEOUT in reasons
            assert len(reasons) == 1 + source.probe_failures  # one for the failure, one per probe timeout
            assert source.counters()["channel_errors"] == source.channel_errors
    async with harness.running(harness.source()) as source:  # back in the publication: it flows again
        await wait_until(lambda: source.heartbeats >= 1, "a heartbeat")
        await insert_doc(db, "d1")
        await wait_until(lambda: "d1" in harness.ids(), "an event")


async def test_channel_closed_by_the_server_is_a_gap_and_a_fresh_subscription(
    harness: Harness, project: SupabaseProject, db: psycopg.AsyncConnection[Any], manager: CacheManager
) -> None:
    async with harness.running(harness.source(probe_timeout=5.0)) as source:
        await wait_until(lambda: harness.reasons() == [REASON_SUBSCRIBED], "the first gap signal")
        await manager.set("document", "d9", {"v": "cached"}, TENANT)
        assert await project.realtime.shutdown_channels("Too many messages per second") == 1
        await insert_doc(db, "d1", "lost while closed")
        await wait_until(lambda: REASON_AFTER_CLOSE in harness.reasons(), "the gap once a fresh channel flows")
        await insert_doc(db, "d2")
        await wait_until(lambda: "d2" in harness.ids(), "an event on the fresh channel")

        failure = harness.reasons()[1]
        assert failure.startswith((REASON_CHANNEL_ERROR, REASON_CHANNEL_CLOSED))
        assert "Too many messages per second" in failure
        assert len(harness.reasons()) == 3  # subscribed, the failure (once), and the fresh subscription
        assert source.channel_closes == 1 and source.probe_failures == 0  # seen at once, not by the probe
        assert await cached(manager, "d9") is None


# -- changes lost on the server side ----------------------------------------------------------------


async def test_delete_under_row_level_security_is_a_gap_not_only_a_dead_letter(
    harness: Harness, pg: PostgresServer, db: psycopg.AsyncConnection[Any], manager: CacheManager
) -> None:
    """With RLS on, the server sends a DELETE's old_record with the primary key only: no tenant."""
    async with altered(pg.dsn, "ALTER TABLE documents ENABLE ROW LEVEL SECURITY",
                       "ALTER TABLE documents DISABLE ROW LEVEL SECURITY"):  # fmt: skip
        async with harness.running(harness.source()) as source:
            await wait_until(lambda: harness.reasons() == [REASON_SUBSCRIBED], "the first gap signal")
            await insert_doc(db, "d1")
            await wait_until(lambda: harness.ids() == ["d1"], "the insert, readable as usual")
            await manager.set("document", "d1", {"v": "cached"}, TENANT)
            await db.execute("DELETE FROM documents WHERE id = 'd1'")
            await wait_until(lambda: REASON_UNPLANNABLE in harness.reasons(), "a gap for the unplannable delete")

            assert harness.ids() == ["d1"]  # not yielded
            (name, raw, reason), *_ = harness.dead
            assert name == "supabase" and "tenant_id" in reason and "cannot be planned" in reason
            assert json.loads(raw)["data"]["old_record"] == {"id": "d1"}
            assert source.unplannable == 1 and harness.listener.stats["dead_letters"] == 1
            assert await cached(manager, "d1") is None  # the deleted row's entries are gone after all


async def test_changes_skipped_by_the_rate_limit_are_a_gap(
    harness: Harness, project: SupabaseProject, db: psycopg.AsyncConnection[Any], manager: CacheManager
) -> None:
    """Over the project's database-event limit the server skips changes silently, heartbeats too;
    a heartbeat overtaken by a later one tells (well before the probe times out)."""
    project.realtime.db_events_limit, project.realtime.rate_window_s = 10.0, 1.0
    async with harness.running(harness.source(probe_timeout=4.0)) as source:
        await wait_until(lambda: harness.reasons() == [REASON_SUBSCRIBED], "the first gap signal")
        await manager.set("document", "d9", {"v": "cached"}, TENANT)
        await db.execute(
            "INSERT INTO documents SELECT 'b' || g, %s, 'c1', 'burst' FROM generate_series(1, 30) g", (TENANT,)
        )
        await wait_until(lambda: len(harness.of("documents")) == 30, "the burst, delivered")
        await db.execute("UPDATE documents SET title = 'skipped' WHERE id = 'b1'")  # over the limit now
        await wait_until(lambda: REASON_HEARTBEAT_LOST in harness.reasons(), "a gap for the skipped changes")

        assert project.realtime.skipped >= 1 and source.heartbeats_lost >= 1
        assert source.probe_failures == 0
        assert [e.type for e in harness.of("documents")].count("UPDATE") == 0  # the update was really lost
        assert await cached(manager, "d9") is None


async def test_error_rows_the_client_rejects_are_a_gap(harness: Harness, db: psycopg.AsyncConnection[Any]) -> None:
    """A table without a primary key: the server sends error rows with a null commit_timestamp,
    which realtime-py drops (it only logs them)."""
    source = harness.source(tables=[*TABLES, "public.notes_without_key"])
    async with harness.running(source):
        await wait_until(lambda: harness.reasons() == [REASON_SUBSCRIBED], "the first gap signal")
        await db.execute("INSERT INTO notes_without_key VALUES ('t1', 'lost')")
        await wait_until(lambda: REASON_REJECTED in harness.reasons(), "a gap for the rejected change")
        (_, raw, reason), *_ = harness.dead
        assert "no primary key" in reason and json.loads(raw)["event"] == "postgres_changes"
        assert source.rejected == 1 and harness.events == []


async def test_oversized_change_is_dead_lettered_and_a_gap(
    harness: Harness, project: SupabaseProject, db: psycopg.AsyncConnection[Any]
) -> None:
    """Over max_record_bytes the server drops every value over 64 bytes and flags the row (413)."""
    project.realtime.walrus.max_record_bytes = 400
    async with harness.running(harness.source()) as source:
        await wait_until(lambda: harness.reasons() == [REASON_SUBSCRIBED], "the first gap signal")
        await insert_doc(db, "d1", "a long title " * 40)
        await wait_until(lambda: REASON_DEAD_LETTER in harness.reasons(), "a gap for the oversized change")
        assert "413" in harness.dead[0][2] and source.malformed == 1 and harness.events == []


@pytest.mark.parametrize(
    ("data", "reason_part"),
    [
        ({"type": "INSERT", "commit_timestamp": "not a timestamp", "record": {"id": "d9"}}, "commit_timestamp"),
        ({"type": "*", "commit_timestamp": "2024-05-01T10:00:00.000Z", "record": {"id": "d9"}}, "type"),
        ({"type": "UPDATE", "commit_timestamp": "2024-05-01T10:00:00.000Z", "old_record": {"id": "d9"}}, "record"),
    ],
)
async def test_malformed_payload_is_dead_lettered(
    harness: Harness,
    project: SupabaseProject,
    db: psycopg.AsyncConnection[Any],
    data: dict[str, Any],
    reason_part: str,
) -> None:
    async with harness.running(harness.source()) as source:
        await wait_until(lambda: harness.reasons() == [REASON_SUBSCRIBED], "the first gap signal")
        await project.realtime.send_raw("this is not a phoenix frame")  # the client drops it itself
        await project.realtime.send_raw(
            {"schema": "public", "table": "documents", "columns": [], "errors": None, **data}
        )
        await wait_until(lambda: len(harness.dead) == 1, "a dead letter")
        await insert_doc(db, "d1", "still flowing")
        await wait_until(lambda: harness.ids() == ["d1"], "a valid event after the malformed one")

        name, raw, reason = harness.dead[0]
        assert name == "supabase" and reason_part in reason
        assert json.loads(raw)["data"]["table"] == "documents"
        assert source.malformed == 1 and len(harness.events) == 1 and source.rejected == 0
        assert REASON_DEAD_LETTER in harness.reasons()  # the change it stood for is lost: a gap


# -- the heartbeat -----------------------------------------------------------------------------------


async def test_heartbeats_go_through_the_rest_api_and_are_not_yielded(
    harness: Harness, project: SupabaseProject, db: psycopg.AsyncConnection[Any]
) -> None:
    async with harness.running(harness.source()) as source:
        await wait_until(lambda: source.heartbeats >= 3, "three probe round trips")
        row = await (await db.execute(f"SELECT beat FROM {HEARTBEAT} WHERE id = %s", (source.probe_id,))).fetchone()
        assert row is not None and row[0] >= 3  # upserted through supabase-py and the REST stand-in
        assert any(method == "POST" and HEARTBEAT in path for method, path in project.rest.requests)  # type: ignore[union-attr]
        await db.execute(f"INSERT INTO {HEARTBEAT} (id, beat) VALUES ('another-listener', 1)")  # not ours
        await insert_doc(db, "d1", "marker")
        await wait_until(lambda: harness.ids() == ["d1"], "the marker")
        assert [e.table for e in harness.events] == ["documents"]
        assert source.probe_failures == source.heartbeats_lost == 0 and harness.reasons() == [REASON_SUBSCRIBED]
    rows = await (await db.execute(f"SELECT id FROM {HEARTBEAT}")).fetchall()
    assert rows == [("another-listener",)]  # its own row is deleted when the source closes


async def test_a_realtime_url_setting_still_reaches_the_rest_api(
    harness: Harness, project: SupabaseProject, db: psycopg.AsyncConnection[Any]
) -> None:
    """One URL setting: a wss-style realtime URL gives the REST URL too, so the probe works."""
    realtime_form = project.url.replace("http://", "ws://") + "/realtime/v1/websocket"
    settings = ListenerSettings(supabase_url=realtime_form, supabase_key=KEY)
    assert settings.supabase_url == project.url
    async with harness.running(harness.source(settings.supabase_url)) as source:
        await wait_until(lambda: source.heartbeats >= 3, "three probe round trips")
        assert source.probe_errors == source.probe_failures == 0 and harness.reasons() == [REASON_SUBSCRIBED]


async def test_close_stops_everything(harness: Harness, project: SupabaseProject) -> None:
    before = asyncio.all_tasks()
    source = harness.source()
    async with harness.running(source):
        await wait_until(lambda: source.heartbeats >= 1, "a probe round trip")
        await project.realtime.drop_connections()  # leave a reconnect behind too
        await wait_until(lambda: REASON_RECONNECTED in harness.reasons(), "the reconnect")
    await source.close()  # idempotent
    await wait_until(lambda: project.realtime.connections == 0, "the socket to close")
    await asyncio.sleep(0.05)
    leftover = [task.get_name() for task in asyncio.all_tasks() - before if not task.done()]
    assert leftover == []
    requests = len(project.rest.requests)  # type: ignore[union-attr]
    await asyncio.sleep(0.5)
    assert len(project.rest.requests) == requests  # type: ignore[union-attr]  # the probe is gone too

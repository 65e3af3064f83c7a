"""The worker's Supabase REST calls through the REAL supabase-py client, against the PostgREST
stand-in (``tests/postgrest_standin.py``) with a REAL Postgres behind it: the probe's heartbeat
upsert, warm_collection's chunk texts, and one URL setting for every endpoint."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from devtools.embedded import EmbeddedPostgres as PostgresServer
from shared_cache import CacheManager
from tasks.collection_texts import CollectionTextsError, collection_texts
from tasks.settings import TaskSettings
from tasks.supabase_api import project_url, realtime_url, rest_url
from tests.postgrest_standin import PostgrestStandIn
from tests.supabase_project import HEARTBEAT, KEY, SCHEMA_SQL
from worker.settings import ListenerSettings
from worker.sources.supabase_heartbeat import HeartbeatError, SupabaseHeartbeat


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
        conn.execute(
            "INSERT INTO document_chunks (tenant_id, document_id, collection_id, content) "
            "SELECT 'ta', 'd' || (g % 7), 'big', 'chunk ' || lpad(g::text, 5, '0') FROM generate_series(1, 2500) g"
        )
        conn.execute(
            "INSERT INTO document_chunks (tenant_id, document_id, collection_id, content) VALUES "
            "('tb', 'd1', 'big', 'another tenant'), ('ta', 'd1', 'small', 'other collection'), "
            "('ta', 'd1', 'odd,id)', 'odd one'), ('ta', 'd1', 'small', '')"
        )
    yield server
    server.cleanup()


@pytest.fixture
async def rest(pg: PostgresServer) -> AsyncIterator[PostgrestStandIn]:
    server = await PostgrestStandIn(pg.dsn, api_key=KEY).start()
    yield server
    await server.stop()


def task_settings(rest: PostgrestStandIn, **overrides: Any) -> TaskSettings:
    return TaskSettings(
        supabase_url=rest.url, supabase_key=KEY, database_url="postgresql://nowhere:1/none", **overrides
    )


# -- one URL setting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        "https://abc.supabase.co",
        "https://abc.supabase.co/",
        " https://abc.supabase.co ",
        "wss://abc.supabase.co/realtime/v1",
        "wss://abc.supabase.co/realtime/v1/websocket",
        "https://abc.supabase.co/rest/v1/",
    ],
)
def test_every_form_of_the_project_url_gives_the_same_endpoints(given: str) -> None:
    assert project_url(given) == "https://abc.supabase.co"
    assert realtime_url(given) == "wss://abc.supabase.co/realtime/v1"
    assert rest_url(given) == "https://abc.supabase.co/rest/v1"
    assert ListenerSettings(supabase_url=given).supabase_url == TaskSettings(supabase_url=given).supabase_url


def test_a_self_hosted_gateway_keeps_its_path_and_plain_http() -> None:
    assert realtime_url("http://127.0.0.1:54321/supabase") == "ws://127.0.0.1:54321/supabase/realtime/v1"
    assert rest_url("ws://127.0.0.1:54321/supabase/realtime/v1") == "http://127.0.0.1:54321/supabase/rest/v1"


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("postgresql://user:hunter2@db:5432/postgres", "expected a Supabase project URL"),
        ("abc.supabase.co", "expected a Supabase project URL"),
        ("wss://abc.supabase.co/socket", "must end with /realtime/v1"),
        ("https://abc.supabase.co?apikey=hunter2", "must not carry a query"),
        ("https://abc.supabase.co:99999", "expected a Supabase project URL"),
    ],
)
def test_a_wrong_url_is_refused_with_a_clear_error_that_hides_secrets(given: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as caught:
        ListenerSettings(supabase_url=given)
    assert "hunter2" not in str(caught.value)


# -- the heartbeat -----------------------------------------------------------------------------------


async def test_the_heartbeat_upserts_its_own_row_and_deletes_it(rest: PostgrestStandIn, pg: PostgresServer) -> None:
    heartbeat = SupabaseHeartbeat(rest.url, KEY, HEARTBEAT)
    await heartbeat.touch("listener-a", 1)
    await heartbeat.touch("listener-a", 2)
    await heartbeat.touch("listener-b", 7)
    with psycopg.connect(pg.dsn) as conn:
        rows = conn.execute(f"SELECT id, beat FROM {HEARTBEAT} ORDER BY id").fetchall()
    assert rows == [("listener-a", 2), ("listener-b", 7)]
    assert [m for m, _ in rest.requests] == ["POST", "POST", "POST"]  # one upsert per touch
    await heartbeat.forget("listener-a")
    with psycopg.connect(pg.dsn) as conn:
        assert conn.execute(f"SELECT id FROM {HEARTBEAT}").fetchall() == [("listener-b",)]
        conn.execute(f"TRUNCATE {HEARTBEAT}")


async def test_a_refused_heartbeat_says_why_without_the_key(rest: PostgrestStandIn) -> None:
    with pytest.raises(HeartbeatError, match="Invalid API key") as wrong_key:
        await SupabaseHeartbeat(rest.url, "not-the-key", HEARTBEAT).touch("x", 1)
    assert "not-the-key" not in str(wrong_key.value)
    with pytest.raises(HeartbeatError, match=r"public\.no_such_table.*PGRST205"):
        await SupabaseHeartbeat(rest.url, KEY, "no_such_table").touch("x", 1)


# -- warm_collection's texts --------------------------------------------------------------------------


async def test_collection_texts_come_through_the_rest_api_page_by_page(rest: PostgrestStandIn) -> None:
    texts = await collection_texts(task_settings(rest), "ta", "big")
    assert len(texts) == 2500 and texts == sorted(texts) and len(set(texts)) == 2500  # past the 1000-row cap
    assert texts[0] == "chunk 00001" and texts[-1] == "chunk 02500"
    assert sum(1 for method, _ in rest.requests if method == "GET") == 3
    assert await collection_texts(task_settings(rest), "ta", "odd,id)") == ["odd one"]
    assert await collection_texts(task_settings(rest), "tb", "big") == ["another tenant"]  # tenants never mix
    assert await collection_texts(task_settings(rest), "ta", "small") == ["other collection"]  # empty text left out


async def test_a_server_with_a_lower_row_cap_still_yields_every_text(pg: PostgresServer) -> None:
    server = await PostgrestStandIn(pg.dsn, api_key=KEY, max_rows=300).start()
    try:
        texts = await collection_texts(task_settings(server), "ta", "big")
        assert len(texts) == 2500 and len(set(texts)) == 2500
    finally:
        await server.stop()


async def test_collection_texts_errors_name_the_table_and_hide_the_key(rest: PostgrestStandIn) -> None:
    with pytest.raises(CollectionTextsError, match=r"public\.chunks_elsewhere.*PGRST205"):
        await collection_texts(task_settings(rest, chunks_table="chunks_elsewhere"), "ta", "big")
    with pytest.raises(CollectionTextsError, match="42703") as bad_column:
        await collection_texts(task_settings(rest, chunks_text_column="body"), "ta", "big")
    assert KEY not in str(bad_column.value)


async def test_warm_collection_task_reads_through_supabase(
    rest: PostgrestStandIn, manager: CacheManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task as a Celery worker runs it, configured with a project URL and a key only."""
    from tasks.warming import warm_collection

    for name, value in {
        "SHARED_CACHE_REDIS_URL": manager.settings.redis_url.get_secret_value(),
        "SHARED_CACHE_KEY_PREFIX": manager.keys.prefix,
        "SHARED_CACHE_WORKER_SUPABASE_URL": rest.url,
        "SHARED_CACHE_WORKER_SUPABASE_KEY": KEY,
        "SHARED_CACHE_WORKER_DATABASE_URL": "postgresql://nowhere:1/none",  # not used: proves the REST path
        "SHARED_CACHE_WORKER_EMBEDDING_PROVIDER": "local",
        "HF_HUB_OFFLINE": "1",
    }.items():
        monkeypatch.setenv(name, value)
    first = await asyncio.to_thread(warm_collection.run, "ta", "small")
    assert first == {"texts": 1, "cache_hits": 0, "generated": 1}
    assert len(await manager.get_embedding("other collection", "all-MiniLM-L6-v2", "ta") or []) == 384


def test_nothing_imports_supabase_unless_configured_for_it() -> None:
    code = (
        "import sys, shared_cache, worker.listener, worker.sources.build, worker.__main__, tasks.warming, "
        "tasks.collection_texts, worker.sources.supabase_heartbeat; "
        "print(sorted(m for m in ('supabase', 'postgrest', 'supabase_auth', 'storage3') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"

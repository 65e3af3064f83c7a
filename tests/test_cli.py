"""``shared-cache`` for real: the session's Redis, a real Postgres with wal2json, a real listener.

Commands run in-process through click's ``CliRunner`` (on a thread: each command runs its own event
loop), and through the installed entry point in a subprocess where the process boundary matters
(no traceback on stderr, ``--inline`` warming that configures the process's own cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis
import redis.asyncio as aredis
from click.testing import Result

from devtools.embedded import EmbeddedPostgres as PostgresServer
from devtools.embedded import free_port
from shared_cache import CacheManager, Keyspace, agent_scopes, get_with_cache_aside
from tasks.settings import TaskSettings
from tasks.support import mask_url, secrets_of
from tests.cli_harness import as_json, broker_url, cli_env, queued, run
from tests.waiting import wait_until
from worker.app import make_app
from worker.dead_letters import DeadLetters
from worker.events import ChangeEvent
from worker.listener import Listener
from worker.rules import Planner
from worker.settings import ListenerSettings
from worker.sources.postgres import PostgresLogicalSource

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = """
CREATE TABLE documents (id text PRIMARY KEY, tenant_id text, collection_id text, title text);
CREATE TABLE document_chunks (id serial PRIMARY KEY, tenant_id text, document_id text, collection_id text,
                              content text);
CREATE TABLE agents (id text PRIMARY KEY, tenant_id text, name text);
CREATE TABLE collections (id text PRIMARY KEY, tenant_id text);
ALTER TABLE documents REPLICA IDENTITY FULL;
"""
DOCTOR_SLOT = "cli_doctor"


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json')", (DOCTOR_SLOT,))
    yield server
    server.cleanup()


@pytest.fixture
def env(manager: CacheManager, redis_url: str) -> dict[str, str]:
    return cli_env(manager, redis_url)


# -- stats --------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def running_listener(
    manager: CacheManager, redis_url: str, pg: PostgresServer, slot: str
) -> AsyncIterator[Listener]:
    ts = TaskSettings(broker_url=broker_url(redis_url))
    planner = Planner()
    listener = Listener(ListenerSettings(), planner, make_app(ts), manager, redis_url, ts)
    listener.add_source(PostgresLogicalSource(pg.dsn, planner.tables, slot=slot))
    stop = asyncio.Event()
    task = await listener.start(stop, within=20)
    try:
        yield listener
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_stats_reports_processes_listener_and_tenants(
    manager: CacheManager, env: dict[str, str], redis_url: str, pg: PostgresServer, sync_redis: redis.Redis
) -> None:
    for _ in range(3):  # a miss from the database, then two memory-tier hits
        await get_with_cache_aside("document", "d1", "acme", lambda r, t, c: {"id": r})
    assert manager.memory is not None
    manager.memory.clear()
    await get_with_cache_aside("document", "d1", "acme", lambda r, t, c: {"id": r})  # a Redis hit
    await get_with_cache_aside("query_result", "q1", "acme", lambda r, t, c: [1, 2], collection_id="c1")
    await manager.publish_stats()
    await manager.invalidate("acme", "embedding", "e9")  # a generation counter: a bookkeeping key

    async with running_listener(manager, redis_url, pg, "cli_stats") as listener:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO documents VALUES ('d1', 'acme', 'c1', 'title')")
        await wait_until(lambda: listener.stats["processed"] >= 1)
        await listener.publish_report()
    sync_redis.sadd(manager.keys.worker_tenants, "acme")

    data = as_json(await run(env, "--json", "stats", "--max-tenants", "100000"))
    cache = data["cache"]
    assert cache["processes"] == 1 and data["processes"][0]["origin"] == manager.origin
    row = cache["by_type"]["document"]
    assert row["hits"] == {"memory": 2, "redis": 1} and row["misses"] == 1 and row["hit_ratio"] == 0.75
    assert set(row["latency_ms"]) == {"db", "redis"}  # one memory hit in sixteen is timed: none of two
    assert cache["by_type"]["query_result"]["misses"] == 1
    assert (cache["hits"], cache["misses"]) == (3, 2)
    # Reads per tenant appear once the library's report carries them (tests/test_cli_tenants.py).
    assert [t["tenant"] for t in cache["by_tenant"]] == (["acme"] if "tenants" in manager.stats_report() else [])
    process = data["processes"][0]
    assert process["memory"]["entries"] == 2 and process["subscriber"]["connects"] >= 1
    report = data["listener"]
    assert report["stats"]["events"] >= 1 and report["stats"]["invalidation_tasks"] >= 1
    (source,) = report["sources"]
    assert source["name"] == "postgres" and source["durable"] and isinstance(source["slot_lag_bytes"], int)
    acme = next(t for t in data["tenants"]["rows"] if t["tenant"] == "acme")
    assert acme["by_type"] == {"document": 1, "query_result": 1} and acme["complete"]
    assert acme["bookkeeping_keys"] == 1
    assert data["redis"]["used_memory"] > 0 and data["redis"]["maxmemory_policy"] == "noeviction"
    assert data["dead_letters"] == {"key": env["SHARED_CACHE_WORKER_DEAD_LETTER_KEY"], "waiting": 0, "parked": {}}

    text = (await run(env, "stats", "--tenant", "acme")).stdout
    rows = [line.split() for line in text.splitlines()]
    assert ["document", "all", "3", "1", "75.0%"] in rows and ["memory", "2", "-", "-"] in rows
    assert ["acme", "2", "1", "document", "1,", "query_result", "1"] in rows
    assert any(row[:3] == ["postgres", "yes", "1"] for row in rows)
    assert any(row[:1] == [manager.origin] for row in rows)
    assert "1 process reported in the last minute" in text and "Dead letters: 0 waiting" in text

    bounded = as_json(await run(env, "--json", "stats", "--tenant", "acme", "--max-scan", "0"))
    assert bounded["tenants"] is None  # --max-scan 0: no scanning at all
    assert sync_redis.get(manager.keys.worker_stats) is not None


# -- get / ttl ----------------------------------------------------------------------------------
async def test_get_and_ttl_of_a_cached_key(manager: CacheManager, env: dict[str, str]) -> None:
    await manager.set("document", "d1", {"title": "hello"}, "acme", collection_id="c1", ttl=120)
    await manager.set("agent_config", "a1", {"model": "m"}, "acme", ttl=0)  # no expiry

    got = as_json(await run(env, "--json", "get", "document", "d1", "--tenant", "acme", "--collection", "c1"))
    assert got["found"] and got["value"] == {"title": "hello"} and got["tier"] == "redis"
    assert got["level"] == "coll" and got["key"] == f"{manager.prefix}{{acme}}:document:coll:c1:d1"
    assert 100 < got["ttl"] <= 120
    # The hierarchy: asked in an agent's context too, the read falls back to the collection's entry.
    wider = as_json(
        await run(env, "--json", "get", "document", "d1", "--tenant", "acme", "--agent", "x", "--collection", "c1")
    )
    assert wider["level"] == "coll" and wider["value"] == {"title": "hello"}
    text = (await run(env, "get", "document", "d1", "--tenant", "acme", "--collection", "c1")).stdout
    assert text.startswith("from redis, level coll,") and '"title": "hello"' in text

    seconds = await run(env, "ttl", "document", "d1", "--tenant", "acme", "--collection", "c1")
    assert seconds.exit_code == 0 and 100 < int(seconds.stdout.split()[0]) <= 120
    assert as_json(await run(env, "--json", "ttl", "agent_config", "a1", "--tenant", "acme"))["ttl"] == -1

    missing = await run(env, "--json", "get", "document", "nope", "--tenant", "acme")
    assert missing.exit_code == 1 and as_json(missing)["found"] is False
    gone = await run(env, "ttl", "document", "d1", "--tenant", "acme")  # only cached under the collection
    assert gone.exit_code == 1 and gone.stdout.strip() == "-2 (no valid entry)"


# -- invalidate ---------------------------------------------------------------------------------
ENTRIES: dict[str, tuple[str, str, dict[str, str]]] = {  # name -> (data type, resource, context)
    "doc1": ("document", "d1", {"collection_id": "c1"}),
    "doc2": ("document", "d2", {"collection_id": "c2"}),
    "query": ("query_result", "q1", {"collection_id": "c1"}),
    "agent": ("agent_config", "a1", {}),
    "answer": ("agent_response", "r1", {"agent_id": "a1"}),
    "message": ("message", "m1", {"conversation_id": "v1"}),
    "embedding": ("embedding", "e1", {}),
}


@pytest.mark.parametrize(
    ("args", "gone"),
    [
        (["--type", "document", "--resource", "d1"], {"doc1"}),
        (["--type", "document"], {"doc1", "doc2"}),
        (["--document", "d1", "--collection", "c1"], {"doc1", "query"}),
        (["--document", "d2"], {"doc2"}),
        (["--collection", "c1"], {"doc1", "query"}),
        (["--agent", "a1"], {"agent", "answer"}),
        (["--conversation", "v1"], {"message"}),
        (["--all", "--yes"], set(ENTRIES)),
    ],
)
async def test_each_invalidate_form(
    manager: CacheManager, env: dict[str, str], args: list[str], gone: set[str]
) -> None:
    for name, (data_type, rid, context) in ENTRIES.items():
        await manager.set(data_type, rid, name, "acme", **context)
        await manager.set(data_type, rid, name, "other", **context)  # same ids, another tenant
        assert await manager.get(data_type, rid, "acme", **context) == name  # now in the memory tier too
    await manager.get("document", "d1", "other", collection_id="c1")

    result = await run(env, "--json", "invalidate", "--tenant", "acme", *args)
    assert result.exit_code == 0, result.output
    reply = as_json(result)
    assert reply["tenant"] == "acme" and reply["scopes"] and all(s[0] == "acme" for s in reply["scopes"])

    # What Redis says, through a manager with no memory tier: the right entries, at once.
    checker = CacheManager(manager.settings.model_copy(update={"memory_enabled": False}))
    try:
        for name, (data_type, rid, context) in ENTRIES.items():
            value = await checker.get(data_type, rid, "acme", **context)
            assert (value is None) == (name in gone), name
            assert await checker.get(data_type, rid, "other", **context) == name  # never another tenant
    finally:
        await checker.close()

    # And every memory tier heard it: the fixture's manager stops serving them from memory.
    async def evicted() -> bool:
        for name, (data_type, rid, context) in ENTRIES.items():
            if (await manager.get(data_type, rid, "acme", **context) is None) != (name in gone):
                return False
        return True

    await wait_until(evicted, 5)
    assert await manager.get("document", "d1", "other", collection_id="c1") == "doc1"


async def test_invalidate_all_asks_first(manager: CacheManager, env: dict[str, str]) -> None:
    await manager.set("document", "d1", "v", "acme")
    refused = await run(env, "invalidate", "--tenant", "acme", "--all", input="n\n")
    assert refused.exit_code == 1 and "Invalidate everything cached for tenant 'acme'?" in refused.output
    assert await manager.get("document", "d1", "acme") == "v"
    accepted = await run(env, "invalidate", "--tenant", "acme", "--all", input="y\n")
    assert accepted.exit_code == 0 and "invalidated everything of tenant acme" in accepted.stdout
    checker = CacheManager(manager.settings.model_copy(update={"memory_enabled": False}))
    assert await checker.get("document", "d1", "acme") is None
    await checker.close()


# -- usage errors and an unavailable Redis -------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["get", "document", "d1", "--tenant", "bad:tenant"],
        ["ttl", "document", "d1", "--tenant", "bad:tenant"],
        ["invalidate", "--tenant", "bad:tenant", "--type", "document"],
        ["invalidate", "--tenant", "bad:tenant", "--all", "--yes"],
        ["warm", "--tenant", "bad:tenant", "--collection", "c1"],
        ["stats", "--tenant", "bad:tenant"],
    ],
)
async def test_bad_tenant_is_exit_2_with_the_library_message(env: dict[str, str], args: list[str]) -> None:
    result = await run(env, *args)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: invalid tenant_id 'bad:tenant': expected a string matching [A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
    )
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["invalidate", "--tenant", "acme"], "give exactly one of"),
        (["invalidate", "--tenant", "acme", "--agent", "a", "--conversation", "c"], "(got --agent, --conversation)"),
        (["invalidate", "--tenant", "acme", "--resource", "r", "--agent", "a"], "--resource goes with --type"),
        (["get", "Bad-Type", "d1", "--tenant", "acme"], "invalid data_type 'Bad-Type'"),
        (["--key-prefix", "a{b}", "get", "document", "d1", "--tenant", "acme"], "invalid settings: key_prefix"),
    ],
)
async def test_usage_errors_are_exit_2(env: dict[str, str], args: list[str], message: str) -> None:
    result = await run(env, *args)
    assert result.exit_code == 2 and message in result.stderr, result.output


@pytest.mark.parametrize(
    "args",
    [
        ["stats"],
        ["get", "document", "d1", "--tenant", "acme"],
        ["ttl", "document", "d1", "--tenant", "acme"],
        ["invalidate", "--tenant", "acme", "--type", "document"],
        ["dead-letters", "list"],
        ["dead-letters", "replay"],
    ],
)
async def test_redis_down_is_one_line_and_exit_1(env: dict[str, str], args: list[str]) -> None:
    dead = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    result = await run(env, "--redis-url", dead, *args)
    assert result.exit_code == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: Redis at redis://:***@127.0.0.1:{dead.rsplit(':', 1)[1].split('/')[0]}/0: ")
    assert "s3cret" not in result.output


def test_entry_point_in_a_process_of_its_own() -> None:
    """``main()`` as the script runs it: no traceback for an unavailable Redis, the version."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", "from worker.cli import main; main()"]
    version = subprocess.run([*command, "--version"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert version.returncode == 0 and version.stdout.startswith("shared-cache, version ")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    down = subprocess.run([*command, "--redis-url", dead, "stats"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert len(down.stderr.splitlines()) == 1 and down.stderr.startswith(f"error: Redis at {dead}: ")


def test_mask_url() -> None:
    assert mask_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("rediss://user:pw@h:6380/1") == "rediss://user:***@h:6380/1"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"
    assert mask_url("postgresql://postgres:p%40ss@db:5432/x?sslmode=require") == (
        "postgresql://postgres:***@db:5432/x?sslmode=require"
    )
    assert mask_url("postgresql://db/x?user=u&password=pw") == "postgresql://db/x?user=u&password=%2A%2A%2A"
    assert mask_url("host=db user=u password='p w' dbname=x") == "host=db user=u password=*** dbname=x"
    assert secrets_of("redis://:p%40ss@h/0") == ["p%40ss", "p@ss"]
    assert secrets_of("postgresql://db/x?password=pw") == ["pw"]


# -- dead letters -------------------------------------------------------------------------------
def event_json(table: str, record: dict[str, Any]) -> str:
    return ChangeEvent.model_validate({"table": table, "type": "UPDATE", "record": record}).model_dump_json(
        by_alias=True
    )


async def park(redis_url: str, key: str, items: list[tuple[str, str, str]]) -> None:
    client = aredis.Redis.from_url(redis_url)
    letters = DeadLetters(client, key)
    for source, raw, reason in items:
        await letters.park(source, raw, reason)
    await client.aclose()


async def test_dead_letters_list_and_replay(env: dict[str, str], redis_url: str, sync_redis: redis.Redis) -> None:
    key = env["SHARED_CACHE_WORKER_DEAD_LETTER_KEY"]
    good = event_json("agents", {"id": "a1", "tenant_id": "acme", "name": "n"})
    await park(
        redis_url,
        key,
        [
            ("postgres", good, "no rule for table public.agents"),  # the rules have been fixed since
            ("redis", "{not json", "invalid ChangeEvent: Invalid JSON"),
            ("postgres", event_json("unknown_table", {"id": 1}), "no rule for table public.unknown_table"),
        ],
    )
    listed = as_json(await run(env, "--json", "dead-letters", "list"))
    assert listed["waiting"] == 3 and listed["parked"] == {"postgres": 2, "redis": 1}
    assert [e["source"] for e in listed["entries"]] == ["postgres", "redis", "postgres"]  # newest first
    assert listed["entries"][2]["raw"] == good
    text = (await run(env, "dead-letters", "list", "--count", "2")).stdout
    assert "3 dead letters waiting" in text and "unknown_table" in text and "public.agents" not in text

    broker = redis.Redis.from_url(env["SHARED_CACHE_WORKER_BROKER_URL"])
    before = broker.llen("invalidation")
    replay = as_json(await run(env, "--json", "dead-letters", "replay"))
    assert (replay["replayed"], replay["failed"]) == (1, 2) and replay["tasks"] == {"invalidation": 1, "warming": 0}
    assert broker.llen("invalidation") == before + 1
    (task,) = queued(broker, "invalidation")[before:]
    scopes = sorted(list(s) for s in agent_scopes("acme", "a1"))
    wire = {"tenant_id": "acme", "scopes": scopes, "reason": "replay: agents UPDATE", "caused_at": None}
    wire["receipt"] = None
    assert task == {"task": "shared_cache.invalidate", "args": [], "kwargs": wire}
    assert sync_redis.sismember(Keyspace(env["SHARED_CACHE_KEY_PREFIX"]).worker_tenants, "acme")

    left = as_json(await run(env, "--json", "dead-letters", "list"))
    assert left["waiting"] == 2 and left["parked"] == {"postgres": 2, "redis": 1}  # the same events, not new ones
    reasons = sorted(e["reason"] for e in left["entries"])
    assert reasons[0] == "replay: no rule for table public.unknown_table"
    assert reasons[1].startswith("replay: not a ChangeEvent: ")
    assert all(e["replays"] == 1 and e["first_at"] for e in left["entries"])

    again = as_json(await run(env, "--json", "dead-letters", "replay"))
    assert (again["replayed"], again["failed"]) == (0, 2) and broker.llen("invalidation") == before + 1
    assert [e["replays"] for e in as_json(await run(env, "--json", "dead-letters", "list"))["entries"]] == [2, 2]
    broker.close()


async def test_replay_puts_everything_back_when_the_broker_is_down(env: dict[str, str], redis_url: str) -> None:
    key = env["SHARED_CACHE_WORKER_DEAD_LETTER_KEY"]
    good = event_json("agents", {"id": "a1", "tenant_id": "acme"})
    await park(redis_url, key, [("postgres", good, "no rule for table public.agents")])
    down = {**env, "SHARED_CACHE_WORKER_BROKER_URL": f"redis://:s3cret@127.0.0.1:{free_port()}/0"}
    result = await run(down, "--json", "dead-letters", "replay")
    assert result.exit_code == 1 and "s3cret" not in result.output
    assert as_json(result)["replayed"] == 0 and as_json(result)["error"].startswith("broker redis://:***@127.0.0.1:")
    (entry,) = as_json(await run(env, "--json", "dead-letters", "list"))["entries"]
    assert entry["raw"] == good and entry["reason"].startswith("replay: tasks not sent: broker")


# -- warm ---------------------------------------------------------------------------------------
async def test_warm_queues_warm_collection(env: dict[str, str]) -> None:
    broker = redis.Redis.from_url(env["SHARED_CACHE_WORKER_BROKER_URL"])
    before = broker.llen("warming")
    result = as_json(await run(env, "--json", "warm", "--tenant", "acme", "--collection", "c1"))
    assert broker.llen("warming") == before + 1
    (task,) = queued(broker, "warming")[before:]
    wire = {"tenant_id": "acme", "collection_id": "c1"}
    assert task == {"task": "shared_cache.warm_collection", "args": [], "kwargs": wire} and result["task_id"]
    broker.close()


class _Embeddings(BaseHTTPRequestHandler):
    """An OpenAI-compatible /embeddings stand-in (the external API), for the inline warming."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        data = [{"index": i, "embedding": [float(len(t)), 1.0, 0.5]} for i, t in enumerate(body["input"])]
        payload = json.dumps({"data": data, "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def test_warm_inline_embeds_a_collection_once(redis_url: str, pg: PostgresServer) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO document_chunks (tenant_id, document_id, collection_id, content) VALUES"
            " ('acme', 'd1', 'warm1', 'first text'), ('acme', 'd1', 'warm1', 'second text'),"
            " ('acme', 'd2', 'other', 'not this one')"
        )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Embeddings)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SHARED_CACHE_REDIS_URL": redis_url,
        "SHARED_CACHE_KEY_PREFIX": "cliwarm:",
        "SHARED_CACHE_WORKER_DATABASE_URL": pg.dsn,
        "SHARED_CACHE_WORKER_EMBEDDING_PROVIDER": "openai",
        "SHARED_CACHE_WORKER_OPENAI_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}/v1",
        "SHARED_CACHE_WORKER_OPENAI_API_KEY": "sk-test",
    }
    command = [sys.executable, "-m", "worker.cli", "--json", "warm", "--tenant", "acme", "--collection", "warm1"]
    try:
        first = subprocess.run([*command, "--inline"], env=env, capture_output=True, text=True, cwd=ROOT)
        assert first.returncode == 0, first.stderr
        assert orjson.loads(first.stdout) == {"texts": 2, "cache_hits": 0, "generated": 2}
        second = subprocess.run([*command, "--inline"], env=env, capture_output=True, text=True, cwd=ROOT)
        assert orjson.loads(second.stdout) == {"texts": 2, "cache_hits": 2, "generated": 0}  # cached in Redis
        off = {**env, "SHARED_CACHE_WORKER_EMBEDDING_PROVIDER": "none"}
        refused = subprocess.run([*command, "--inline"], env=off, capture_output=True, text=True, cwd=ROOT)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert refused.stderr.strip() == (
            "error: warming failed: RuntimeError: warming needs SHARED_CACHE_WORKER_EMBEDDING_PROVIDER=local or openai"
        )
    finally:
        server.shutdown()
        server.server_close()


# -- doctor -------------------------------------------------------------------------------------
def lines_of(result: Result) -> dict[str, str]:
    """check name -> status, from doctor's text output."""
    return {line[6:27].strip(): line[:5].strip() for line in result.stdout.splitlines()}


async def test_doctor_ok_on_a_healthy_setup(manager: CacheManager, env: dict[str, str], pg: PostgresServer) -> None:
    await manager.start()  # a process with a memory tier: one eviction subscriber
    healthy = {**env, "SHARED_CACHE_WORKER_DATABASE_URL": pg.dsn, "SHARED_CACHE_WORKER_SLOT_NAME": DOCTOR_SLOT}
    result = await run(healthy, "doctor")
    assert result.exit_code == 0, result.output
    status = lines_of(result)
    for check in ("redis", "redis memory policy", "eviction subscribers", "broker", "database", "wal_level"):
        assert status[check] == "OK", result.output
    assert status["replication slot"] == "OK" and status["wal2json"] == "OK", result.output
    assert status["dead letters"] == "OK" and "FAIL" not in status.values()
    assert f"{DOCTOR_SLOT} (wal2json, idle), lag " in result.stdout
    with psycopg.connect(pg.dsn) as conn:  # the temporary slot of the wal2json check is gone
        row = conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'shared_cache_doctor%'")
        assert row.fetchone() == (0,)

    report = as_json(await run(healthy, "--json", "doctor"))
    assert report["ok"] is True and {c["check"] for c in report["checks"]} >= {"redis", "wal2json", "broker"}

    no_slot = await run({**healthy, "SHARED_CACHE_WORKER_SLOT_NAME": "not_there"}, "doctor")
    assert no_slot.exit_code == 0 and lines_of(no_slot)["replication slot"] == "WARN"  # WARN alone: exit 0


async def test_doctor_warns_on_an_allkeys_policy(env: dict[str, str], sync_redis: redis.Redis) -> None:
    before = sync_redis.config_get("maxmemory-policy")["maxmemory-policy"]
    sync_redis.config_set("maxmemory-policy", "allkeys-lru")  # maxmemory is 0 here: nothing is evicted
    try:
        result = await run(env, "doctor", "--skip-db", "--skip-broker")
    finally:
        sync_redis.config_set("maxmemory-policy", before)
    assert result.exit_code == 0, result.output
    status = lines_of(result)
    assert status["redis memory policy"] == "WARN" and "generation counters" in result.stdout
    assert status["broker"] == "SKIP" and status["database"] == "SKIP"


async def test_doctor_fails_on_dead_ports_and_masks_passwords(env: dict[str, str]) -> None:
    dead = {
        **env,
        "SHARED_CACHE_WORKER_BROKER_URL": f"redis://:s3cret@127.0.0.1:{free_port()}/1",
        "SHARED_CACHE_WORKER_DATABASE_URL": f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/postgres",
    }
    redis_dead = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    result = await run(dead, "--redis-url", redis_dead, "doctor")
    assert result.exit_code == 1
    status = lines_of(result)
    assert status["redis"] == "FAIL" and status["broker"] == "FAIL" and status["database"] == "FAIL"
    assert "s3cret" not in result.output and "redis://:***@127.0.0.1:" in result.stdout
    assert "postgresql://postgres:***@127.0.0.1:" in result.stdout

    report = as_json(await run(dead, "--json", "--redis-url", redis_dead, "doctor", "--skip-db", "--skip-broker"))
    assert report["ok"] is False
    assert [(c["check"], c["status"]) for c in report["checks"]][-2:] == [("broker", "SKIP"), ("database", "SKIP")]

    healthy_redis = await run(dead, "doctor")  # only the broker and database are dead
    assert healthy_redis.exit_code == 1 and lines_of(healthy_redis)["redis"] == "OK"

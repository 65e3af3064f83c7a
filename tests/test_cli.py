"""The operator command line against a real Redis (and a real Postgres for doctor)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest
import redis
from click.testing import CliRunner

from shared_cache import CacheManager, get_with_cache_aside
from tests.pg_server import PostgresServer
from tests.redis_server import free_port
from worker.cli import main
from worker.listener import TENANTS_KEY

PREFIX = "cli:"


@pytest.fixture
def cli_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    base = redis_url.rsplit("/", 1)[0]
    env = {
        "SHARED_CACHE_REDIS_URL": redis_url,
        "SHARED_CACHE_KEY_PREFIX": PREFIX,
        "SHARED_CACHE_WORKER_BROKER_URL": f"{base}/2",
        "SHARED_CACHE_WORKER_DEAD_LETTER_KEY": f"{PREFIX}dead",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def fill(redis_url: str, reads: list[tuple[str, str, str]]) -> None:
    async def go() -> None:
        mgr = CacheManager.configure(redis_url=redis_url, key_prefix=PREFIX, ttl_jitter=0.0)
        for data_type, rid, tenant in reads:
            await get_with_cache_aside(data_type, rid, tenant, lambda r, t, c: {"id": r, "tenant": t})
            await get_with_cache_aside(data_type, rid, tenant, lambda r, t, c: {"id": r, "tenant": t})
        await mgr.publish_stats()
        await mgr.close()

    asyncio.run(go())


def test_get_ttl_and_stats(cli_env: dict[str, str], sync_redis: redis.Redis) -> None:
    fill(cli_env["SHARED_CACHE_REDIS_URL"], [("document", "d1", "acme"), ("document", "d2", "acme")])
    sync_redis.sadd(TENANTS_KEY, "acme")
    result = cli("get", "document", "d1", "--tenant", "acme")
    assert result.exit_code == 0 and orjson.loads(result.output) == {"id": "d1", "tenant": "acme"}
    result = cli("ttl", "document", "d1", "--tenant", "acme")
    assert 3000 < int(result.output) <= 3600
    assert cli("ttl", "document", "nope", "--tenant", "acme").output.strip() == "-2"
    result = cli("--json", "stats")
    data = orjson.loads(result.output)
    assert data["by_type"]["document"]["hits"]["memory"] >= 2 and data["by_type"]["document"]["misses"] >= 2
    assert data["tenants"]["acme"] >= 2
    text = cli("stats").output
    assert "document" in text and "keys per tenant" in text


@pytest.mark.parametrize(
    ("args", "stale"),
    [
        (["--type", "document", "--resource", "d1"], {"d1"}),
        (["--type", "document"], {"d1", "d2"}),
        (["--document", "d2", "--collection", "c"], {"d2"}),
        (["--all", "--yes"], {"d1", "d2", "a1"}),
    ],
)
def test_invalidate_forms(cli_env: dict[str, str], args: list[str], stale: set[str]) -> None:
    url = cli_env["SHARED_CACHE_REDIS_URL"]
    fill(url, [("document", "d1", "acme"), ("document", "d2", "acme"), ("agent_config", "a1", "acme"),
               ("document", "d1", "other")])  # fmt: skip
    result = cli("invalidate", "--tenant", "acme", *args)
    assert result.exit_code == 0, result.output

    async def remaining() -> set[str]:
        mgr = CacheManager.configure(redis_url=url, key_prefix=PREFIX, memory_enabled=False)
        left = {rid for dt, rid in (("document", "d1"), ("document", "d2"), ("agent_config", "a1"))
                if await mgr.get(dt, rid, "acme") is not None}  # fmt: skip
        other = await mgr.get("document", "d1", "other")
        await mgr.close()
        assert other is not None  # another tenant is never touched
        return left

    assert {"d1", "d2", "a1"} - asyncio.run(remaining()) == stale


def test_invalidate_agent_and_collection(cli_env: dict[str, str]) -> None:
    assert cli("invalidate", "--tenant", "acme", "--agent", "a1").exit_code == 0
    assert cli("invalidate", "--tenant", "acme", "--collection", "c1").exit_code == 0
    assert "exactly one of" in CliRunner().invoke(main, ["invalidate", "--tenant", "acme"]).output


def test_bad_tenant_is_exit_2(cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["invalidate", "--tenant", "bad:tenant", "--type", "document"])
    assert result.exit_code == 2 and "invalid tenant_id 'bad:tenant'" in result.output


def test_dead_letters_list_and_replay(cli_env: dict[str, str], sync_redis: redis.Redis) -> None:
    broker = redis.Redis.from_url(cli_env["SHARED_CACHE_WORKER_BROKER_URL"])
    broker.delete("invalidation")
    good = orjson.dumps({"table": "agents", "type": "UPDATE", "record": {"id": "a1", "tenant_id": "acme"}})
    for raw, reason in ((good, "broker was down"), (b"{hopeless", "invalid ChangeEvent")):
        sync_redis.lpush(
            f"{PREFIX}dead", orjson.dumps({"source": "redis", "reason": reason, "raw": raw.decode(), "at": 0})
        )
    listed = orjson.loads(cli("--json", "dead-letters", "list").output)
    assert [e["reason"] for e in listed] == ["invalid ChangeEvent", "broker was down"]
    result = cli("--json", "dead-letters", "replay")
    assert orjson.loads(result.output) == {"replayed": 1, "failed": 1}
    assert broker.llen("invalidation") == 1  # the good one became a task
    (left,) = orjson.loads(cli("--json", "dead-letters", "list").output)
    assert left["reason"].startswith("replay:") and left["raw"] == "{hopeless"
    broker.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('shared_cache', 'wal2json')")
    yield server
    server.cleanup()


def test_doctor_ok_and_fail(cli_env: dict[str, str], postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARED_CACHE_WORKER_DATABASE_URL", postgres.dsn)
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "OK    wal_level    logical" in result.output and "slot" in result.output
    dead = f"redis://127.0.0.1:{free_port()}/0"
    result = CliRunner().invoke(main, ["--redis-url", dead, "doctor", "--skip-db", "--skip-broker"])
    assert result.exit_code == 1 and "FAIL  redis" in result.output

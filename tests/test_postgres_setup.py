"""Postgres as a new machine gets it: a server whose ``output_plugin_libraries`` leaves wal2json out.

Postgres 15.20 (and the same-day releases of the other branches) lets replication users decode only
with the plugins that setting lists, and its default (``pgoutput, test_decoding``) leaves wal2json
out. The project's own servers allow it; a server configured by someone else gets a clear error
naming the setting and the fix, from the listener and from ``shared-cache doctor``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from devtools.embedded import EmbeddedPostgres as PostgresServer
from devtools.embedded import bin_dir, plugin_args, server_settings
from worker.cli import cli
from worker.sources.postgres import PostgresLogicalSource, ReplicationSetupError, plugin_fix

ROOT = Path(__file__).resolve().parent.parent
KNOWS_SETTING = "output_plugin_libraries" in server_settings(bin_dir())


@pytest.fixture(scope="module")
def stock_pg() -> Iterator[PostgresServer]:
    """A server started without the project's plugin setting (as a distribution ships it)."""
    server = PostgresServer(allow_wal2json=False).start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE documents (id text PRIMARY KEY, tenant_id text)")
    yield server
    server.cleanup()


def reload_with(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for part in statement.split(";"):
            if part.strip():
                conn.execute(part)


def test_the_project_servers_allow_wal2json_only_where_the_setting_exists() -> None:
    args = plugin_args(bin_dir())
    if KNOWS_SETTING:
        assert args == ["-c", "output_plugin_libraries=pgoutput,test_decoding,wal2json"]
    else:  # an older server would refuse to start with an unknown setting
        assert args == []
    assert plugin_fix("pgoutput, test_decoding") == (
        "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'wal2json'; SELECT pg_reload_conf();"
    )
    assert plugin_fix("pgoutput, wal2json").count("wal2json") == 1


@pytest.mark.skipif(not KNOWS_SETTING, reason="this Postgres predates output_plugin_libraries: nothing refuses")
async def test_source_names_the_setting_and_its_fix_works(stock_pg: PostgresServer) -> None:
    source = PostgresLogicalSource(stock_pg.dsn, ("public.documents",), slot="refused")
    with pytest.raises(ReplicationSetupError) as caught:
        await source.prepare()
    message = str(caught.value)
    assert "output_plugin_libraries" in message and "'pgoutput, test_decoding'" in message
    fix = plugin_fix("pgoutput, test_decoding")
    assert fix in message
    await source.close()

    reload_with(stock_pg.dsn, fix)  # the fix, exactly as the message gives it
    try:
        await asyncio.sleep(0.2)  # the reload reaches new backends
        source = PostgresLogicalSource(stock_pg.dsn, ("public.documents",), slot="refused")
        await source.prepare()  # now the slot is created and decodes
        reload_with(stock_pg.dsn, "INSERT INTO documents VALUES ('d1', 't1')")
        events = source.events()
        event = await asyncio.wait_for(anext(events), 10)
        assert (event.table, event.record) == ("documents", {"id": "d1", "tenant_id": "t1"})
        await events.aclose()
        await source.close()
    finally:
        reload_with(stock_pg.dsn, "ALTER SYSTEM RESET output_plugin_libraries; SELECT pg_reload_conf()")
        await asyncio.sleep(0.2)


@pytest.mark.skipif(not KNOWS_SETTING, reason="this Postgres predates output_plugin_libraries: nothing refuses")
def test_listener_exits_with_one_clear_line(stock_pg: PostgresServer, redis_url: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SHARED_CACHE_REDIS_URL": redis_url,
        "SHARED_CACHE_WORKER_BROKER_URL": redis_url.rsplit("/", 1)[0] + "/7",
        "SHARED_CACHE_WORKER_DATABASE_URL": stock_pg.dsn,
        "SHARED_CACHE_WORKER_SLOT_NAME": "refused_listener",
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker", "--log-level", "WARNING"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "the listener cannot start: Postgres refuses the wal2json output plugin" in done.stderr
    assert "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'wal2json'" in done.stderr


@pytest.mark.skipif(not KNOWS_SETTING, reason="this Postgres predates output_plugin_libraries: nothing refuses")
def test_doctor_fails_with_the_fix(stock_pg: PostgresServer, redis_url: str) -> None:
    env = {
        "SHARED_CACHE_REDIS_URL": redis_url,
        "SHARED_CACHE_WORKER_DATABASE_URL": stock_pg.dsn,
        "SHARED_CACHE_WORKER_SLOT_NAME": "refused_doctor",
    }
    result = CliRunner().invoke(cli, ["doctor", "--skip-broker"], env=env, catch_exceptions=False)
    assert result.exit_code == 1, result.output
    lines = {line[6:27].strip(): line for line in result.stdout.splitlines()}
    assert lines["output plugins"].startswith("FAIL")
    assert "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'wal2json'" in result.stdout
    assert lines["wal2json"].startswith("FAIL") and "output_plugin_libraries" in lines["wal2json"]

"""``shared-cache`` given bad input: a usage error is one line on stderr and exit code 2, whatever
the input (an option, a URL in an option or a setting, a rules file, a dead-letter list that holds
something else), and nothing else is touched. Against the session's real Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from click.testing import Result

from shared_cache import CacheManager
from tests.cli_harness import as_json, cli_env, run
from worker.urls import broker_url_problem, database_url_problem, redis_url_problem, sentinels_problem

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(manager: CacheManager, redis_url: str) -> dict[str, str]:
    return cli_env(manager, redis_url)


def one_usage_line(result: Result) -> str:
    """The one line a usage error prints, after checking it is one: exit code 2, nothing on stdout."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ")
    return line


# -- malformed URLs -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://:s3cret@127.0.0.1:abc/0", "port 'abc' is not a number from 1 to 65535"),
        ("redis://:s3cret@127.0.0.1:70000/0", "port '70000' is not a number from 1 to 65535"),
        ("http://:s3cret@127.0.0.1:6379/0", "unsupported scheme 'http' (expected redis://"),
        ("127.0.0.1:6379", "not a URL (expected redis://"),
        ("redis://:s3cret@127.0.0.1:6379/zero", "database 'zero' is not a number"),
        ("redis://:s3cret@[::1:6379/0", "Invalid IPv6 URL"),
        ("redis://:s3cret@127.0.0.1:6379/0?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
        ("", "empty (expected redis://"),
    ],
)
async def test_a_malformed_redis_url_is_a_usage_error(env: dict[str, str], url: str, problem: str) -> None:
    line = one_usage_line(await run(env, "--redis-url", url, "stats"))
    assert line.startswith("error: invalid --redis-url '") and problem in line
    assert "s3cret" not in line


@pytest.mark.parametrize(
    "args",
    [
        ["stats"],
        ["get", "document", "d1", "--tenant", "acme"],
        ["ttl", "document", "d1", "--tenant", "acme"],
        ["invalidate", "--tenant", "acme", "--type", "document"],
        ["warm", "--tenant", "acme", "--collection", "c1", "--inline"],
        ["dead-letters", "list"],
        ["dead-letters", "replay"],
        ["doctor", "--skip-db", "--skip-broker"],
    ],
)
async def test_a_malformed_url_setting_is_named_by_every_command(env: dict[str, str], args: list[str]) -> None:
    bad = {**env, "SHARED_CACHE_REDIS_URL": "redis://:s3cret@127.0.0.1:port/0"}
    line = one_usage_line(await run(bad, *args))
    assert line == (
        "error: invalid SHARED_CACHE_REDIS_URL 'redis://:***@127.0.0.1:port/0':"
        " port 'port' is not a number from 1 to 65535"
    )


@pytest.mark.parametrize(
    ("args", "setting", "value", "problem"),
    [
        (["warm", "--tenant", "acme", "--collection", "c1"], "BROKER_URL", "redis://:s3cret@h:x/1", "port 'x'"),
        (["dead-letters", "replay"], "BROKER_URL", "carrier-pigeon://h", "unknown broker transport 'carrier-pigeon'"),
        (["doctor", "--skip-db"], "BROKER_URL", "redis://:s3cret@h:6379/one", "database 'one' is not a number"),
        (["doctor", "--skip-broker"], "DATABASE_URL", "postgresql://u:s3cret@h:x/db", "port 'x'"),
        (["doctor", "--skip-broker"], "DATABASE_URL", "mysql://u:s3cret@h/db", "unsupported scheme 'mysql'"),
        (["doctor", "--skip-broker"], "DATABASE_URL", "host=h password=s3cret port", 'missing "=" after "port"'),
        (
            ["warm", "--tenant", "acme", "--collection", "c1", "--inline"],
            "DATABASE_URL",
            "postgresql://u:s3cret@h:99999/db",
            "port '99999'",
        ),
    ],
)
async def test_a_malformed_worker_url_is_a_usage_error(
    env: dict[str, str], args: list[str], setting: str, value: str, problem: str
) -> None:
    bad = {**env, f"SHARED_CACHE_WORKER_{setting}": value, "SHARED_CACHE_WORKER_EMBEDDING_PROVIDER": "openai"}
    line = one_usage_line(await run(bad, *args))
    assert line.startswith(f"error: invalid SHARED_CACHE_WORKER_{setting} ") and problem in line, line
    assert "s3cret" not in line


async def test_a_url_the_command_does_not_use_is_not_checked(env: dict[str, str]) -> None:
    bad = {**env, "SHARED_CACHE_WORKER_BROKER_URL": "redis://h:x/1", "SHARED_CACHE_WORKER_DATABASE_URL": "mysql://h"}
    result = await run(bad, "doctor", "--skip-db", "--skip-broker")
    assert result.exit_code == 0, result.output
    assert (await run(bad, "ttl", "document", "d1", "--tenant", "acme")).exit_code == 1  # -2: nothing cached


async def test_malformed_sentinels_and_openai_url_are_usage_errors(env: dict[str, str]) -> None:
    sentinels = {**env, "SHARED_CACHE_REDIS_SENTINELS": "h1:26379,h2", "SHARED_CACHE_REDIS_SENTINEL_SERVICE": "m"}
    line = one_usage_line(await run(sentinels, "stats"))
    assert line == "error: invalid SHARED_CACHE_REDIS_SENTINELS: entry 'h2' is not host:port"
    openai = {
        **env,
        "SHARED_CACHE_WORKER_EMBEDDING_PROVIDER": "openai",
        "SHARED_CACHE_WORKER_OPENAI_BASE_URL": "api.example.com/v1",
    }
    line = one_usage_line(await run(openai, "warm", "--tenant", "acme", "--collection", "c1", "--inline"))
    assert line.startswith("error: invalid SHARED_CACHE_WORKER_OPENAI_BASE_URL 'api.example.com/v1': not a URL")


def test_entry_point_malformed_url_is_one_line_and_exit_2() -> None:
    """As the installed script runs: no traceback, one line, exit code 2 (and an unreachable server
    stays exit code 1: tests/test_cli.py)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHARED_CACHE_REDIS_URL": "redis://localhost:abc/0"}
    command = [sys.executable, "-m", "worker.cli", "stats"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: invalid SHARED_CACHE_REDIS_URL 'redis://localhost:abc/0': port 'abc' is not a number from 1 to 65535"
    ]


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://user:p%40ss@cache.example.com:6380/1?ssl_cert_reqs=required",
        "unix:///run/redis.sock?db=2",
        "redis://[::1]:6379/0",
        "redis://cache",
    ],
)
def test_well_formed_redis_urls_pass(url: str) -> None:
    assert redis_url_problem(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "redis://:pw@broker:6379/1",
        "amqp://guest:guest@rabbit:5672//",
        "sqs://",
        "redis+socket:///run/redis.sock",
        "sentinel://s1:26379;sentinel://s2:26379",
    ],
)
def test_well_formed_broker_urls_pass(url: str) -> None:
    assert broker_url_problem(url) is None


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres:pw@db:5432/app?sslmode=require",
        "postgres://db/app",
        "postgresql://u@h1:5432,h2:5433/app",
        "postgresql:///app?host=/var/run/postgresql",
        "host=db user=u password='p w' dbname=app",
    ],
)
def test_well_formed_database_urls_pass(dsn: str) -> None:
    assert database_url_problem(dsn) is None


def test_well_formed_sentinels_pass() -> None:
    assert sentinels_problem("s1:26379, [::1]:26380") is None
    assert sentinels_problem("s1:26379,s2") == "entry 's2' is not host:port"


# -- click's own usage errors -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["dead-letters", "list", "--count", "many"],
            "error: Invalid value for '--count': 'many' is not a valid integer range"
            " (see 'shared-cache dead-letters list --help')",
        ),
        (
            ["dead-letters", "replay", "--count", "0"],
            "error: Invalid value for '--count': 0 is not in the range x>=1"
            " (see 'shared-cache dead-letters replay --help')",
        ),
        (
            ["get", "document", "--tenant", "acme"],
            "error: Missing argument 'RESOURCE_ID' (see 'shared-cache get --help')",
        ),
        (["stats", "--max-scan", "-1"], "error: Invalid value for '--max-scan': -1 is not in the range x>=0"),
        (["warm", "--tenant", "acme"], "error: Missing option '--collection' (see 'shared-cache warm --help')"),
        (["--no-such-option", "stats"], "error: No such option '--no-such-option' (see 'shared-cache --help')"),
        (["stat"], "error: No such command 'stat'"),
    ],
)
async def test_click_usage_errors_are_one_line(env: dict[str, str], args: list[str], line: str) -> None:
    assert one_usage_line(await run(env, *args)).startswith(line)


async def test_bad_list_setting_and_empty_resource(manager: CacheManager, env: dict[str, str]) -> None:
    line = one_usage_line(await run({**env, "SHARED_CACHE_WORKER_SOURCES": "postgres,kafka"}, "dead-letters", "list"))
    expected = "unknown source 'kafka'; expected some of postgres, supabase, redis"
    assert line == f"error: invalid worker settings: sources: {expected}", line
    await manager.set("document", "d1", "v", "acme")
    # An empty id is not "every resource": nothing is invalidated.
    line = one_usage_line(await run(env, "invalidate", "--tenant", "acme", "--type", "document", "--resource", ""))
    assert line.startswith("error: invalid resource_id ''")
    checker = CacheManager(manager.settings.model_copy(update={"memory_enabled": False}))
    try:
        assert await checker.get("document", "d1", "acme") == "v"
    finally:
        await checker.close()


# -- rules files and dead letters ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "No such file or directory"),
        ("[[rule]\ntable = 'x'", "Expected ']]' at the end of an array declaration"),
        ("[[rule]]\ntable = 'x'\nkind = 'nope'", "kind: Input should be 'document', 'document_chunks'"),
        ("title = 'no rules'", "expected one or more [[rule]] tables"),
        (b"\xff\xfe[[rule]]", "codec can't decode byte 0xff"),
    ],
)
async def test_a_bad_rules_file_takes_no_dead_letter(
    env: dict[str, str], sync_redis: redis.Redis, tmp_path: Path, content: str | bytes | None, problem: str
) -> None:
    rules = tmp_path / "rules.toml"
    if isinstance(content, str):
        rules.write_text(content)
    elif isinstance(content, bytes):
        rules.write_bytes(content)
    key = env["SHARED_CACHE_WORKER_DEAD_LETTER_KEY"]
    sync_redis.lpush(key, b'{"source": "redis", "raw": "{}", "reason": "r", "at": 1.0}')
    line = one_usage_line(await run({**env, "SHARED_CACHE_WORKER_RULES_FILE": str(rules)}, "dead-letters", "replay"))
    assert line.startswith(f"error: rules file {rules}: ") and problem in line, line
    assert sync_redis.lrange(key, 0, -1) == [b'{"source": "redis", "raw": "{}", "reason": "r", "at": 1.0}']


async def test_entries_that_are_not_dead_letters_are_listed_and_kept(
    env: dict[str, str], sync_redis: redis.Redis
) -> None:
    key = env["SHARED_CACHE_WORKER_DEAD_LETTER_KEY"]
    sync_redis.lpush(key, b"\xffnot json", b"[1, 2]")
    sync_redis.hset(f"{key}:counts", "redis", "lots")

    listed = as_json(await run(env, "--json", "dead-letters", "list"))
    assert listed["waiting"] == 2 and listed["parked"] == {"redis": 0}
    assert [(e["raw"], e["unreadable"]) for e in listed["entries"]] == [("[1, 2]", True), ("\ufffdnot json", True)]
    text = await run(env, "dead-letters", "list")
    assert text.exit_code == 0 and "not a dead-letter entry" in text.stdout

    replay = await run(env, "--json", "dead-letters", "replay")
    assert replay.exit_code == 0 and (as_json(replay)["replayed"], as_json(replay)["failed"]) == (0, 2)
    left = as_json(await run(env, "--json", "dead-letters", "list"))["entries"]
    assert sorted(e["raw"] for e in left) == ["[1, 2]", "\ufffdnot json"]  # put back, not lost
    assert all(e["replays"] == 1 and "unreadable" not in e for e in left)


async def test_a_dead_letter_key_of_another_type_is_named(env: dict[str, str], sync_redis: redis.Redis) -> None:
    key = env["SHARED_CACHE_WORKER_DEAD_LETTER_KEY"]
    sync_redis.set(key, "a string")
    problem = f"{key} holds a string, not a list: is SHARED_CACHE_WORKER_DEAD_LETTER_KEY another key?"
    for args in (["dead-letters", "list"], ["dead-letters", "replay"]):
        result = await run(env, *args)
        assert result.exit_code == 1 and result.stderr.splitlines() == [f"error: {problem}"]
    assert sync_redis.get(key) == b"a string"
    stats = as_json(await run(env, "--json", "stats", "--max-scan", "0"))
    assert stats["dead_letters"] == {"key": key, "waiting": None, "parked": {}, "problem": problem}
    doctor = as_json(await run(env, "--json", "doctor", "--skip-db", "--skip-broker"))
    status = {c["check"]: (c["status"], c["detail"]) for c in doctor["checks"]}
    assert status["redis"][0] == "OK" and status["dead letters"] == ("FAIL", problem)

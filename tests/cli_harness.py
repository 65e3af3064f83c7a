"""Running ``shared-cache`` in tests: in-process through click's ``CliRunner`` (on a thread: each
command runs its own event loop), with the environment of a test's manager."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import orjson
import redis
from click.testing import CliRunner, Result

from shared_cache import CacheManager
from worker.cli import cli

BROKER_DB = 5


def cli_env(manager: CacheManager, redis_url: str) -> dict[str, str]:
    """The command's environment: the same Redis, prefix and eviction channel as ``manager``."""
    return {
        "SHARED_CACHE_REDIS_URL": redis_url,
        "SHARED_CACHE_KEY_PREFIX": manager.prefix,
        "SHARED_CACHE_EVICTION_CHANNEL": manager.settings.eviction_channel,
        "SHARED_CACHE_WORKER_BROKER_URL": broker_url(redis_url),
        "SHARED_CACHE_WORKER_DEAD_LETTER_KEY": f"{manager.prefix}dead",
        "SHARED_CACHE_WORKER_EMBEDDING_PROVIDER": "none",
        "SHARED_CACHE_WORKER_RULES_FILE": "",
    }


def broker_url(redis_url: str) -> str:
    return f"{redis_url.rsplit('/', 1)[0]}/{BROKER_DB}"


async def run(env: dict[str, str], *args: str, input: str | None = None) -> Result:
    """One command, in-process. ``catch_exceptions=False``: an exception escaping the command (which
    a user would see as a traceback) fails the test instead of becoming an exit code."""
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, cli, list(args), env=env, input=input, catch_exceptions=False, prog_name="shared-cache"
    )


def as_json(result: Result) -> Any:
    return orjson.loads(result.stdout)


def queued(broker: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """Celery task messages waiting on a Redis broker queue: headers and decoded args, oldest first."""
    messages = []
    for raw in reversed(broker.lrange(queue, 0, -1)):
        envelope = json.loads(raw)
        args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        messages.append({"task": envelope["headers"]["task"], "args": args, **({"kwargs": kwargs} if kwargs else {})})
    return messages

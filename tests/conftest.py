from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from devtools.embedded import EmbeddedRedis as RedisServer
from shared_cache import CacheManager

_prefixes = itertools.count()


# A test that hangs is failed by pytest-timeout (``timeout`` in pyproject.toml). Shortly before,
# the watch below notes what every asyncio task still pending is waiting on, and the failure report
# shows it: a hang in an event loop's teardown is otherwise just a stack of ``select``.
_TASKS_NOTED_AFTER_S = float(os.environ.get("TASKS_NOTED_AFTER_S", "840"))  # a minute before the timeout
_watch: dict[str, Any] = {"test": None, "since": 0.0, "noted": {}}


def _pending_tasks() -> str:
    lines: list[str] = []
    for task in list(asyncio.tasks._all_tasks):  # type: ignore[attr-defined]  # every loop's, weakly held
        if task.done():
            continue
        lines.append(repr(task))
        lines.extend(f"    {where}" for where in _awaiting(task.get_coro()))
    return "\n".join(lines) or "no pending asyncio task"


def _awaiting(awaitable: object) -> list[str]:
    """Where a suspended coroutine waits, down its chain of awaits (``Task.get_stack`` shows only the
    outermost frame, which says nothing of the library call that never returns)."""
    chain: list[str] = []
    while awaitable is not None and len(chain) < 64:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "ag_frame", None)
        if frame is None:
            chain.append(f"awaits {awaitable!r}")
            break
        chain.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "ag_await", None)
    return chain


def _watch_for_hangs() -> None:
    while True:
        time.sleep(5)
        test, running = _watch["test"], time.monotonic() - _watch["since"]
        if test is not None and test not in _watch["noted"] and running > _TASKS_NOTED_AFTER_S:
            with contextlib.suppress(Exception):  # read from another thread: best effort
                _watch["noted"][test] = _pending_tasks()


threading.Thread(target=_watch_for_hangs, name="hang-watch", daemon=True).start()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    _watch["test"], _watch["since"] = item.nodeid, time.monotonic()
    try:
        return (yield)
    finally:
        _watch["test"] = None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Format a failure with the garbage collector paused, after one collection.

    On CPython 3.11 the depth counter of AST construction is shared by the interpreter. A finalizer
    that the collector runs while pytest parses a source file for the report, and that parses code
    itself (an asyncio task destroyed with an unread error logs it, and the traceback module parses
    the failing line to draw its carets), leaves that counter wrong: pytest then stops with
    ``INTERNALERROR ... AST constructor recursion depth mismatch`` and the failure is never shown.
    """
    if call.excinfo is None:
        return (yield)
    noted = _watch["noted"].pop(item.nodeid, None)
    if noted is not None:
        item.add_report_section(call.when, "pending asyncio tasks", noted)
    gc.collect()
    gc.disable()
    try:
        return (yield)
    finally:
        gc.enable()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(extra=["--enable-debug-command", "yes"]).start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
async def manager(redis_url: str) -> AsyncIterator[CacheManager]:
    """A fresh singleton on the real server, with a key prefix of its own and its own channel."""
    n = next(_prefixes)
    mgr = CacheManager.configure(
        redis_url=redis_url,
        key_prefix=f"test{n}:",
        eviction_channel=f"test{n}:evictions",
        ttl_jitter=0.0,
    )
    yield mgr
    await mgr.close()
    CacheManager._instance = None


class Monitor:
    """Record the commands clients send (MONITOR), leaving out what scripts run inside.

    ``with Monitor(url) as seen: ...`` then ``seen.commands`` lists them, e.g. ``["EVALSHA"]``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.commands: list[str] = []
        self._stop = threading.Event()
        self._raw: list[str] = []

    def __enter__(self) -> Monitor:
        self._marker_client = redis.Redis.from_url(self.url)
        self._marker_client.ping()  # its connection handshake happens before recording starts
        self._client = redis.Redis.from_url(self.url)
        self._monitor = self._client.monitor()
        self._conn = self._monitor.__enter__()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()
        self._marker("start")
        return self

    def _marker(self, name: str) -> None:
        self._marker_client.echo(f"monitor-{name}-{id(self)}")
        deadline = time.monotonic() + 5
        while not any(f"monitor-{name}-{id(self)}" in c for c in self._raw) and time.monotonic() < deadline:
            time.sleep(0.005)

    def _collect(self) -> None:
        self._raw = []
        for line in self._conn.listen():
            self._raw.append(f"{line['command']} <{line.get('client_type')}>")
            if self._stop.is_set() and "monitor-stop" in line["command"]:
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._marker("stop")
        self._thread.join(5)
        self._monitor.__exit__(None, None, None)
        self._client.close()
        self._marker_client.close()
        start = next(i for i, c in enumerate(self._raw) if f"monitor-start-{id(self)}" in c)
        stop = next(i for i, c in enumerate(self._raw) if f"monitor-stop-{id(self)}" in c)
        self.commands = [c.split(" ", 1)[0].upper() for c in self._raw[start + 1 : stop] if "<lua>" not in c]


def command_counts(client: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}

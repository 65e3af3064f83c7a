"""The lean pipelined connection of the Redis tier, against real servers (and a hung one)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devtools.embedded import EmbeddedRedis, free_port
from shared_cache import BackendCommandError, BackendUnavailable, CacheManager, CacheSettings, get_with_cache_aside
from shared_cache._redis_tier import RedisTier
from shared_cache._wire import endpoint_from_url


def tier(url: str, **overrides: object) -> RedisTier:
    return RedisTier(CacheSettings(redis_url=url, **overrides))  # type: ignore[arg-type]


async def test_concurrent_callers_share_one_connection_and_get_their_own_replies(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    for i in range(500):
        sync_redis.set(f"wire:k{i}", f"v{i}")
    t = tier(redis_url)
    replies = await asyncio.gather(*(t.call("GET", f"wire:k{i}") for i in range(500)))
    assert replies == [f"v{i}".encode() for i in range(500)]
    assert t.state().wire is not None and t.state().client is None  # the wire, not redis-py
    await t.close()


async def test_an_error_reply_fails_one_call_and_the_stream_goes_on(redis_url: str, sync_redis: redis.Redis) -> None:
    sync_redis.rpush("wire:list", "x")
    sync_redis.set("wire:str", "ok")
    t = tier(redis_url, breaker_threshold=1)
    results = await asyncio.gather(t.call("INCR", "wire:list"), t.call("GET", "wire:str"), return_exceptions=True)
    assert isinstance(results[0], BackendCommandError) and "WRONGTYPE" in str(results[0])
    assert results[1] == b"ok"
    assert not t.breaker.is_open  # the server answered: it is up
    await t.close()


async def test_scripts_load_themselves_on_noscript(redis_url: str, sync_redis: redis.Redis) -> None:
    from shared_cache._redis_tier import RECLAIM

    sync_redis.script_flush()
    t = tier(redis_url)
    assert await t.script(RECLAIM, ["wire:perm"], []) == 0
    assert sync_redis.script_exists(RECLAIM.sha) == [True]
    await t.close()


async def test_a_restarted_server_is_reconnected_and_pending_calls_fail() -> None:
    server = EmbeddedRedis().start()
    t = tier(server.url, breaker_threshold=100)
    try:
        assert await t.call("PING") == b"PONG"
        server.stop()
        with pytest.raises(BackendUnavailable):
            await t.call("PING")
        server.start()
        assert await t.call("PING") == b"PONG"
    finally:
        await t.close()
        server.cleanup()


class HungServer:
    """Accepts connections and never answers (a Redis stuck in a long command, or a dead proxy)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def hung() -> Iterator[HungServer]:
    server = HungServer()
    yield server
    server.close()


async def test_a_reply_that_does_not_come_times_out_and_later_replies_go_to_no_one_else(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    sync_redis.set("wire:after", "right")
    t = tier(redis_url, socket_timeout_seconds=0.2, breaker_threshold=100)
    blocked = asyncio.ensure_future(t.call("BLPOP", "wire:never", 1))  # the server answers in 1 s
    with pytest.raises(BackendUnavailable, match="no reply from Redis"):
        await blocked
    # the late reply of BLPOP must not be taken as this GET's: the connection was replaced
    assert await t.call("GET", "wire:after") == b"right"
    await asyncio.sleep(1.0)
    assert await t.call("GET", "wire:after") == b"right"
    await t.close()


async def test_auth_and_database_from_the_url() -> None:
    server = EmbeddedRedis().start()
    redis.Redis(port=server.port).config_set("requirepass", "s3cret")
    try:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        t = tier(url)
        await t.call("SET", "wire:db", "three")
        admin = redis.Redis(port=server.port, password="s3cret", db=3)
        assert admin.get("wire:db") == b"three"
        admin.close()
        await t.close()
        bad = tier(f"redis://:wrong@127.0.0.1:{server.port}/0")
        with pytest.raises(BackendUnavailable) as caught:
            await bad.call("PING")
        assert not isinstance(caught.value, BackendCommandError)  # a refused login is not one bad command
        await bad.close()
    finally:
        server.cleanup()


async def test_unix_socket_url() -> None:
    path = os.path.join(tempfile.mkdtemp(prefix="sc-sock-"), "redis.sock")
    server = EmbeddedRedis(extra=["--unixsocket", path, "--unixsocketperm", "700"]).start()
    try:
        assert endpoint_from_url(f"unix://{path}?db=1") is not None
        t = tier(f"unix://{path}?db=1")
        assert await t.call("PING") == b"PONG"
        await t.close()
    finally:
        server.cleanup()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.parametrize("tls", [False, True])
async def test_replies_larger_than_the_read_buffer_and_many_small_ones_arrive_whole(
    tls_files: tuple[Path, Path], tls: bool
) -> None:
    """Replies cross the connection's 256 KiB read buffer (and TLS records of 16 KiB) in pieces:
    each caller gets its own reply, byte for byte, over TCP and over TLS."""
    cert, key = tls_files
    tls_port = free_port()
    extra = []
    if tls:
        extra = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
        extra += ["--tls-auth-clients", "no"]
    server = EmbeddedRedis(extra=extra).start()
    try:
        admin = redis.Redis(port=server.port)
        big = os.urandom(3 * 1024 * 1024 + 7)
        admin.set("wire:big", big)
        values = {f"wire:v{i}": os.urandom(i * 131 % 40_000) for i in range(300)}
        admin.mset(values)
        url = f"rediss://localhost:{tls_port}/0?ssl_ca_certs={cert}" if tls else server.url
        t = tier(url)
        small = asyncio.gather(*(t.call("GET", k) for k in values))
        got_big, got_small, got_many = await asyncio.gather(t.call("GET", "wire:big"), small, t.call("MGET", *values))
        assert got_big == big
        assert got_small == got_many == list(values.values())
        assert t.state().wire is not None and t.state().client is None  # the wire, not redis-py
        await t.close()
        admin.close()
    finally:
        server.cleanup()


def test_urls_the_wire_does_not_handle_go_to_redis_py() -> None:
    assert endpoint_from_url("redis://localhost:6379/0?client_name=svc") is None
    assert endpoint_from_url("rediss://localhost:6380/0") is not None
    assert endpoint_from_url("redis://u:p@h:1/2").db == 2  # type: ignore[union-attr]


def test_first_reads_on_new_loops_do_not_wait_on_a_hung_redis(hung: HungServer) -> None:
    """The Celery-task pattern: ``asyncio.run()`` per read. With Redis hung, the first read waits at
    most the connect timeout for the subscriber, and once the breaker is open no loop of the
    process tries Redis again until the probe."""
    mgr = CacheManager.configure(
        redis_url=f"redis://127.0.0.1:{hung.port}/0",
        connect_timeout_seconds=0.2,
        socket_timeout_seconds=0.2,
        breaker_threshold=2,
        breaker_reset_seconds=60,
    )
    calls = 0

    async def read() -> object:
        def fetch(resource_id: str, tenant_id: str, ctx: object) -> dict[str, int]:
            nonlocal calls
            calls += 1
            return {"v": calls}

        value, _ = await get_with_cache_aside("document", "d", "t", fetch)
        await mgr.close()
        return value

    for i in range(1, 4):
        assert asyncio.run(read()) == {"v": i}
    assert mgr.redis.breaker.is_open
    opened_at = hung.accepted
    loop_times = []
    for _ in range(5):
        started = asyncio.run(_timed(read))
        loop_times.append(started)
    assert calls == 8  # every read answered by the database
    # the command connections stop once the breaker is open (the subscriber still tries, in the back)
    assert max(loop_times) < 0.2 * 3, loop_times
    assert hung.accepted - opened_at <= 5  # at most one subscriber attempt per loop, no command connection
    CacheManager._instance = None


@pytest.mark.parametrize("closing", ["asyncio.run", "loop.close"])
def test_a_loop_per_read_leaves_no_connection_behind(closing: str) -> None:
    """The Celery-task pattern, the library never closed: a new event loop per read, 40 times. A
    closed loop's connection to Redis is shut down when the next loop first reads, so at most one is
    open at any time; no closed loop's state is kept, and every read after the first is a hit."""
    import time

    server = EmbeddedRedis().start()
    admin = redis.Redis(port=server.port)
    try:
        mgr = CacheManager.configure(
            redis_url=server.url, key_prefix="loops:", memory_enabled=False, stats_publish_seconds=0
        )
        calls = 0

        def fetch(resource_id: str, tenant_id: str, ctx: object) -> dict[str, int]:
            nonlocal calls
            calls += 1
            return {"v": 1}

        async def read() -> tuple[object, str]:
            value, metrics = await get_with_cache_aside("document", "d", "t", fetch)
            return value, metrics["source"]

        def connections() -> int:  # the library's, not this one's
            return int(admin.info("clients")["connected_clients"]) - 1

        for i in range(40):
            if closing == "asyncio.run":
                got = asyncio.run(read())
            else:
                loop = asyncio.new_event_loop()
                got = loop.run_until_complete(read())
                loop.close()
            assert got == ({"v": 1}, "db" if i == 0 else "cache")
            deadline = time.monotonic() + 5
            while connections() > 1 and time.monotonic() < deadline:
                time.sleep(0.01)  # Redis notices a closed connection on its next pass
            assert connections() <= 1  # the loop just closed, until the next one comes
        assert calls == 1
        assert len(mgr.redis._states) <= 1
    finally:
        CacheManager._instance = None
        admin.close()
        server.cleanup()


async def _timed(read: object) -> float:
    import time

    start = time.perf_counter()
    await read()  # type: ignore[operator]
    return time.perf_counter() - start


def test_a_closed_port_is_fast_and_counted(sync_redis: redis.Redis) -> None:
    mgr = CacheManager.configure(redis_url=f"redis://127.0.0.1:{free_port()}/0", breaker_threshold=1)
    value, metrics = asyncio.run(get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 1}))
    assert value == {"v": 1} and metrics["stored"] is False
    assert mgr.stats.errors["redis"] >= 1
    CacheManager._instance = None


def test_reads_under_uvloop(redis_url: str) -> None:
    """Services often run uvloop (uvicorn's default when installed): its transports are not
    asyncio.Transport subclasses, and the wire must work on them all the same."""
    uvloop = pytest.importorskip("uvloop")
    mgr = CacheManager.configure(redis_url=redis_url, key_prefix="uvloop:", breaker_threshold=1)

    async def reads() -> list[object]:
        out = []
        for expected in ("db", "redis"):
            value, metrics = await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 1})
            out.append((value, metrics["source"] if expected == "db" else metrics["tier"]))
            assert mgr.memory is not None
            mgr.memory.clear()
        await mgr.close()
        return out

    assert uvloop.run(reads()) == [({"v": 1}, "db"), ({"v": 1}, "redis")]
    assert mgr.stats.errors.get("redis", 0) == 0 and not mgr.redis.breaker.is_open
    CacheManager._instance = None


async def test_the_redis_py_client_reconnects_after_a_restart() -> None:
    """``manager.redis.client()`` (pipelines, the operator tools, maintenance tasks) keeps pooled
    connections; after a Redis restart its next command must not fail on the closed one."""
    server = EmbeddedRedis().start()
    t = tier(server.url)
    try:
        client = t.client()
        assert await client.ping() is True
        server.stop()
        server.start()
        assert await client.ping() is True
    finally:
        await t.close()
        server.cleanup()

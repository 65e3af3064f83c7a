"""Redis Sentinel: the library finds the master through a real sentinel process."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.embedded import EmbeddedRedis as RedisServer
from devtools.embedded import free_port, server_binary
from shared_cache import CacheManager, get_with_cache_aside


@pytest.fixture(scope="module")
def sentinel() -> Iterator[tuple[RedisServer, int]]:
    master = RedisServer().start()
    port = free_port()
    conf = Path(master.dir) / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\nsentinel monitor primary 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds primary 1000\n"
    )
    proc = subprocess.Popen([server_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"SENTINEL get-master-addr-by-name primary\r\n")
                if str(master.port).encode() in sock.recv(200):
                    break
        except OSError:
            pass
        time.sleep(0.05)
    yield master, port
    proc.terminate()
    proc.wait(10)
    master.cleanup()


async def test_reads_and_invalidations_through_sentinel(sentinel: tuple[RedisServer, int]) -> None:
    master, port = sentinel
    mgr = CacheManager.configure(
        redis_url="redis://unused:1/0",  # the host comes from the sentinel; the db from here
        redis_sentinels=f"127.0.0.1:{port}",
        redis_sentinel_service="primary",
        key_prefix="sn:",
    )
    try:
        _, metrics = await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 1})
        assert metrics["stored"] is True
        mgr.memory.clear()  # type: ignore[union-attr]
        _, metrics = await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 2})
        assert metrics["tier"] == "redis"
        await mgr.invalidate("t", "document", "d")
        value, _ = await get_with_cache_aside("document", "d", "t", lambda r, t, c: {"v": 3})
        assert value == {"v": 3}
        assert mgr.subscriber is not None and mgr.subscriber.connects == 1  # subscribed on the master too
        import redis

        assert redis.Redis(port=master.port).exists("sn:{t}:document:d") == 1  # it was the real master
    finally:
        await mgr.close()


def test_bad_sentinel_list_is_a_clear_error() -> None:
    from shared_cache._redis_tier import RedisTier
    from shared_cache._settings import CacheSettings

    tier = RedisTier(CacheSettings(redis_sentinels="nonsense", redis_sentinel_service="primary"))
    with pytest.raises(ValueError, match="expected host:port"):
        tier.sentinel_master()

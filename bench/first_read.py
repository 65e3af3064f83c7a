"""A process's first read of a key from Redis, against one raw redis-py GET of the same value.

The Redis-tier hit that matters is a process's first read of a key (the memory tier serves the
repeats), so it is measured in a fresh process, on keys it has never read: each round reads a new
key through ``get_with_cache_aside`` (six hierarchy levels, the value at the last) and a new key of
the same value with a raw ``redis.asyncio`` GET, interleaved so that noise hits both alike. The loopback
round trip is reported too: the difference in microseconds is the figure, as a ratio alone hides the
Python cost when the round trip is long.

Each call's CPU time on the client (``time.thread_time``: its Python work and its system calls) is
reported beside its wall time, because on a VM the two can disagree: a client that has nothing left
to do once its command is sent goes idle in ``epoll_wait``, and waking an idle virtual CPU costs
tens of microseconds there, where a client still busy when the reply lands pays none of it. So the
row also gives a PING whose sender stays busy for 20 us after sending it, against the plain PING.

How dear that wake-up is depends on the machine's idle setting (see ``bench/idle.py``): where guest
halt polling is off and may be changed, the measure runs a second time with the kernel's default, and
each row names the setting it ran under.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import redis

from bench import idle

Row = tuple[str, str, str, str]
VALUE = {"id": "doc_123", "title": "Quarterly report", "pages": 12, "public": True}
PREFIX = "bfr:"


def _never(*args: Any) -> Any:
    raise AssertionError("a cache hit must not reach the database")


async def _measure(url: str, n: int) -> dict[str, list[float]]:
    """Runs in the fresh process."""
    import redis.asyncio as aredis

    from shared_cache import CacheManager, deserialize_from_cache, get_with_cache_aside

    manager = CacheManager.configure(redis_url=url, key_prefix=PREFIX, stats_publish_seconds=0)
    raw = aredis.Redis.from_url(url)
    # the process's first read of anything: connections, the subscriber, the script cache
    await get_with_cache_aside("document", "warm-up", "tenant_abc", lambda r, t, c: {"w": 1})
    await raw.get("raw:warm-up")
    out: dict[str, list[float]] = {k: [] for k in ("ours", "raw", "ping", "cpu_ours", "cpu_raw", "ping_busy")}
    clock, cpu = time.perf_counter, time.thread_time
    for i in range(n):
        start, start_cpu = clock(), cpu()
        deserialize_from_cache(await raw.get(f"raw:{i}"), "document")  # type: ignore[arg-type]
        middle, middle_cpu = clock(), cpu()
        value, metrics = await get_with_cache_aside(
            "document", f"doc{i}", "tenant_abc", _never, agent_id="a", conversation_id="c", collection_id="l"
        )
        end, end_cpu = clock(), cpu()
        assert metrics["tier"] == "redis" and value == VALUE
        out["raw"].append((middle - start) * 1e6)
        out["ours"].append((end - middle) * 1e6)
        out["cpu_raw"].append((middle_cpu - start_cpu) * 1e6)
        out["cpu_ours"].append((end_cpu - middle_cpu) * 1e6)
        start = clock()
        await manager.redis.call("PING")
        out["ping"].append((clock() - start) * 1e6)
        start = clock()
        reply = manager.redis.send_now("PING")
        while clock() - start < 20e-6:  # the sender stays busy (see the module docstring)
            pass
        await (reply if reply is not None else manager.redis.call("PING"))
        out["ping_busy"].append((clock() - start) * 1e6)
    await raw.aclose()
    await manager.close()
    return out


def child(url: str, n: int) -> None:
    print(json.dumps(asyncio.run(_measure(url, n))))


async def first_read(rows: list[Row], url: str, n: int = 2000, tune_idle: bool = True) -> None:
    """The first-read row, as the machine idles; with ``tune_idle``, a second one under the kernel's
    default guest halt polling where the machine has it off and lets it be changed."""
    from shared_cache import CacheManager, serialize_for_cache

    writer = CacheManager(CacheManager.get_instance().settings.model_copy(update={"key_prefix": PREFIX}))
    payload = serialize_for_cache(VALUE, "document")
    client = redis.Redis.from_url(url)
    for i in range(n):  # the basic level only: a six-level lookup walks every level
        await writer.set("document", f"doc{i}", VALUE, "tenant_abc")
        client.set(f"raw:{i}", payload)
    await writer.close()
    client.close()
    rows.append(_row(await _samples(url, n), f"as this machine idles: {idle.describe()}"))
    if not tune_idle:
        return
    with idle.kernel_default_halt_polling() as changed:
        if changed:
            print(
                f"-- first read again, with guest halt polling at the kernel's default "
                f"({idle.KERNEL_DEFAULT_NS} ns) until it ends",
                file=sys.stderr,
                flush=True,
            )
            rows.append(_row(await _samples(url, n), f"with the kernel's default {idle.describe()}"))


async def _samples(url: str, n: int) -> dict[str, list[float]]:
    """The measure, in a fresh process (the keys were written before)."""
    code = f"from bench.first_read import child; child({url!r}, {n})"
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    samples: dict[str, list[float]] = json.loads(done.stdout)
    return samples


def _row(samples: dict[str, list[float]], setting: str) -> Row:
    ours, raw, ping, cpu_ours, cpu_raw, ping_busy = (
        statistics.median(samples[k]) for k in ("ours", "raw", "ping", "cpu_ours", "cpu_raw", "ping_busy")
    )
    return (
        f"a process's first read of a key from Redis, 6-level lookup (goal <= raw GET + 25 us, < 1.3x); {setting}",
        f"{ours:.0f} us ({ours - raw:+.0f} us); client CPU {cpu_ours:.0f} us",
        f"raw redis.asyncio GET + decode {raw:.0f} us, client CPU {cpu_raw:.0f} us; loopback round trip "
        f"(PING) {ping:.0f} us, {ping_busy:.0f} us when the sender stays busy 20 us after sending",
        f"{ours / raw:.2f}x; client CPU {cpu_ours - cpu_raw:+.0f} us",
    )

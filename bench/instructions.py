"""CPU instructions per memory-tier hit, counted by the processor (``perf stat``).

On a shared VM the same hit takes 2 µs one minute and 3 µs the next (its neighbours share the CPU
and its caches), and a baseline measured in the same run moves with it, though not always in step.
The number of instructions a hit executes does not move (within 1% from run to run), so it says how
much work each library does per hit, whatever the machine is doing. Each library's hit loop runs in
a fresh process twice, with ``n`` hits and with none: the difference divided by ``n`` is the count of
one call, its ``await`` included. The hit is counted for the exported (compiled) function and for
the Python fallback. Two floors of a Python coroutine are given alongside: an empty one, and a bare
lookup (a coroutine with ``get_with_cache_aside``'s parameters that builds the request's identity
and looks it up in an ``OrderedDict``, and does nothing else a hit must do). Needs ``perf``
(Debian's ``linux-perf``) on a machine whose processor counters a process may read; elsewhere the
row says so.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.read_path import memory_hit_calls

Row = tuple[str, str, str, str]
LIBRARIES = ("shared_cache", "shared_cache (Python)", "cashews", "aiocache", "empty coroutine", "bare lookup")

_BARE: OrderedDict[tuple[Any, ...], list[Any]] = OrderedDict()


async def bare_lookup(
    data_type: str,
    resource_id: Any,
    tenant_id: str | None,
    fetch_from_db_func: Any,
    generate_func: Any = None,
    agent_id: Any = None,
    conversation_id: Any = None,
    collection_id: Any = None,
    ctx: Any = None,
    ttl: int | None = None,
    serializer: Any = None,
    deserializer: Any = None,
) -> tuple[Any, None]:
    """The floor under a memory-tier hit with the standard's signature: the call, the identity and one
    lookup; no expiry or invalidation check, no copy of the value, no metrics, no clock."""
    ident = (data_type, tenant_id, resource_id, agent_id, conversation_id, collection_id)
    return _BARE.get(ident), None


async def _loop(library: str, url: str, n: int) -> None:
    """Runs in the fresh process: the library's memory-tier hit (set up as the timed benchmark sets
    it up), once to warm, then ``n`` times."""

    async def nothing() -> None:
        return None

    call: Callable[[], Awaitable[object]] = nothing
    if library == "bare lookup":
        _BARE["document", "tenant_abc", "doc_123", None, None, None] = [0.0, 0, {"id": "doc_123"}]

        def call() -> Awaitable[object]:
            return bare_lookup("document", "doc_123", "tenant_abc", nothing)

    elif library != "empty coroutine":
        from shared_cache import CacheManager

        CacheManager.configure(redis_url=url, key_prefix="binstr:", stats_publish_seconds=0)
        call = (await memory_hit_calls())[library]
    await call()
    for _ in range(n):
        await call()


def child(library: str, url: str, n: int) -> None:
    asyncio.run(_loop(library, url, n))


def _count(library: str, url: str, n: int) -> int:
    """User-space instructions of one child process."""
    with tempfile.NamedTemporaryFile("r", suffix=".csv") as out:
        code = f"from bench.instructions import child; child({library!r}, {url!r}, {n})"
        subprocess.run(
            ["perf", "stat", "-x", ",", "-o", out.name, "-e", "instructions:u", sys.executable, "-c", code],
            check=True,
            capture_output=True,
        )
        for line in Path(out.name).read_text().splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2].startswith("instructions") and fields[0].isdigit():
                return int(fields[0])
    raise RuntimeError(f"perf stat printed no instruction count for {library}")


def per_call(library: str, url: str, n: int) -> float:
    """Instructions of one call: ``n`` calls minus none, over ``n`` (the smaller of two tries, so a
    stray page fault or timer interrupt cannot add to it)."""
    base = min(_count(library, url, 0) for _ in range(2))
    return min(_count(library, url, n) - base for _ in range(2)) / n


def perf_problem() -> str | None:
    """Why instructions cannot be counted here, or None."""
    if shutil.which("perf") is None:
        return "perf not installed (Debian: apt-get install linux-perf)"
    done = subprocess.run(["perf", "stat", "-x", ",", "-e", "instructions:u", "true"], capture_output=True, text=True)
    if done.returncode != 0 or "not supported" in done.stderr or "<not counted>" in done.stderr:
        return "this machine's processor counters are not readable (perf stat -e instructions:u)"
    return None


async def instructions(rows: list[Row], url: str, quick: bool) -> None:
    goal = "memory-tier hit, CPU instructions per call, counted by perf stat (the same on a busy or a quiet VM)"
    problem = perf_problem()
    if problem is not None:
        rows.append((goal, "not measured", problem, ""))
        return
    n = 20_000 if quick else 200_000
    counts = {}
    for library in LIBRARIES:
        counts[library] = await asyncio.to_thread(per_call, library, url, n)
    ours = counts["shared_cache"]
    rows.append(
        (
            goal,
            f"{ours:,.0f} instructions",
            f"cashews mem {counts['cashews']:,.0f}; aiocache {counts['aiocache']:,.0f}; "
            f"our Python fallback {counts['shared_cache (Python)']:,.0f}; "
            f"an empty coroutine {counts['empty coroutine']:,.0f}; a bare identity lookup {counts['bare lookup']:,.0f}",
            f"{counts['cashews'] / ours:.1f}x fewer than cashews; {counts['aiocache'] / ours:.1f}x than aiocache",
        )
    )

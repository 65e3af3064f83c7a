"""CPU instructions per memory-tier hit, counted by the processor (``perf stat``) or, where its
counters cannot be read, by valgrind's callgrind.

On a shared VM the same hit takes 2 µs one minute and 3 µs the next (its neighbours share the CPU
and its caches), and a baseline measured in the same run moves with it, though not always in step.
The number of instructions a hit executes does not move (within 1% from run to run), so it says how
much work each library does per hit, whatever the machine is doing. Each library's hit loop runs in
a fresh process twice, with ``n`` hits and with none: the difference divided by ``n`` is the count of
one call, its ``await`` included. The hit is counted for the exported (compiled) function and for
the Python fallback. Two floors of a Python coroutine are given alongside: an empty one, and a bare
lookup (a coroutine with ``get_with_cache_aside``'s parameters that builds the request's identity
and looks it up in an ``OrderedDict``, and does nothing else a hit must do).

``perf`` (Debian's ``linux-perf``) counts on a machine whose processor counters a process may read
(many VMs hide them: ``perf stat`` then prints ``<not supported>``). Elsewhere callgrind
(``valgrind --tool=callgrind``) counts the same user-space instructions by running the process on a
simulated CPU: about 50 times slower, so fewer hits are counted, and steady (two counts of the same
child differ by about 0.005%, a few instructions a hit), so each count is taken once. The children
run with ``PYTHONHASHSEED=0`` so that both counters see the same dict layouts from run to run.
Without either tool the row says what is missing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
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


def _child_command(library: str, url: str, n: int) -> list[str]:
    return [sys.executable, "-c", f"from bench.instructions import child; child({library!r}, {url!r}, {n})"]


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "0"}


def _count_perf(library: str, url: str, n: int) -> int:
    """User-space instructions of one child process, from the processor's counter."""
    with tempfile.NamedTemporaryFile("r", suffix=".csv") as out:
        command = ["perf", "stat", "-x", ",", "-o", out.name, "-e", "instructions:u", *_child_command(library, url, n)]
        subprocess.run(command, check=True, capture_output=True, env=_child_env())
        for line in Path(out.name).read_text().splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2].startswith("instructions") and fields[0].isdigit():
                return int(fields[0])
    raise RuntimeError(f"perf stat printed no instruction count for {library}")


def _count_callgrind(library: str, url: str, n: int) -> int:
    """User-space instructions of one child process, every thread's, counted by callgrind (its
    output file's ``totals:`` line)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "callgrind.out")
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *_child_command(library, url, n)]
        subprocess.run(command, check=True, capture_output=True, env=_child_env())
        for line in out.read_text().splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError(f"callgrind wrote no instruction total for {library}")


def per_call(library: str, url: str, n: int, counter: str = "perf") -> float:
    """Instructions of one call: ``n`` calls minus none, over ``n``. perf counts twice and keeps the
    smaller, so that a stray page fault or timer interrupt cannot add to it; callgrind's count does
    not take such noise, and is taken once."""
    if counter == "callgrind":
        return (_count_callgrind(library, url, n) - _count_callgrind(library, url, 0)) / n
    base = min(_count_perf(library, url, 0) for _ in range(2))
    return min(_count_perf(library, url, n) - base for _ in range(2)) / n


def choose_counter() -> tuple[str | None, str]:
    """("perf" or "callgrind", what the row calls it), or (None, why neither can count here)."""
    perf_ok = False
    if shutil.which("perf") is not None:
        probe = ["perf", "stat", "-x", ",", "-e", "instructions:u", "true"]
        done = subprocess.run(probe, capture_output=True, text=True)
        perf_ok = done.returncode == 0 and "not supported" not in done.stderr and "<not counted>" not in done.stderr
    if perf_ok:
        return "perf", "counted by perf stat"
    if shutil.which("valgrind") is not None:
        return "callgrind", "counted by callgrind: this machine's processor counters are not readable"
    return None, (
        "neither counter is here: perf (Debian's linux-perf) on a machine whose processor counters are "
        "readable, or valgrind"
    )


async def instructions(rows: list[Row], url: str, quick: bool) -> None:
    counter, how = choose_counter()
    goal = "memory-tier hit, CPU instructions per call, the same on a busy or a quiet VM"
    goal += f" ({how})" if counter else ""
    if counter is None:
        rows.append((goal, "not measured", how, ""))
        return
    # callgrind runs a child about 50x slower: fewer hits, two children at a time (instruction
    # counts do not depend on what else the machine runs).
    n = 20_000 if quick or counter == "callgrind" else 200_000
    with ThreadPoolExecutor(max_workers=2 if counter == "callgrind" else 1) as pool:
        futures = {library: pool.submit(per_call, library, url, n, counter) for library in LIBRARIES}
        counts = {library: await asyncio.wrap_future(future) for library, future in futures.items()}
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

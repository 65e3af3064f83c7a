"""Warming benchmarks with the packaged local model (all-MiniLM-L6-v2 on CPU).

1. The bare model's rate at batch size 1 vs 64: why warming sends texts in batches.
2. Warming through ``get_embeddings_batch_with_cache`` on an empty cache (every text a miss, chunks of
   64) vs the bare model on the same chunks: what the cache's lookup + write costs on top of the
   model (goal: warming keeps >= 90% of the bare rate).
3. The warming task (``tasks.warming.warm``: all of a task's texts in one call, which the model sorts
   by length before cutting its batches) vs the bare model called once on all the texts, and vs the
   bare model at batch 1.

python -m bench.warming [--quick]   # standalone, with a Redis server of its own
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import threading
import time

from shared_cache import CacheManager, get_embeddings_batch_with_cache
from tasks.providers import LocalSentenceTransformerProvider

Row = tuple[str, str, str, str]  # goal, ours, baseline, ratio/verdict
CHUNK = 64

_SUBJECTS = ["The invoice", "Our onboarding guide", "This support ticket", "The quarterly report", "A customer email"]
_VERBS = ["describes", "summarises", "questions", "explains", "lists", "compares", "mentions", "rejects"]
_OBJECTS = [
    "refund rules for annual plans",
    "latency of the search endpoint in Europe",
    "how agents escalate a conversation",
    "a failed payment and the retry schedule",
    "the vector store migration timeline",
    "permissions of shared collections",
    "token limits of the summarisation model",
    "a bug in the PDF ingestion pipeline",
]
_TAILS = [
    "",
    " It was written after the incident review.",
    " Several tenants asked about it last week, and the answer was not in the documentation yet.",
    " The attached notes cover edge cases, open questions, owners, deadlines and the follow-up plan"
    " agreed with the customer success team during the meeting on Tuesday afternoon.",
]


def make_texts(n: int, seed: int = 7) -> list[str]:
    """``n`` distinct texts of 6 to ~50 words, like the documents and queries a tenant warms."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(_SUBJECTS)} #{i} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}.{rng.choice(_TAILS)}"
        for i in range(n)
    ]


def _chunks(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i : i + size] for i in range(0, len(texts), size)]


class _Timed:
    """The provider, with the time spent inside it added up: what the cache call spent beyond that
    is the cache's own work, a number the machine's noise barely touches."""

    def __init__(self, inner: LocalSentenceTransformerProvider) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.spent = 0.0

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        start = time.perf_counter()
        try:
            return await self.inner.embed(texts)
        finally:
            self.spent += time.perf_counter() - start


def _rate(n: int, seconds: list[float]) -> float:
    """Texts per second from the median of repeated timings."""
    return n / statistics.median(seconds)


async def _run(rows: list[Row], redis_url: str, quick: bool) -> None:
    n, repeats = (128, 2) if quick else (256, 3)
    texts = make_texts(n)
    single = LocalSentenceTransformerProvider(batch_size=1)
    batched = LocalSentenceTransformerProvider(batch_size=CHUNK)
    batched.load()  # the one-off load (seconds) is not what is measured
    batched.embed_sync(texts[:CHUNK])  # nor the first call's allocations
    single.embed_sync(texts[:8])

    chunks = _chunks(texts, CHUNK)
    # Other work on a shared 2-core machine swings timings by 2x from one second to the next, so
    # both sides of each comparison run chunk by chunk, alternating which goes first, and each
    # repeat's totals are compared only with the same repeat's.

    # (1) bare model, batch 1 vs batch 64, on the same chunks.
    t1: list[float] = []
    t64: list[float] = []
    for rep in range(repeats):
        total = {"single": 0.0, "batched": 0.0}
        for k, chunk in enumerate(chunks):
            for side in ("single", "batched") if (rep + k) % 2 == 0 else ("batched", "single"):
                start = time.perf_counter()
                (single if side == "single" else batched).embed_sync(chunk)
                total[side] += time.perf_counter() - start
        t1.append(total["single"])
        t64.append(total["batched"])
    r1, r64 = _rate(n, t1), _rate(n, t64)
    rows.append(
        (
            f"local all-MiniLM-L6-v2 on CPU, {n} texts: batch 64 vs batch 1 (texts/s)",
            f"{r64:,.0f} texts/s at batch {CHUNK}",
            f"{r1:,.0f} texts/s at batch 1",
            f"{r64 / r1:.1f}x",
        )
    )

    # (2) warming on an empty cache vs the same provider called bare on the same chunks.
    previous = CacheManager._instance  # restored after, so a caller's singleton survives this step
    manager = CacheManager.configure(redis_url=redis_url, key_prefix="benchwarm:")
    try:
        # One warming pass first: connects the pool, loads the Lua script, starts the subscriber.
        await get_embeddings_batch_with_cache(chunks[0], "warm_tenant_setup", "bench-setup", batched)
        bare: list[float] = []
        cached: list[float] = []
        shares: list[float] = []
        timed = _Timed(batched)
        for rep in range(repeats):
            # A model key and tenant never used before: every text is a miss, nothing is cached.
            tenant, model_key = f"warm_tenant_{rep}", f"{batched.model_name}#bench{rep}-{time.time_ns()}"
            total = {"bare": 0.0, "cached": 0.0}
            for k, chunk in enumerate(chunks):
                for side in ("bare", "cached") if (rep + k) % 2 == 0 else ("cached", "bare"):
                    start = time.perf_counter()
                    if side == "bare":
                        await batched.embed(chunk)
                    else:
                        _, metrics = await get_embeddings_batch_with_cache(chunk, tenant, model_key, timed)
                        if metrics["cache_misses"] != len(chunk):
                            raise AssertionError(f"expected all misses, got {metrics}")
                    total[side] += time.perf_counter() - start
            bare.append(total["bare"])
            cached.append(total["cached"])
            shares.append(total["bare"] / total["cached"] * 100)
    finally:
        await manager.close()
        CacheManager._instance = previous
    r_bare, r_cached = _rate(n, bare), _rate(n, cached)
    share = statistics.median(shares)
    # Time in get_embeddings_batch_with_cache outside the model: lookup, encode, write, bookkeeping.
    overhead_ms = (sum(cached) - timed.spent) / (repeats * len(chunks)) * 1000
    rows.append(
        (
            f"warming {n} new texts via get_embeddings_batch_with_cache, chunks of {CHUNK}, empty cache "
            "(goal >= 90% of the bare model's batched rate)",
            f"{r_cached:,.0f} texts/s; cache work {overhead_ms:.1f} ms per chunk of {CHUNK}",
            f"same provider called bare on the same chunks: {r_bare:,.0f} texts/s",
            f"{share:.0f}% (median of {repeats} paired runs)" + ("" if share >= 90 else " BELOW GOAL"),
        )
    )
    await _task_rate(rows, redis_url, n, repeats)


class _Renamed:
    """The provider under another model name: a name never cached before makes every text a miss."""

    def __init__(self, inner: LocalSentenceTransformerProvider, model_name: str) -> None:
        self.inner = inner
        self.model_name = model_name

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return await self.inner.embed(texts)

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        return await self.inner.embed(texts)


async def _task_rate(rows: list[Row], redis_url: str, n: int, repeats: int) -> None:
    """(3) the warming task on an empty cache vs the bare model once on all texts vs batch 1."""
    from tasks.warming import warm

    texts = make_texts(n, seed=11)
    single = LocalSentenceTransformerProvider(batch_size=1)
    batched = LocalSentenceTransformerProvider(batch_size=CHUNK)
    previous = CacheManager._instance
    manager = CacheManager.configure(redis_url=redis_url, key_prefix="benchtask:")
    timings: dict[str, list[float]] = {"task": [], "bare": [], "single": []}
    try:
        await warm("task_setup", texts[:8], _Renamed(batched, "bench-setup"))  # connections, script, subscriber
        for rep in range(repeats):
            order = ["task", "bare", "single"]
            for side in order[rep % 3 :] + order[: rep % 3]:  # each goes first in turn
                start = time.perf_counter()
                if side == "task":
                    result = await warm(f"task_{rep}", texts, _Renamed(batched, f"bench-task-{rep}-{time.time_ns()}"))
                    if result["generated"] != n:
                        raise AssertionError(f"expected {n} misses, got {result}")
                elif side == "bare":
                    await asyncio.to_thread(batched.embed_sync, texts)
                else:
                    await asyncio.to_thread(single.embed_sync, texts)
                timings[side].append(time.perf_counter() - start)
    finally:
        await manager.close()
        CacheManager._instance = previous
    task, bare, one = (_rate(n, timings[side]) for side in ("task", "bare", "single"))
    rows.append(
        (
            f"warming task, {n} mixed-length texts in one call (the model sorts them by length), empty cache",
            f"{task:,.0f} texts/s",
            f"bare model once on all {n} texts (batch {CHUNK}): {bare:,.0f} texts/s; batch 1: {one:,.0f} texts/s",
            f"{task / bare * 100:.0f}% of the bare model; {task / one:.1f}x batch 1 (medians of {repeats})",
        )
    )


def warming(rows: list[Row], redis_url: str, quick: bool) -> None:
    """Append the warming rows. Runs its own event loop; called from async code (a loop running in
    this thread), it runs that loop in a thread of its own and waits for it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_run(rows, redis_url, quick))
        return
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(_run(rows, redis_url, quick))
        except BaseException as exc:  # re-raised in the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=target, name="bench-warming")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def main() -> None:
    from devtools.embedded import EmbeddedRedis as RedisServer

    parser = argparse.ArgumentParser(prog="python -m bench.warming")
    parser.add_argument("--quick", action="store_true", help="fewer texts and repeats, for a smoke test")
    args = parser.parse_args()
    server = RedisServer().start()
    rows: list[Row] = []
    try:
        print("-- warming", file=sys.stderr, flush=True)
        warming(rows, server.url, args.quick)
    finally:
        server.cleanup()
    print("| goal | shared_cache | baseline (same run) | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

"""The benchmark's pictures: one PNG per figure family, written next to the results table.

- ``latency_distributions.png``: the distribution (CDF) of single-call latencies of a memory-tier hit,
  a Redis-tier hit (a first read: the memory tier cleared before each call) and a raw redis-py GET
  of the same value, measured interleaved;
- ``batch_hit_ratio.png``: time of a 1,000-text embedding batch against its hit ratio, for
  ``get_embeddings_batch_with_cache`` and for the per-text get/generate/set loop;
- ``invalidation_scaling.png``: time to invalidate a scope against the number of keys it covers,
  ours (one generation bump) and SCAN+UNLINK of the same keys.

Each ``measure_*`` function returns the data it plots, so tests can check what went into a picture.
matplotlib draws with the Agg backend (no display needed).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis

from bench._util import percentile
from shared_cache import (
    BackendUnavailable,
    CacheManager,
    deserialize_from_cache,
    get_embeddings_batch_with_cache,
    get_with_cache_aside,
    serialize_for_cache,
)

VALUE = {"id": "doc_123", "title": "Quarterly report", "pages": 12, "public": True}
VECTOR = [0.01 * i for i in range(384)]
FILES = ("latency_distributions.png", "batch_hit_ratio.png", "invalidation_scaling.png")


async def measure_latencies(url: str, n: int) -> dict[str, list[float]]:
    """Single-call latencies in microseconds: memory-tier hit, first-read Redis-tier hit, raw GET."""
    manager = CacheManager.get_instance()
    memory = manager.memory
    assert memory is not None, "the memory tier must be on"
    raw = aredis.Redis.from_url(url)
    await raw.set("fig:raw", serialize_for_cache(VALUE, "document"))

    async def fetch(resource_id: str, tenant_id: str, ctx: Any) -> dict[str, Any]:
        return dict(VALUE)

    await get_with_cache_aside("document", "fig_doc", "tenant_fig", fetch)
    samples: dict[str, list[float]] = {"memory hit": [], "Redis-tier hit": [], "raw GET": []}
    for _ in range(n):  # interleaved, so noise hits all three alike
        start = time.perf_counter()
        await get_with_cache_aside("document", "fig_doc", "tenant_fig", fetch)
        samples["memory hit"].append((time.perf_counter() - start) * 1e6)
        memory.clear()
        start = time.perf_counter()
        await get_with_cache_aside("document", "fig_doc", "tenant_fig", fetch)
        samples["Redis-tier hit"].append((time.perf_counter() - start) * 1e6)
        start = time.perf_counter()
        deserialize_from_cache(await raw.get("fig:raw"), "document")  # type: ignore[arg-type]
        samples["raw GET"].append((time.perf_counter() - start) * 1e6)
    await raw.aclose()
    return samples


async def measure_batches(
    ratios: list[float], size: int = 1000, repeats: int = 3
) -> dict[str, list[tuple[float, float, int]]]:
    """(hit ratio, median milliseconds, texts found in the cache) per ratio, for the batch and the
    per-text loop; every repeat uses texts of its own, cached up to the ratio beforehand."""
    manager = CacheManager.get_instance()
    memory = manager.memory
    assert memory is not None, "the memory tier must be on"

    def provider(texts: list[str]) -> list[list[float]]:
        return [VECTOR] * len(texts)  # free: the figure shows the cache's cost, not a model's

    async def batch(texts: list[str]) -> int:
        _, metrics = await get_embeddings_batch_with_cache(texts, "tenant_fig", "minilm", provider)
        return int(metrics["cache_hits"])

    async def loop(texts: list[str]) -> int:
        found = 0
        for text in texts:
            if await manager.get_embedding(text, "minilm", "tenant_fig"):
                found += 1
            else:
                await manager.set_embedding(text, provider([text])[0], "minilm", "tenant_fig")
        return found

    out: dict[str, list[tuple[float, float, int]]] = {"get_embeddings_batch_with_cache": [], "per-text loop": []}
    for k, ratio in enumerate(ratios):
        cached = int(size * ratio)
        for name, run in (("get_embeddings_batch_with_cache", batch), ("per-text loop", loop)):
            times, found = [], 0
            for r in range(repeats):
                texts = [f"{name[:4]}{k}.{r}: chunk {i}" for i in range(size)]
                if cached:
                    await get_embeddings_batch_with_cache(texts[:cached], "tenant_fig", "minilm", provider)
                memory.clear()  # the hits come from Redis, as a fresh process would find them
                start = time.perf_counter()
                found = await run(texts)
                times.append((time.perf_counter() - start) * 1e3)
            out[name].append((ratio, percentile(times, 0.5), found))
    return out


Points = dict[str, list[tuple[int, float, int]]]


async def measure_invalidation(url: str, sizes: list[int], repeats: int = 30) -> Points:
    """(keys covered, milliseconds, keys touched) per size: our scope invalidation, SCAN+UNLINK."""
    manager = CacheManager.get_instance()
    client = redis.Redis.from_url(url)
    out: Points = {"shared_cache invalidate (one INCR)": [], "SCAN + UNLINK": []}
    try:
        for size in sizes:
            tenant = f"tenant_scale{size}"
            pattern = f"{manager.prefix}{{{tenant}}}:document:"
            client.execute_command("DEBUG", "POPULATE", size, pattern)  # type: ignore[no-untyped-call]
            await asyncio.sleep(1.0)  # let Redis finish rehashing after the bulk insert
            runs: list[float] = []
            while len(runs) < repeats:
                start = time.perf_counter()
                try:
                    await manager.invalidate(tenant, "document", "*")
                except BackendUnavailable:  # Redis still busy with the bulk insert: not a sample
                    await asyncio.sleep(0.5)
                    continue
                runs.append((time.perf_counter() - start) * 1e3)
            out["shared_cache invalidate (one INCR)"].append((size, percentile(runs, 0.5), 1))
            start = time.perf_counter()
            deleted = 0
            batch: list[bytes] = []
            for key in client.scan_iter(match=pattern + "*", count=5000):
                batch.append(key)
                if len(batch) == 5000:
                    deleted += client.unlink(*batch)
                    batch = []
            if batch:
                deleted += client.unlink(*batch)
            out["SCAN + UNLINK"].append((size, (time.perf_counter() - start) * 1e3, deleted))
    finally:
        client.close()
    return out


def draw(
    directory: Path,
    latencies: dict[str, list[float]],
    batches: dict[str, list[tuple[float, float, int]]],
    invalidation: Points,
) -> list[Path]:
    """Write the three PNGs into ``directory``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / name for name in FILES]

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, samples in latencies.items():
        ordered = sorted(samples)
        ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=_median_label(name, ordered))
    ax.set_xscale("log")
    ax.set_xlabel("latency of one call (µs, log scale)")
    ax.set_ylabel("fraction of calls")
    ax.set_title("Read latency: memory tier, Redis tier (first read), raw redis-py GET")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _save(fig, paths[0])

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, points in batches.items():
        ax.plot([100 * r for r, _, _ in points], [ms for _, ms, _ in points], marker="o", label=name)
    ax.set_xlabel("texts already cached (%)")
    ax.set_ylabel("time of one batch (ms, log scale)")
    ax.set_yscale("log")
    ax.set_title("Embedding batch time vs hit ratio (384-d vectors; the provider costs nothing here)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _save(fig, paths[1])

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, sized in invalidation.items():
        ax.plot([n for n, _, _ in sized], [ms for _, ms, _ in sized], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("keys covered by the invalidated scope (log scale)")
    ax.set_ylabel("time to invalidate (ms, log scale)")
    ax.set_title("Invalidation time vs keys covered")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _save(fig, paths[2])
    return paths


def _median_label(name: str, ordered: list[float]) -> str:
    return f"{name} (median {ordered[len(ordered) // 2]:.1f} µs)"


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


async def figures(url: str, directory: Path, quick: bool) -> list[Path]:
    """Measure the three families and draw them (the bench's ``figures`` part)."""
    latencies = await measure_latencies(url, 500 if quick else 3000)
    batches = await measure_batches([0.0, 0.25, 0.5, 0.75, 0.9, 1.0], 200 if quick else 1000)
    sizes = [10, 1_000, 10_000] if quick else [10, 1_000, 10_000, 100_000, 1_000_000]
    invalidation = await measure_invalidation(url, sizes)
    return draw(directory, latencies, batches, invalidation)

"""Run every benchmark against a Redis server it starts itself; print and save a Markdown table.

python -m bench            # full run (about two minutes)
python -m bench --quick    # smaller sizes, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
from pathlib import Path

from bench import first_read, invalidation, memory_invalidation, read_path, stale, warming, worker
from devtools.embedded import EmbeddedRedis as RedisServer
from shared_cache import CacheManager


async def run(quick: bool, url: str) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    CacheManager.configure(redis_url=url, key_prefix="bench:", ttl_jitter=0.0)
    steps = [
        ("memory hit", read_path.memory_hit(rows)),
        ("first read", first_read.first_read(rows, url, 300 if quick else 2000)),
        ("redis hit", read_path.redis_hit(rows, url)),
        ("miss", read_path.miss(rows, url)),
        ("batch", read_path.batch(rows)),
        ("invalidation", invalidation.scope_vs_scan(rows, url, 10_000 if quick else 1_000_000)),
        ("memory invalidation", memory_invalidation.memory_invalidation(rows, url, 5 if quick else 20)),
        ("propagation", invalidation.propagation(rows, url, 8, 50 if quick else 300)),
    ]
    for name, step in steps:
        print(f"-- {name}", file=sys.stderr, flush=True)
        await step
    read_path.codec(rows)
    print("-- stale reads", file=sys.stderr, flush=True)
    stale.stale_reads(rows, url, 3 if quick else 10)
    print("-- worker", file=sys.stderr, flush=True)
    await worker.worker_benchmarks(rows, url, quick)
    await CacheManager.get_instance().close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--out", default="bench/results.md", help="where to write the Markdown table")
    args = parser.parse_args()
    server = RedisServer(extra=["--enable-debug-command", "yes"]).start()
    try:
        rows = asyncio.run(run(args.quick, server.url))
        print("-- warming (local model)", file=sys.stderr, flush=True)
        warming.warming(rows, server.url, args.quick)
    finally:
        server.cleanup()
    lines = [
        f"Python {platform.python_version()}, {platform.machine()}, Redis on loopback; medians of repeated runs.",
        "",
        "| goal | shared_cache | baseline (same run) | ratio |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

"""Run the benchmarks against a Redis server it starts itself; print and save a Markdown table, and
draw the figures next to it.

python -m bench                   # every part (about eight minutes)
python -m bench service figures   # only these parts
python -m bench --quick           # smaller sizes, for a smoke test (writes no file unless --figures-dir)
python -m bench --machine-as-is   # never change the machine's idle setting (see bench/idle.py)
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import (
    figures,
    first_read,
    idle,
    instructions,
    invalidation,
    memory_invalidation,
    read_path,
    service,
    stale,
    warming,
    worker,
)
from devtools.embedded import EmbeddedRedis as RedisServer
from shared_cache import CacheManager

Row = tuple[str, str, str, str]
PARTS = ("read", "invalidation", "stale", "worker", "warming", "service", "figures")


def progress(text: str) -> None:
    print(f"-- {text}", file=sys.stderr, flush=True)


def read_part(tune_idle: bool) -> Callable[[list[Row], str, bool], Awaitable[None]]:
    async def run(rows: list[Row], url: str, quick: bool) -> None:
        for name, step in (
            ("memory hit", read_path.memory_hit(rows)),
            ("memory hit, instructions", instructions.instructions(rows, url, quick)),
            ("first read", first_read.first_read(rows, url, 300 if quick else 2000, tune_idle)),
            ("redis hit", read_path.redis_hit(rows, url)),
            ("miss", read_path.miss(rows, url)),
            ("batch", read_path.batch(rows)),
        ):
            progress(name)
            await step
        read_path.codec(rows)

    return run


async def invalidation_part(rows: list[Row], url: str, quick: bool) -> None:
    progress("invalidation")
    await invalidation.scope_vs_scan(rows, url, 10_000 if quick else 1_000_000)
    progress("memory-tier invalidation")
    await memory_invalidation.memory_invalidation(rows, url, 5 if quick else 20)
    progress("propagation")
    await invalidation.propagation(rows, url, 8, 50 if quick else 300)


async def stale_part(rows: list[Row], url: str, quick: bool) -> None:
    progress("stale reads")
    stale.stale_reads(rows, url, 3 if quick else 10)


async def worker_part(rows: list[Row], url: str, quick: bool) -> None:
    progress("worker")
    await worker.worker_benchmarks(rows, url, quick)


async def warming_part(rows: list[Row], url: str, quick: bool) -> None:
    progress("warming (local model)")
    await asyncio.to_thread(warming.warming, rows, url, quick)


async def service_part(rows: list[Row], url: str, quick: bool) -> None:
    progress("service level (uvicorn + Postgres + wrk)")
    await asyncio.to_thread(service.service_level, rows, url, quick, progress)


def figures_part(directory: Path | None) -> Callable[[list[Row], str, bool], Awaitable[None]]:
    async def run(rows: list[Row], url: str, quick: bool) -> None:
        if directory is None:
            progress("figures skipped (--quick writes no files unless --figures-dir is given)")
            return
        progress(f"figures -> {directory}")
        # A manager of its own (other parts may have configured theirs), with the memory tier on.
        await CacheManager.get_instance().close()
        CacheManager.configure(redis_url=url, key_prefix="benchfig:", ttl_jitter=0.0)
        for path in await figures.figures(url, directory, quick):
            progress(f"wrote {path}")

    return run


async def run(parts: list[str], quick: bool, url: str, figures_dir: Path | None, tune_idle: bool = True) -> list[Row]:
    rows: list[Row] = []
    steps = {
        "read": read_part(tune_idle),
        "invalidation": invalidation_part,
        "stale": stale_part,
        "worker": worker_part,
        "warming": warming_part,
        "service": service_part,
        "figures": figures_part(figures_dir),
    }
    CacheManager.configure(redis_url=url, key_prefix="bench:", ttl_jitter=0.0)
    for name in parts:
        await steps[name](rows, url, quick)
    await CacheManager.get_instance().close()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n", 1)[0])
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"parts to run (default: all): {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--out", default="bench/results.md", help="where to write the Markdown table")
    parser.add_argument("--figures-dir", help="where to write the PNGs (default: next to --out)")
    parser.add_argument(
        "--machine-as-is",
        action="store_true",
        help="never change the machine's idle setting (by default, where guest halt polling is off and root may "
        "set it, the first-read measure runs a second time with the kernel's default; see bench/idle.py)",
    )
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(map(repr, unknown))}: expected some of {', '.join(PARTS)}")
    parts = [p for p in PARTS if p in args.parts] if args.parts else list(PARTS)
    if args.figures_dir:
        figures_dir: Path | None = Path(args.figures_dir)
    else:
        figures_dir = None if args.quick else Path(args.out).parent
    server = RedisServer(extra=["--enable-debug-command", "yes"]).start()
    try:
        rows = asyncio.run(run(parts, args.quick, server.url, figures_dir, not args.machine_as_is))
    finally:
        server.cleanup()
    lines = [
        f"Python {platform.python_version()}, {platform.machine()}, Redis on loopback, {idle.describe()}; "
        "medians of repeated runs.",
        "",
        "| goal | shared_cache | baseline (same run) | ratio |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick and set(parts) != {"figures"}:
        out = Path(args.out) if parts == list(PARTS) else Path(args.out).with_name(f"results-{'-'.join(parts)}.md")
        out.write_text(text)
        progress(f"wrote {out}")


if __name__ == "__main__":
    main()

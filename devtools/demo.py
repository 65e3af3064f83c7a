"""``./run`` (``python -m devtools.demo``): the whole system on this machine, doing its job.

Starts, as child processes it owns, a Redis server and a Postgres (unless
``SHARED_CACHE_REDIS_URL`` / ``SHARED_CACHE_WORKER_DATABASE_URL`` point at real ones), creates a
small schema with sample tenants, collections, agents, documents and chunks, then the change
listener and two Celery workers (invalidation; warming with the local all-MiniLM-L6-v2 model, which
it installs on first use); then runs a workload you can watch: reader processes doing cache-aside
reads and checking a sample of them for staleness against Postgres, a query service embedding
recent chunks through the cache, a writer changing documents and chunks, and a status line. It ends
after ``--duration`` seconds or on Ctrl-C, stops every child and removes its temp directories.
Exit code 1 if a stale read was seen (or nothing was read).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from devtools.demo_data import TENANTS, Writes, seed, write
from devtools.demo_readers import document_reader, query_service
from devtools.demo_status import Status
from devtools.embedded import EmbeddedCeleryWorker, EmbeddedPostgres, EmbeddedRedis, broker_url, end_process
from devtools.local_model import ensure_local_model
from shared_cache import Keyspace
from tasks.support import mask_url

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "demo:"
MODEL = "all-MiniLM-L6-v2"
FAULTS = ("no-subscriber", "no-listener")
# One core each for torch in the warming worker and the query service: the machine also runs the
# readers, Redis, Postgres and the listener, and invalidations must not wait behind a model.
MODEL_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def say(message: str) -> None:
    print(message, flush=True)


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.servers: list[Any] = []
        self.children: list[subprocess.Popen[Any]] = []
        self.workers: list[EmbeddedCeleryWorker] = []
        self.processes: list[tuple[Any, Any]] = []  # (process, its ready event)
        self.provider = "none"
        self.mp = mp.get_context("spawn")
        self.go = self.mp.Event()
        self.until = self.mp.RawValue("d", 0.0)  # when the workload ends (set when it starts)
        self.seeded_warm_tasks = 0

    # -- set-up ----------------------------------------------------------------------------------
    def choose_provider(self) -> None:
        """Warming with the local model by default; installed on first use, skipped (saying why)
        only where it cannot be installed."""
        wanted = os.environ.get("SHARED_CACHE_WORKER_EMBEDDING_PROVIDER", "local")
        if self.args.no_warming or wanted == "none":
            say("warming    : off (--no-warming or SHARED_CACHE_WORKER_EMBEDDING_PROVIDER=none)")
            return
        if wanted == "local":
            setup = ensure_local_model(sys.executable, say)
            if not setup.available:
                say(f"warming    : off: {setup.reason}")
                return
        self.provider = wanted

    def start_services(self) -> tuple[str, str]:
        redis_url = os.environ.get("SHARED_CACHE_REDIS_URL", "")
        if redis_url:
            say(f"redis      : using {mask_url(redis_url)}")
        else:
            server = EmbeddedRedis().start()
            self.servers.append(server)
            redis_url = server.url
            pid = server.proc.pid if server.proc else "?"
            say(f"redis      : started on port {server.port} (pid {pid}, {server.dir})")
        dsn = os.environ.get("SHARED_CACHE_WORKER_DATABASE_URL", "")
        if dsn:
            say(f"postgres   : using {mask_url(dsn)}")
        else:
            pg = EmbeddedPostgres().start()
            self.servers.append(pg)
            dsn = pg.dsn
            say(f"postgres   : started on port {pg.port} (wal_level=logical, {pg.dir})")
        return redis_url, dsn

    def env(self, redis_url: str, dsn: str) -> dict[str, str]:
        return {
            "SHARED_CACHE_REDIS_URL": redis_url,
            "SHARED_CACHE_KEY_PREFIX": PREFIX,
            "SHARED_CACHE_WORKER_BROKER_URL": os.environ.get("SHARED_CACHE_WORKER_BROKER_URL", broker_url(redis_url)),
            "SHARED_CACHE_WORKER_DATABASE_URL": dsn,
            "SHARED_CACHE_WORKER_SLOT_NAME": os.environ.get("SHARED_CACHE_WORKER_SLOT_NAME", "shared_cache_demo"),
            "SHARED_CACHE_WORKER_EMBEDDING_PROVIDER": self.provider,
            "SHARED_CACHE_WORKER_EMBEDDING_MODEL": MODEL,
        }

    def start_workers(self, env: dict[str, str]) -> None:
        worker = EmbeddedCeleryWorker(env, concurrency=2, queues="invalidation", cwd=ROOT).start()
        self.workers.append(worker)
        say(f"celery     : invalidation worker ready (pid {worker.proc.pid if worker.proc else '?'})")
        if self.provider != "none":
            warming = EmbeddedCeleryWorker(
                {**env, **MODEL_ENV}, concurrency=1, queues="warming", include="devtools.warming_report", cwd=ROOT
            ).start()
            self.workers.append(warming)
            pid = warming.proc.pid if warming.proc else "?"
            say(f"celery     : warming worker ready (pid {pid}), {self.provider} embedding model")
        if self.args.fault == "no-listener":
            say("listener   : NOT started (--fault no-listener): writes reach no cache")
            return
        listener = subprocess.Popen(
            [sys.executable, "-m", "worker", "--status-every", "1", "--log-level", "WARNING"],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        )
        self.children.append(listener)
        say(f"listener   : python -m worker (pid {listener.pid}), Postgres slot {env['SHARED_CACHE_WORKER_SLOT_NAME']}")

    def start_readers(self, redis_url: str, dsn: str, status: Status) -> None:
        subscriber = self.args.fault != "no-subscriber"
        for i in range(self.args.readers):
            counters = self.mp.RawArray("q", 3)
            clock = (self.mp.Event(), self.go, self.until)
            args = (redis_url, dsn, PREFIX, self.args.docs, clock, i, counters, subscriber, 10, self.args.bound_ms)
            self.start_process(document_reader, args, clock[0])
            status.readers.append(counters)
        note = "" if subscriber else " WITHOUT the eviction subscriber (--fault no-subscriber)"
        say(
            f"readers    : {self.args.readers} processes doing get_with_cache_aside (memory -> Redis -> Postgres),"
            f" checking one read in 10 against Postgres{note}"
        )

    def start_query_service(self, redis_url: str, dsn: str, status: Status) -> None:
        counters = self.mp.RawArray("q", 4)
        clock = (self.mp.Event(), self.go, self.until)
        self.start_process(query_service, (redis_url, dsn, PREFIX, MODEL, clock, counters, MODEL_ENV), clock[0])
        status.query = counters
        say("query svc  : 1 process doing get_embeddings_batch_with_cache on the most recently written chunks")

    def start_process(self, target: Any, args: tuple[Any, ...], ready: Any) -> None:
        proc = self.mp.Process(target=target, args=args, daemon=True)
        proc.start()
        self.processes.append((proc, ready))

    async def wait_until_ready(self, status: Status) -> None:
        """Wait for every reader (connected) and, with warming, for the model in the warming worker
        and the query service, so the workload's clock starts with everyone in place."""
        if self.provider != "none":
            say(f"warming    : loading {MODEL} in the warming worker and the query service (CPU, one thread each)")
        started = time.monotonic()
        told = started
        loaded = "loading"
        while time.monotonic() - started < 300:
            if time.monotonic() - told >= 15:  # a long wait says it is still waiting, and on what
                told = time.monotonic()
                waiting = sum(not ready.is_set() for _, ready in self.processes)
                model = "" if self.provider == "none" else f"; model in the warming worker: {loaded}"
                total = len(self.processes)
                say(f"waiting    : {told - started:.0f} s; {waiting} of {total} processes not ready{model}")
            warming = status.collect()["warming"]
            loaded = "loaded" if warming.get("model_loaded") else "loading"
            if warming.get("model_error"):
                raise RuntimeError(f"the warming worker could not load the model: {warming['model_error']}")
            for proc, _ in self.processes:
                if not proc.is_alive():
                    raise RuntimeError(f"a reader process stopped before it was ready (exit code {proc.exitcode})")
            model_ready = self.provider == "none" or bool(warming.get("model_loaded"))
            if model_ready and all(ready.is_set() for _, ready in self.processes):
                if self.provider != "none":
                    say(f"warming    : model loaded in {time.monotonic() - started:.1f} s")
                return
            await asyncio.sleep(0.2)
        raise RuntimeError("the readers (or the embedding model) were not ready within 300 s")

    def warm_seeded_collections(self, env: dict[str, str]) -> None:
        from tasks.settings import TaskSettings
        from worker.app import make_app

        app = make_app(TaskSettings(broker_url=env["SHARED_CACHE_WORKER_BROKER_URL"]))
        for tenant in TENANTS:
            for c in range(2):
                app.send_task("shared_cache.warm_collection", args=[tenant, f"{tenant}-c{c}"], queue="warming")
        app.close()
        self.seeded_warm_tasks = len(TENANTS) * 2
        say(f"warming    : warm_collection sent for the {len(TENANTS) * 2} seeded collections")

    # -- the run ---------------------------------------------------------------------------------
    async def run(self) -> int:
        started = time.monotonic()
        self.choose_provider()
        redis_url, dsn = self.start_services()
        chunks = seed(dsn, self.args.docs)
        say(
            f"schema     : {len(TENANTS)} tenants, 6 collections, 6 agents, {self.args.docs * len(TENANTS)} documents,"
            f" {chunks} chunks"
        )
        env = self.env(redis_url, dsn)
        self.start_workers(env)
        if self.args.fault != "no-listener":
            await self.wait_for_listener(redis_url)
        status = Status(redis_url, PREFIX, self.args.bound_ms)
        self.start_readers(redis_url, dsn, status)
        if self.provider != "none":
            self.start_query_service(redis_url, dsn, status)
        await self.wait_until_ready(status)
        until = self.until.value = time.time() + self.args.duration
        self.go.set()
        if self.provider != "none":
            self.warm_seeded_collections(env)
        say(f"ready in {time.monotonic() - started:.1f}s; running for {self.args.duration:.0f}s (Ctrl-C stops)\n")
        status.started = time.monotonic()
        writes = await self.watch(dsn, until, status)
        for proc, _ in self.processes:
            await asyncio.to_thread(proc.join, 10)
        await asyncio.sleep(1.2)  # the last stats reports and the listener's status land
        if self.provider != "none":
            await self.drain_warming(status)
        final = status.collect()
        status.close()
        for line in status.summary(final, writes, self.provider != "none"):
            say(line)
        if final["stale"]:
            say(f"FAILED: {final['stale']:,} stale reads")
            slow = final["commit_to_evict"] and final["commit_to_evict"][1] > self.args.bound_ms
            if slow and not self.args.fault:
                say(
                    f"        commit->evict p99 was {final['commit_to_evict'][1]:,.0f} ms, above the bound:"
                    " this machine is too busy for it (rerun when it is calmer, or with a larger --bound-ms)"
                )
            return 1
        return 0 if final["reads"] > 0 else 1

    async def watch(self, dsn: str, until: float, status: Status) -> Writes:
        """Run the writer while the status lines refresh (in place on a terminal, every 5 s if not)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        writer = asyncio.create_task(write(dsn, self.args.docs, self.args.write_interval, until, stop))
        tty = sys.stdout.isatty()
        last_print = 0.0
        shown = 0
        while time.time() < until and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):  # not wait_for: on 3.11 it can swallow a cancellation
                    await stop.wait()
            lines = status.lines(status.collect())
            if tty:  # redrawn in place: each line cut to the terminal's width, so none wraps
                width = shutil.get_terminal_size().columns - 1
                lines = [line[:width] for line in lines]
                up = f"\x1b[{shown}A" if shown else ""
                print(up + "".join(f"\r\x1b[2K{line}\n" for line in lines), end="", flush=True)
                shown = len(lines)
            elif time.monotonic() - last_print >= 5:
                for line in lines:
                    say(line)
                last_print = time.monotonic()
        stop.set()
        return await writer

    async def drain_warming(self, status: Status, within: float = 60.0) -> None:
        """Let the warming worker finish the tasks queued during the run (up to ``within`` seconds),
        so the summary counts all the warming the run caused."""
        started = time.monotonic()
        told = 0.0
        while time.monotonic() - started < within:
            s = status.collect()
            sent = s["warm_sent"] + self.seeded_warm_tasks
            done = s["warming"].get("tasks", 0) + s["warming"].get("failed", 0)
            if done >= sent:
                return
            if time.monotonic() - told >= 10:
                told = time.monotonic()
                say(f"warming    : finishing the queue: {done:,} of {sent:,} warming tasks done")
            await asyncio.sleep(0.5)
        say(f"warming    : {within:.0f} s later the warming queue was not empty; the summary counts what was done")

    async def wait_for_listener(self, redis_url: str) -> None:
        import redis

        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 60
        while not client.exists(Keyspace(PREFIX).worker_stats):
            if time.monotonic() > deadline or any(c.poll() is not None for c in self.children):
                raise RuntimeError("the listener did not start")
            await asyncio.sleep(0.1)
        client.close()

    def stop(self) -> None:
        for proc, _ in self.processes:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        for child in self.children:
            end_process(child, 15)
        for worker in self.workers:
            worker.stop()
        for server in reversed(self.servers):
            server.cleanup()
        say("stopped: every child process ended, temp directories removed")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="./run", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run the workload (default 60)")
    parser.add_argument("--readers", type=int, default=3, help="document reader processes (default 3)")
    parser.add_argument("--docs", type=int, default=20, help="documents per tenant (default 20)")
    parser.add_argument("--write-interval", type=float, default=0.2, help="seconds between writes (default 0.2)")
    parser.add_argument(
        "--bound-ms", type=float, default=1000.0, help="propagation bound of the stale-read check (default 1000)"
    )
    parser.add_argument("--no-warming", action="store_true", help="no embedding model, no warming, no query service")
    parser.add_argument(
        "--fault",
        choices=FAULTS,
        help="break one part on purpose and watch the stale-read check catch it: readers without the"
        " eviction subscriber, or no listener (writes reach no cache)",
    )
    args = parser.parse_args(argv)
    for name in ("duration", "write_interval", "bound_ms"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    for name in ("readers", "docs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    demo = Demo(parse_args(argv))
    try:
        return asyncio.run(demo.run())
    except KeyboardInterrupt:
        return 130
    finally:
        demo.stop()


if __name__ == "__main__":
    sys.exit(main())

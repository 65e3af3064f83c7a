"""Service-level benchmark: the library inside a real service, under load, against the same service
reading Postgres directly.

``bench.service_app`` under uvicorn (two worker processes, uvloop, httptools), a psycopg pool per
worker on a Postgres it starts, the bench's Redis, and wrk with 32 connections drawing Zipf-like keys
(``bench.loadgen``). Rounds alternate the cached and the direct endpoint, so drift and the other load
on the machine hit both alike; the figures are medians over the rounds. Hit shares come from the
stats reports the two workers leave in Redis (memory tier, Redis tier, database), counted over the
measured rounds only; the in-app latency of cached reads by source comes from the same reports.

    python -m bench service            # alone (starts its own Redis)
    python -m bench service --quick
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.loadgen import Keys, LoadResult, find_wrk, run_paced, run_python, run_wrk
from devtools.embedded import EmbeddedPostgres, end_process, free_port
from shared_cache import Keyspace

Row = tuple[str, str, str, str]
ROOT = Path(__file__).resolve().parent.parent
PREFIX = "svc:"
BODY = "x" * 400  # a row of about half a kilobyte, like a document's metadata
PACED_SHARE = 0.5  # the open-loop rounds' rate, as a share of the direct endpoint's flat-out rate


def seed(dsn: str, keys: Keys) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS documents")
        conn.execute(
            "CREATE TABLE documents (tenant_id text NOT NULL, id text NOT NULL, title text, body text,"
            " version int NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, id))"
        )
        with conn.cursor() as cur, cur.copy("COPY documents (tenant_id, id, title, body) FROM STDIN") as copy:
            for rank in range(1, keys.n + 1):
                copy.write_row((f"t{rank % keys.tenants}", f"d{rank}", f"document {rank}", BODY))
        conn.execute("VACUUM ANALYZE documents")


class Service:
    """uvicorn with two workers serving ``bench.service_app``, as a child process."""

    def __init__(self, redis_url: str, dsn: str) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SHARED_CACHE_REDIS_URL": redis_url,
            "SHARED_CACHE_KEY_PREFIX": PREFIX,
            "SHARED_CACHE_STATS_PUBLISH_SECONDS": "0.5",
            "BENCH_SERVICE_DSN": dsn,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        cmd = [
            sys.executable, "-m", "uvicorn", "bench.service_app:app", "--host", "127.0.0.1", "--port",
            str(self.port), "--workers", "2", "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited: {self.proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("uvicorn did not answer within 60 s")

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc, 20)
            self.proc = None


def stats_reports(redis_url: str) -> dict[str, dict[str, Any]]:
    """The service workers' stats reports, by origin."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        reports = {}
        for key in client.scan_iter(match=Keyspace(PREFIX).stats_pattern(), count=100):
            raw = client.get(key)
            if raw:
                report = orjson.loads(raw)
                reports[report["origin"]] = report
        return reports
    finally:
        client.close()


def served_from(reports: dict[str, dict[str, Any]]) -> dict[str, int]:
    out = {"memory": 0, "redis": 0, "db": 0}
    for report in reports.values():
        row = report.get("by_type", {}).get("document", {})
        for tier, count in row.get("hits", {}).items():
            out[tier] = out.get(tier, 0) + count
        out["db"] += row.get("misses", 0)
    return out


def service_level(rows: list[Row], redis_url: str, quick: bool, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the cached and the direct endpoint; append the rows; return the raw figures."""
    keys = Keys(n=5_000 if quick else 20_000)
    seconds, rounds = (3.0, 2) if quick else (8.0, 3)
    wrk = find_wrk(install=True, say=say)
    pg = EmbeddedPostgres().start()
    service: Service | None = None
    try:
        seed(pg.dsn, keys)
        service = Service(redis_url, pg.dsn).start()
        base = f"http://127.0.0.1:{service.port}"

        def load(endpoint: str, secs: float) -> LoadResult:
            if wrk is not None:
                return run_wrk(wrk, base, f"/{endpoint}/", keys, secs)
            return run_python("127.0.0.1", service.port, f"/{endpoint}/", keys, secs)

        say(f"service    : warming up ({'wrk' if wrk else 'the Python load generator: no wrk'})")
        load("cached", seconds)  # fills the memory tiers and Redis, as a running service has them
        load("direct", seconds / 2)  # Postgres's buffers and the pools' prepared statements
        time.sleep(1.0)  # the workers' stats reports land
        before = served_from(stats_reports(redis_url))
        results: dict[str, list[LoadResult]] = {"cached": [], "direct": [], "paced cached": [], "paced direct": []}
        for _ in range(rounds):
            for endpoint in ("cached", "direct"):
                results[endpoint].append(load(endpoint, seconds))
                say(f"service    : {endpoint:6s} {results[endpoint][-1].rps:8.0f} req/s")
        time.sleep(1.0)
        reports = stats_reports(redis_url)
        after = served_from(reports)
        # The same offered load for both: half of what the direct endpoint serves flat out.
        rate = PACED_SHARE * statistics.median(r.rps for r in results["direct"])
        for n in range(rounds):
            for endpoint in ("cached", "direct"):  # the same seed: the same arrivals and keys
                run = run_paced("127.0.0.1", service.port, f"/{endpoint}/", keys, seconds, rate, seed=n)
                results[f"paced {endpoint}"].append(run)
                say(f"service    : {endpoint:6s} at {rate:.0f} req/s: p99 {run.p99_ms:.2f} ms")
    finally:
        if service is not None:
            service.stop()
        pg.cleanup()
    shares = {tier: after.get(tier, 0) - before.get(tier, 0) for tier in ("memory", "redis", "db")}
    figures: dict[str, Any] = {name: _medians(runs) for name, runs in results.items()}
    figures["rate"] = rate
    figures["shares"] = shares
    figures["tool"] = "wrk" if wrk else "python"
    figures["in_app"] = _in_app_latency(reports)
    _rows(rows, figures, keys, rounds, seconds)
    return figures


def _medians(runs: list[LoadResult]) -> dict[str, float]:
    return {
        "rps": statistics.median(r.rps for r in runs),
        "p50_ms": statistics.median(r.p50_ms for r in runs),
        "p99_ms": statistics.median(r.p99_ms for r in runs),
        "errors": sum(r.errors for r in runs),
    }


def _in_app_latency(reports: dict[str, dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """p50/p99 (ms) of cached reads by where they were served from, the median over the workers."""
    by_source: dict[str, list[tuple[float, float]]] = {}
    for report in reports.values():
        latency = report.get("by_type", {}).get("document", {}).get("latency_ms", {})
        for source, q in latency.items():
            by_source.setdefault(source, []).append((q["p50"], q["p99"]))
    return {
        source: (statistics.median(p50 for p50, _ in qs), statistics.median(p99 for _, p99 in qs))
        for source, qs in by_source.items()
    }


def _rows(rows: list[Row], f: dict[str, Any], keys: Keys, rounds: int, seconds: float) -> None:
    cached, direct, shares = f["cached"], f["direct"], f["shares"]
    total = max(1, sum(shares.values()))
    tool = "wrk" if f["tool"] == "wrk" else "Python load generator"
    rows.append(
        (
            f"service-level: uvicorn (2 workers, uvloop) + psycopg pool, {tool} 32 connections, Zipf keys"
            f" (s={keys.s}, {keys.n:,} documents), medians of {rounds} rounds of {seconds:.0f} s"
            " (goal: cached p99 no worse than direct)",
            f"cached: {cached['rps']:,.0f} req/s, p50 {cached['p50_ms']:.2f} ms, p99 {cached['p99_ms']:.2f} ms;"
            f" served from memory {shares['memory'] / total:.1%}, Redis {shares['redis'] / total:.1%},"
            f" database {shares['db'] / total:.1%}",
            f"direct to Postgres: {direct['rps']:,.0f} req/s, p50 {direct['p50_ms']:.2f} ms,"
            f" p99 {direct['p99_ms']:.2f} ms",
            f"{cached['rps'] / direct['rps']:.2f}x req/s; p50 {direct['p50_ms'] / cached['p50_ms']:.2f}x lower;"
            f" p99 {cached['p99_ms'] / direct['p99_ms']:.2f}x direct's",
        )
    )
    paced, plain = f["paced cached"], f["paced direct"]
    rows.append(
        (
            f"service-level, the same offered load for both: open-loop Poisson arrivals at {f['rate']:,.0f} req/s"
            f" (half the direct endpoint's flat-out rate), timed from when each request was due; medians of"
            f" {rounds} rounds of {seconds:.0f} s (goal: cached p99 no worse than direct)",
            f"cached: p50 {paced['p50_ms']:.2f} ms, p99 {paced['p99_ms']:.2f} ms, {paced['errors']} errors",
            f"direct to Postgres: p50 {plain['p50_ms']:.2f} ms, p99 {plain['p99_ms']:.2f} ms, {plain['errors']} errors",
            f"p50 {plain['p50_ms'] / paced['p50_ms']:.2f}x lower;"
            f" p99 {paced['p99_ms'] / plain['p99_ms']:.2f}x direct's",
        )
    )
    in_app = f["in_app"]
    if "db" in in_app and "direct" in in_app:
        tiers = sorted(source for source in in_app if source != "direct")
        parts = [f"{source} p50 {in_app[source][0]:.2f} / p99 {in_app[source][1]:.2f} ms" for source in tiers]
        miss, plain = in_app["db"], in_app["direct"]
        rows.append(
            (
                "service-level, timed inside the app: cached reads by where they were served from"
                " (goal: a miss costs one round trip before the fetch and one after)",
                "; ".join(parts),
                f"the direct endpoint's fetch: p50 {plain[0]:.2f} / p99 {plain[1]:.2f} ms",
                f"a miss costs {miss[0] / plain[0]:.1f}x the plain fetch at p50, {miss[1] / plain[1]:.1f}x at p99",
            )
        )

"""The demo's status line and summary: every process's figures, gathered in one place.

Sources: the stats reports the library processes leave in Redis (reads by tier, evictions,
commit-to-eviction latency), the listener's report (changes, tasks sent), the warming worker's report
(``devtools.warming_report``), and the readers' shared counters (stale-read checks, embedding batches).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from devtools.demo_readers import (
    BATCH_HITS,
    BATCHES,
    CHECKED,
    OLDER_WITHIN_BOUND,
    ON_DEMAND,
    STALE,
    TEXTS,
)
from devtools.warming_report import ROLE as WARMING
from shared_cache import Keyspace


@dataclass
class Rate:
    """Per-second rate of a growing count over the last few seconds."""

    window: float = 5.0
    samples: deque[tuple[float, float]] = field(default_factory=deque)

    def update(self, now: float, count: float) -> float:
        self.samples.append((now, count))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.popleft()
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


class Status:
    """Reads the figures of every process and renders the status lines and the summary."""

    def __init__(self, redis_url: str, prefix: str, bound_ms: float) -> None:
        import redis

        self.redis = redis.Redis.from_url(redis_url)
        self.keys = Keyspace(prefix)
        self.bound_ms = bound_ms
        self.readers: list[Any] = []  # shared counters of the document readers
        self.query: Any = None  # shared counters of the query service
        self.started = time.monotonic()
        self.read_rate = Rate()
        self.embed_rate = Rate()

    def close(self) -> None:
        self.redis.close()

    def collect(self) -> dict[str, Any]:
        s: dict[str, Any] = {"memory": 0, "redis": 0, "db": 0, "evictions": 0, "processes": 0}
        p50s: list[float] = []
        p99s: list[float] = []
        warming: dict[str, Any] = {}
        for key in self.redis.scan_iter(match=self.keys.stats_pattern(), count=100):
            raw = self.redis.get(key)
            report = orjson.loads(raw) if raw else {}
            if report.get("role") == WARMING:
                for name, value in report.get(WARMING, {}).items():
                    warming[name] = _merge(warming.get(name), value)
                continue
            document = report.get("by_type", {}).get("document")
            if document:
                s["processes"] += 1
                for tier, count in document["hits"].items():
                    s[tier] = s.get(tier, 0) + count
                s["db"] += document["misses"]
            sub = report.get("subscriber") or {}
            s["evictions"] += sub.get("evicted", 0)
            latency = sub.get("commit_to_evict_ms") or {}
            if latency.get("count"):
                p50s.append(latency["p50"])
                p99s.append(latency["p99"])
        raw = self.redis.get(self.keys.worker_stats)
        listener = orjson.loads(raw)["stats"] if raw else {}
        now = time.monotonic()
        s["elapsed"] = now - self.started
        s["reads"] = s["memory"] + s["redis"] + s["db"]
        s["reads_per_s"] = self.read_rate.update(now, s["reads"])
        s["changes"] = listener.get("events", 0)
        s["invalidations"] = listener.get("invalidation_tasks", 0)
        s["warm_sent"] = listener.get("warm_tasks", 0)
        s["commit_to_evict"] = (sorted(p50s)[len(p50s) // 2], max(p99s)) if p50s else None
        s["warming"] = warming
        s["embedded_per_s"] = self.embed_rate.update(now, warming.get("generated", 0))
        for name, index in (("checked", CHECKED), ("stale", STALE), ("older_within_bound", OLDER_WITHIN_BOUND)):
            s[name] = sum(int(counters[index]) for counters in self.readers)
        for name, index in (("batches", BATCHES), ("batch_texts", TEXTS), ("batch_hits", BATCH_HITS)):
            s[name] = int(self.query[index]) if self.query is not None else 0
        s["on_demand"] = int(self.query[ON_DEMAND]) if self.query is not None else 0
        return s

    def stale_text(self, s: dict[str, Any]) -> str:
        return f"stale {s['stale']:,} of {s['checked']:,} checked (bound {self.bound_ms:,.0f} ms)"

    def lines(self, s: dict[str, Any]) -> list[str]:
        total = max(1, s["reads"])
        latency = "{:.0f}/{:.0f} ms".format(*s["commit_to_evict"]) if s["commit_to_evict"] else "-"
        first = (
            f"{s['elapsed']:4.0f}s | {self.stale_text(s)} | reads/s {s['reads_per_s']:5.0f}"
            f" | hits memory {s['memory'] / total:4.0%} redis {s['redis'] / total:4.0%} db {s['db'] / total:4.0%}"
        )
        second = (
            f"      changes {s['changes']:,} | invalidations {s['invalidations']:,} | evictions {s['evictions']:,}"
            f" | commit->evict p50/p99 {latency}"
        )
        lines = [first, second]
        warming = s["warming"]
        if warming or s["batches"]:
            ratio = f"{s['batch_hits'] / s['batch_texts']:.0%}" if s["batch_texts"] else "-"
            model = "" if warming.get("model_loaded") else " (model loading)"
            lines.append(
                f"      warm tasks {warming.get('tasks', 0):,}{model} | texts embedded {warming.get('generated', 0):,}"
                f" ({s['embedded_per_s']:.0f}/s) | on demand {s['on_demand']:,} | batch hits {ratio}"
            )
        return lines

    def summary(self, s: dict[str, Any], writes: Any, warming_on: bool) -> list[str]:
        total = max(1, s["reads"])
        out = [
            "summary",
            f"  stale reads      {s['stale']:,} of {s['checked']:,} checked reads"
            f" ({s['older_within_bound']:,} returned an older version committed within the bound)",
            f"                   a read is stale if it returns a version older than one committed more than"
            f" {self.bound_ms:,.0f} ms before it began",
            f"  reads            {s['reads']:,} by {s['processes']} processes",
            f"  served from      memory {s['memory'] / total:.1%}, redis {s['redis'] / total:.1%},"
            f" database {s['db'] / total:.1%}",
            f"  writes           {writes.documents:,} document updates, {writes.chunks_inserted:,} chunks inserted,"
            f" {writes.chunks_updated:,} chunks rewritten",
            f"  changes seen     {s['changes']:,} (Postgres logical slot)",
            f"  invalidations    {s['invalidations']:,} tasks run by Celery",
            f"  evictions        {s['evictions']:,} memory-tier evictions across the reader processes",
        ]
        if s["commit_to_evict"]:
            out.append("  commit->evict    p50 {:.0f} ms, p99 {:.0f} ms".format(*s["commit_to_evict"]))
        if warming_on:
            w = s["warming"]
            busy = w.get("busy_s", 0.0)
            rate = f" ({w.get('generated', 0) / busy:.0f} texts per second of warming task time)" if busy else ""
            out.append(
                f"  warming          {w.get('tasks', 0):,} tasks; texts embedded: {w.get('generated', 0):,} by warming,"
                f" {s['on_demand']:,} on demand by readers{rate}"
            )
            ratio = f"{s['batch_hits'] / s['batch_texts']:.1%}" if s["batch_texts"] else "-"
            out.append(
                f"  batch lookups    {s['batches']:,} batches of recent chunks, {s['batch_texts']:,} texts,"
                f" hit ratio {ratio}"
            )
        return out


def _merge(current: Any, value: Any) -> Any:
    """Add up the warming reports of several worker processes."""
    if isinstance(value, bool):
        return bool(current) or value
    if isinstance(value, (int, float)):
        return (current or 0) + value
    return current if current is not None else value

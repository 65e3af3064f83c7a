"""Stats reports of many processes added up (pure code: plain data in, plain data out).

Each process running the library leaves a report (``CacheManager.stats_report()``): totals, a
``by_type`` breakdown per tier with p50/p99 latency, errors, its memory tier, its subscriber, and
``tenants``, the busiest tenants of that process with their own hits, misses and p99. Counters add
up across processes. Percentiles do not: the highest of the processes' values is kept, which is an
upper bound of the true fleet-wide percentile and the figure to watch for a slow process.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from shared_cache import InvalidKeyError, validate_tenant_id

from .values import count, mapping, number


def aggregate_reads(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Hits and misses per data type and tier summed over ``reports``; the worst p50/p99."""
    by_type: dict[str, dict[str, Any]] = {}
    errors: dict[str, int] = {}
    for report in reports:
        for data_type, row in mapping(report.get("by_type")).items():
            if not isinstance(row, dict):
                continue
            into = by_type.setdefault(str(data_type), {"hits": {}, "misses": 0, "latency_ms": {}})
            for tier, hits in mapping(row.get("hits")).items():
                into["hits"][str(tier)] = into["hits"].get(str(tier), 0) + count(hits)
            into["misses"] += count(row.get("misses"))
            for tier, latency in mapping(row.get("latency_ms")).items():
                worst = into["latency_ms"].setdefault(str(tier), {"p50": 0.0, "p99": 0.0})
                if isinstance(latency, dict):
                    worst["p50"] = max(worst["p50"], number(latency.get("p50")))
                    worst["p99"] = max(worst["p99"], number(latency.get("p99")))
        for kind, n in mapping(report.get("errors")).items():
            errors[str(kind)] = errors.get(str(kind), 0) + count(n)
    for row in by_type.values():
        row["hit_ratio"] = hit_ratio(sum(row["hits"].values()), row["misses"])
    hits = sum(sum(r["hits"].values()) for r in by_type.values())
    misses = sum(r["misses"] for r in by_type.values())
    return {
        "processes": len(reports),
        "hits": hits,
        "misses": misses,
        "hit_ratio": hit_ratio(hits, misses),
        "errors": dict(sorted(errors.items())),
        "by_type": dict(sorted(by_type.items())),
    }


def aggregate_tenants(
    reports: list[dict[str, Any]], limit: int, only: Collection[str] | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Reads per tenant over ``reports``, busiest (most reads) first and at most ``limit`` of them,
    and how many tenants were reported in all. ``only``: these tenants and no other.

    Hits and misses are summed; ``p99_ms`` is the highest of the processes' p99s; ``processes`` says
    how many processes counted the tenant among their busiest. A report without ``tenants`` adds
    nothing; a tenant id that is not valid is left out (it cannot be the library's).
    """
    totals: dict[str, dict[str, Any]] = {}
    for report in reports:
        for tenant, row in mapping(report.get("tenants")).items():
            if not isinstance(row, dict) or not _valid_tenant(tenant):
                continue
            if only is not None and tenant not in only:
                continue
            into = totals.setdefault(tenant, {"hits": 0, "misses": 0, "p99_ms": 0.0, "processes": 0})
            into["hits"] += count(row.get("hits"))
            into["misses"] += count(row.get("misses"))
            into["p99_ms"] = max(into["p99_ms"], number(row.get("p99_ms")))
            into["processes"] += 1
    rows = [
        {
            "tenant": tenant,
            "hits": t["hits"],
            "misses": t["misses"],
            "hit_ratio": hit_ratio(t["hits"], t["misses"]),
            "p99_ms": t["p99_ms"],
            "processes": t["processes"],
        }
        for tenant, t in totals.items()
    ]
    rows.sort(key=lambda r: (-(r["hits"] + r["misses"]), r["tenant"]))
    return rows[:limit], len(rows)


def process_row(report: dict[str, Any], now: float) -> dict[str, Any]:
    """One process: its origin, the age of its report, its totals, memory tier and subscriber."""
    memory, sub = report.get("memory"), report.get("subscriber")
    return {
        "origin": str(report.get("origin", "?")),
        "age_s": round(now - number(report.get("at")), 1),
        "hits": count(report.get("hits")),
        "misses": count(report.get("misses")),
        "memory": {"entries": count(memory.get("entries")), "bytes": count(memory.get("bytes"))}
        if isinstance(memory, dict)
        else None,
        "subscriber": _subscriber(sub) if isinstance(sub, dict) else None,
    }


def _subscriber(sub: dict[str, Any]) -> dict[str, Any]:
    """A process's eviction subscriber, its counters as ints and its latencies as floats."""
    counters = {name: count(sub.get(name)) for name in ("connects", "events", "evicted", "malformed")}
    latencies = {
        name: {q: number(mapping(sub.get(name)).get(q)) for q in ("p50", "p99")}
        for name in ("propagation_ms", "commit_to_evict_ms")
    }
    latencies["commit_to_evict_ms"]["count"] = count(mapping(sub.get("commit_to_evict_ms")).get("count"))
    return {**sub, **counters, **latencies}


def listener_row(report: dict[str, Any], now: float) -> dict[str, Any]:
    """The listener's report: its age, its counters and its sources."""
    sources = report.get("sources")
    return {
        "age_s": round(now - number(report.get("at")), 1),
        "stats": mapping(report.get("stats")),
        "sources": [s for s in sources if isinstance(s, dict)] if isinstance(sources, list) else [],
    }


def hit_ratio(hits: int, misses: int) -> float:
    return hits / (hits + misses) if hits + misses else 0.0


def _valid_tenant(tenant: str) -> bool:
    try:
        validate_tenant_id(tenant)
    except InvalidKeyError:
        return False
    return True
